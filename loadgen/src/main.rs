//! `loadgen`: opens tens of thousands of WebSocket clients against the gateway and measures
//! latency. The scenarios (connect, echo, fanout) are not built yet; this binary prints its
//! planned usage and exits non-zero so nobody mistakes it for a measurement.

use std::process::ExitCode;

const USAGE: &str = "\
usage: loadgen [--url ws://127.0.0.1:8080/echo] [--conns N] [--scenario connect|echo|fanout]

loadgen is not implemented yet: the scenarios land with the issue
\"loadgen: tens of thousands of clients\". Until then, use scripts/autobahn.sh for
conformance and `cargo bench` for the codec.";

fn main() -> ExitCode {
    let help = std::env::args().skip(1).any(|a| a == "--help" || a == "-h");
    println!("{USAGE}");
    if help {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
