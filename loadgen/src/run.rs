//! The controller: checks the target answers, decides how many processes and threads, moves
//! every client through the phases together (ramp, run, drain), draws the live progress line,
//! samples the timeline, and builds the report.
//!
//! The phases are a barrier across all threads and processes: nobody starts the scenario until
//! every connection of the run is open (or failed), and nobody closes before the run phase is
//! over. So "50,000 open" means 50,000 open at the same time, and echo throughput is measured
//! with every connection taking part.

use std::io::{IsTerminal, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::args::{Config, Scenario};
use crate::clock::{now_ns, secs};
use crate::engine::Phase;
use crate::fleet::{self, Fleet, LocalFleet, RemoteFleet, Slice, Totals};
use crate::publisher::{self, Published};
use crate::report::{Report, Sample, TargetCpu};
use crate::sys::{self, CpuTime};

/// File descriptors a process keeps for itself (epoll, pipes, stdio, the publisher).
const FD_RESERVE: u64 = 200;
/// How often the timeline is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Processes needed for `conns` connections when each may open `per_process`.
pub fn procs_needed(conns: usize, per_process: usize) -> usize {
    conns.div_ceil(per_process.max(1)).max(1)
}

/// Runs the scenario and returns the report. `Err` is for runs that could not be made at all
/// (unreachable server, a worker process that died); failures of individual connections are
/// in the report.
pub fn run(cfg: &Config) -> Result<Report, String> {
    let (soft, _hard) = gateway::sys::raise_nofile_limit()
        .map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    preflight(cfg)?;

    let per_process = soft.saturating_sub(FD_RESERVE).max(1) as usize;
    let procs = match cfg.procs {
        0 => procs_needed(cfg.conns, per_process),
        p => p,
    };
    if cfg.conns.div_ceil(procs) > per_process {
        return Err(format!(
            "{} connections over {procs} processes is {} per process, but the open-file limit \
             allows {per_process}: raise --procs (or the limit, ulimit -n)",
            cfg.conns,
            cfg.conns.div_ceil(procs)
        ));
    }
    let threads_per_proc = if procs == 1 {
        cfg.threads
    } else {
        cfg.threads.div_ceil(procs).max(1)
    };
    let slices: Vec<Slice> = fleet::split(cfg.conns, procs)
        .into_iter()
        .map(|r| Slice {
            first: r.start,
            count: r.len(),
            threads: threads_per_proc,
            rate: cfg.connect_rate / procs as f64,
            max_pending: (cfg.max_pending / procs).max(1),
        })
        .collect();

    let cpu_start = sys::self_cpu();
    let targets_start: Vec<(u32, Option<CpuTime>, Option<u64>)> = cfg
        .target_pids
        .iter()
        .map(|&p| (p, sys::proc_cpu(p), sys::proc_rss(p)))
        .collect();
    let t0 = now_ns();
    let cfg_arc = Arc::new(cfg.clone());
    let mut fleet: Box<dyn Fleet> = if procs == 1 {
        Box::new(LocalFleet::start(cfg_arc.clone(), &slices[0])?)
    } else {
        Box::new(RemoteFleet::start(cfg, slices)?)
    };

    let mut progress = Progress::new(cfg, t0);
    let mut timeline: Vec<Sample> = vec![Sample::between(
        t0,
        (t0, Totals::default()),
        (t0, Totals::default()),
        Phase::Ramp,
    )];
    let mut last_sample = (t0, Totals::default());
    let mut phase = Phase::Ramp;
    let mut ramp_end: Option<(u64, Totals)> = None;
    let mut run_window: Option<(u64, u64)> = None;
    let mut rss_at_ramp: Vec<Option<u64>> = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut publisher: Option<std::thread::JoinHandle<Published>> = None;
    let mut published: Option<Published> = None;
    // Guards against a run that does not end: ramping is bounded by the rate and the timeout,
    // draining and closing by the timeout; twice that and a margin is a hang.
    let timeout_ns = cfg.timeout.as_nanos() as u64;
    let ramp_bound = if cfg.connect_rate > 0.0 {
        (cfg.conns as f64 / cfg.connect_rate * 1e9) as u64
    } else {
        0
    } * 2
        + 2 * timeout_ns
        + 30_000_000_000;
    let mut abort_at = t0 + ramp_bound;
    let mut aborted = false;

    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = now_ns();
        let totals = fleet.totals();
        if now >= last_sample.0 + SAMPLE_EVERY.as_nanos() as u64 {
            timeline.push(Sample::between(t0, last_sample, (now, totals), phase));
            last_sample = (now, totals);
        }
        progress.show(now, phase, &totals, false);
        match phase {
            Phase::Ramp if totals.ramped => {
                ramp_end = Some((now, totals));
                rss_at_ramp = cfg.target_pids.iter().map(|&p| sys::proc_rss(p)).collect();
                fleet.set_phase(Phase::Run, None);
                phase = Phase::Run;
                run_window = Some((now, now));
                if cfg.scenario == Scenario::Fanout {
                    let (c, s) = (cfg_arc.clone(), stop.clone());
                    publisher = Some(std::thread::spawn(move || publisher::publish(&c, &s)));
                }
            }
            Phase::Run => {
                let (start, _) = run_window.expect("run started");
                let over = match &publisher {
                    Some(p) => p.is_finished(),
                    None => now >= start + cfg.duration.as_nanos() as u64,
                };
                if over {
                    let last_seq = match publisher.take() {
                        Some(p) => {
                            let p = p.join().map_err(|_| "the publisher panicked".to_string())?;
                            let last = p.last_seq();
                            published = Some(p);
                            last
                        }
                        None => None,
                    };
                    run_window = Some((start, now));
                    fleet.set_phase(Phase::Drain, last_seq);
                    phase = Phase::Drain;
                    abort_at = now + 2 * timeout_ns + 10_000_000_000;
                }
            }
            _ => {}
        }
        if totals.finished {
            break;
        }
        if now >= abort_at {
            if aborted {
                return Err("the clients did not stop after being told to abort".into());
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            fleet.set_phase(Phase::Abort, None);
            aborted = true;
            abort_at = now + timeout_ns + 10_000_000_000;
        }
    }
    let end = now_ns();
    let last_totals = fleet.totals();
    timeline.push(Sample::between(t0, last_sample, (end, last_totals), phase));
    progress.show(end, phase, &last_totals, true);
    if let Some(p) = publisher.take() {
        published = p.join().ok();
    }

    let (results, worker_cpu) = fleet.join()?;
    let mut cpu = cpu_start.since(&sys::self_cpu());
    cpu.add(&worker_cpu);
    let wall_s = secs(t0, end);
    let targets = targets_start
        .into_iter()
        .enumerate()
        .map(|(i, (pid, cpu0, rss0))| TargetCpu {
            pid,
            cpu_s: match (cpu0, sys::proc_cpu(pid)) {
                (Some(a), Some(b)) => Some(a.since(&b).total()),
                _ => None,
            },
            rss_before: rss0,
            rss_at_ramp_end: rss_at_ramp.get(i).copied().flatten(),
            rss_after: sys::proc_rss(pid),
        })
        .collect();
    let (ramp_end_ns, ramp_totals) = ramp_end.unwrap_or((end, last_totals));
    let (run_start, run_end) = run_window.unwrap_or((end, end));
    Ok(Report::build(
        cfg,
        procs,
        threads_per_proc * procs,
        results,
        published,
        crate::report::Timing {
            ramp_s: secs(t0, ramp_end_ns),
            open_at_ramp_end: ramp_totals.open,
            run_s: secs(run_start, run_end),
            wall_s,
            aborted,
        },
        cpu,
        targets,
        timeline,
    ))
}

/// One blocking connect to the target (and the publish endpoint), so that a server that is not
/// there is one clear error instead of N failed connections.
fn preflight(cfg: &Config) -> Result<(), String> {
    let limit = cfg.timeout.min(Duration::from_secs(5));
    let mut endpoints = vec![("--url", &cfg.target)];
    if let Some(p) = &cfg.publish {
        endpoints.push(("--publish-url", p));
    }
    for (flag, e) in endpoints {
        TcpStream::connect_timeout(&e.addr, limit).map_err(|err| {
            format!(
                "cannot connect to {} ({flag} {}): {err}; is the server running?",
                e.addr,
                if flag == "--url" {
                    cfg.url.clone()
                } else {
                    format!("http://{}{}", e.host, e.path)
                }
            )
        })?;
    }
    Ok(())
}

/// The live progress line on stderr: rewritten in place on a terminal, one line a second
/// otherwise (so logs stay readable).
#[derive(Debug)]
struct Progress {
    quiet: bool,
    tty: bool,
    conns: usize,
    t0: u64,
    last_shown: u64,
    last: (u64, Totals),
}

impl Progress {
    fn new(cfg: &Config, t0: u64) -> Progress {
        Progress {
            quiet: cfg.quiet,
            tty: std::io::stderr().is_terminal(),
            conns: cfg.conns,
            t0,
            last_shown: t0,
            last: (t0, Totals::default()),
        }
    }

    fn show(&mut self, now: u64, phase: Phase, t: &Totals, last: bool) {
        let every = if self.tty { 250_000_000 } else { 1_000_000_000 };
        if self.quiet || (!last && now < self.last_shown + every) {
            return;
        }
        self.last_shown = now;
        let dt = secs(self.last.0, now).max(1e-9);
        let msgs = (t.verified.saturating_sub(self.last.1.verified)) as f64 / dt;
        let deliveries = (t.deliveries.saturating_sub(self.last.1.deliveries)) as f64 / dt;
        self.last = (now, *t);
        let phase = match phase {
            Phase::Ramp => "ramp ",
            Phase::Run => "run  ",
            Phase::Drain => "close",
            Phase::Abort => "abort",
        };
        let line = format!(
            "loadgen {:6.1}s {phase}  open {}/{}  failed {}  msgs/s {:.0}  deliveries/s {:.0}",
            secs(self.t0, now),
            t.open,
            self.conns,
            t.failed,
            msgs,
            deliveries
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_follow_the_open_file_limit() {
        assert_eq!(procs_needed(50_000, 19_800), 3);
        assert_eq!(procs_needed(19_800, 19_800), 1);
        assert_eq!(procs_needed(19_801, 19_800), 2);
        assert_eq!(procs_needed(1, 0), 1);
    }

    #[test]
    fn unreachable_server_is_one_clear_error() {
        // Bind then drop a listener: nothing listens on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("ws://127.0.0.1:{port}/echo");
        let cfg = crate::args::parse(["loadgen", "--url", url.as_str(), "-q"]).unwrap();
        let err = run(&cfg).unwrap_err();
        assert!(
            err.contains("cannot connect") && err.contains("refused"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
