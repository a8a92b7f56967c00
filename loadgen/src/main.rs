//! The `loadgen` binary: parses flags, runs the scenario (or, with the hidden worker flag, one
//! worker process's share of it), prints the summary and writes the requested files.
//!
//! Exit status: 0 when every client did what was asked; 3 when the run finished with failures
//! (they are in the summary); 2 for bad flags; 1 when the run could not be made.

use std::process::ExitCode;

use loadgen::fleet::{WORKER_FLAG, worker_main};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(WORKER_FLAG) {
        return match argv.get(2) {
            Some(spec) => worker_main(spec),
            None => {
                eprintln!("loadgen: error: {WORKER_FLAG} needs a value");
                ExitCode::from(2)
            }
        };
    }
    let cfg = match loadgen::args::parse(&argv) {
        Ok(c) => c,
        Err(e) => {
            if let Some(text) = e.info() {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            eprintln!("loadgen: error: {}", e.line());
            return ExitCode::from(2);
        }
    };
    let report = match loadgen::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.summary());
    if let Some(path) = &cfg.json
        && let Err(e) = std::fs::write(path, report.to_json())
    {
        eprintln!("loadgen: error: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if let Some(path) = &cfg.report
        && let Err(e) = std::fs::write(path, loadgen::html::render(&report))
    {
        eprintln!("loadgen: error: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}
