//! The controller: checks the target answers, decides how many processes and threads, moves
//! every client through the phases together (ramp, run, drain), draws the live progress line,
//! samples the timeline, and builds the report.
//!
//! The phases are a barrier across all threads and processes: nobody starts the scenario until
//! every connection of the run is open (or failed), and nobody closes before the run phase is
//! over. So "50,000 open" means 50,000 open at the same time, and echo throughput is measured
//! with every connection taking part.

use std::io::{BufRead, IsTerminal, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::args::Config;
use crate::clock::{now_ns, secs};
use crate::control::Phase;
use crate::fleet::{self, Fleet, LocalFleet, RemoteFleet, Slice, Totals};
use crate::publisher::{self, Published};
use crate::report::{Report, Sample, TargetCpu, Timing};
use crate::sys::{self, CpuTime};

/// File descriptors a process keeps for itself (epoll, pipes, stdio, the publisher).
const FD_RESERVE: u64 = 200;
/// How often the timeline is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How often the targets' memory (VmRSS) is sampled for its peak.
const RSS_EVERY: Duration = Duration::from_millis(100);

/// Processes needed for `conns` connections when each may open `per_process`.
pub fn procs_needed(conns: usize, per_process: usize) -> usize {
    conns.div_ceil(per_process.max(1)).max(1)
}

/// Runs the scenario and returns the report. `Err` is for runs that could not be made at all
/// (unreachable server, a worker process that died); failures of individual connections are
/// in the report.
pub fn run(cfg: &Config) -> Result<Report, String> {
    let plan = Plan::new(cfg)?;
    let mut ctl = Controller::start(cfg, &plan)?;
    while !ctl.step()? {}
    ctl.finish(&plan)
}

/// How the connections are spread over processes and threads.
#[derive(Debug)]
struct Plan {
    procs: usize,
    threads_per_proc: usize,
    slices: Vec<Slice>,
}

impl Plan {
    /// Raises the open-file limit, checks the target answers, and splits the connections.
    fn new(cfg: &Config) -> Result<Plan, String> {
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
                "{} connections over {procs} processes is {} per process, but the open-file \
                 limit allows {per_process}: raise --procs (or the limit, ulimit -n)",
                cfg.conns,
                cfg.conns.div_ceil(procs)
            ));
        }
        let threads_per_proc = if procs == 1 {
            cfg.threads
        } else {
            cfg.threads.div_ceil(procs).max(1)
        };
        let slices = fleet::split(cfg.conns, procs)
            .into_iter()
            .map(|r| Slice {
                first: r.start,
                count: r.len(),
                threads: threads_per_proc,
                rate: cfg.connect_rate / procs as f64,
                max_pending: (cfg.max_pending / procs).max(1),
            })
            .collect();
        Ok(Plan {
            procs,
            threads_per_proc,
            slices,
        })
    }
}

/// The controller's state while the run goes: it moves every client through the phases,
/// samples the timeline and draws the progress line, and guards against a run that hangs.
#[derive(Debug)]
struct Controller<'a> {
    cfg: &'a Config,
    cfg_arc: Arc<Config>,
    fleet: Box<dyn Fleet>,
    t0: u64,
    cpu_start: CpuTime,
    /// Each target's pid, CPU time and RSS at the start.
    targets_start: Vec<(u32, Option<CpuTime>, Option<u64>)>,
    progress: Progress,
    timeline: Vec<Sample>,
    last_sample: (u64, Totals),
    phase: Phase,
    ramp_end: Option<(u64, Totals)>,
    /// The run phase's start and end.
    run_window: Option<(u64, u64)>,
    rss_at_ramp: Vec<Option<u64>>,
    /// Each target's largest VmRSS so far, and when it was last sampled.
    rss_peak: Vec<Option<u64>>,
    last_rss_sample: u64,
    /// Tells the publisher to stop (abort).
    stop: Arc<AtomicBool>,
    publisher: Option<JoinHandle<Published>>,
    published: Option<Published>,
    /// `--hold-stdin`: set by a line or end of file on stdin.
    released: Option<Arc<AtomicBool>>,
    abort_at: u64,
    aborted: bool,
    end: Option<(u64, Totals)>,
}

impl<'a> Controller<'a> {
    fn start(cfg: &'a Config, plan: &Plan) -> Result<Controller<'a>, String> {
        let cpu_start = sys::self_cpu();
        let targets_start: Vec<_> = cfg
            .target_pids
            .iter()
            .map(|&p| (p, sys::proc_cpu(p), sys::proc_rss(p)))
            .collect();
        let rss_peak = targets_start.iter().map(|t| t.2).collect();
        let t0 = now_ns();
        let cfg_arc = Arc::new(cfg.clone());
        let fleet: Box<dyn Fleet> = if plan.procs == 1 {
            Box::new(LocalFleet::start(cfg_arc.clone(), &plan.slices[0])?)
        } else {
            Box::new(RemoteFleet::start(cfg, plan.slices.clone())?)
        };
        let zero = (t0, Totals::default());
        Ok(Controller {
            cfg,
            cfg_arc,
            fleet,
            t0,
            cpu_start,
            targets_start,
            progress: Progress::new(cfg, t0),
            timeline: vec![Sample::between(t0, zero, zero, Phase::Ramp)],
            last_sample: zero,
            phase: Phase::Ramp,
            ramp_end: None,
            run_window: None,
            rss_at_ramp: Vec::new(),
            rss_peak,
            last_rss_sample: t0,
            stop: Arc::new(AtomicBool::new(false)),
            publisher: None,
            published: None,
            released: cfg.hold_stdin.then(watch_stdin),
            abort_at: t0 + ramp_bound(cfg),
            aborted: false,
            end: None,
        })
    }

    /// One look at the clients, every 20 ms; true when every client has finished.
    fn step(&mut self) -> Result<bool, String> {
        std::thread::sleep(Duration::from_millis(20));
        let now = now_ns();
        let totals = self.fleet.totals();
        if now >= self.last_sample.0 + SAMPLE_EVERY.as_nanos() as u64 {
            let sample = Sample::between(self.t0, self.last_sample, (now, totals), self.phase);
            self.timeline.push(sample);
            self.last_sample = (now, totals);
        }
        self.progress.show(now, self.phase, &totals, false);
        if now >= self.last_rss_sample + RSS_EVERY.as_nanos() as u64 {
            self.sample_rss(now);
        }
        match self.phase {
            Phase::Ramp if totals.ramped => self.begin_run(now, totals)?,
            Phase::Run if self.run_over(now) => self.begin_drain(now)?,
            _ => {}
        }
        if totals.finished {
            self.end = Some((now_ns(), self.fleet.totals()));
            return Ok(true);
        }
        if now >= self.abort_at {
            self.abort(now)?;
        }
        Ok(false)
    }

    /// Samples each target's VmRSS and keeps the largest.
    fn sample_rss(&mut self, now: u64) {
        self.last_rss_sample = now;
        for (peak, &pid) in self.rss_peak.iter_mut().zip(&self.cfg.target_pids) {
            if let Some(rss) = sys::proc_rss(pid) {
                *peak = Some(peak.map_or(rss, |p| p.max(rss)));
            }
        }
    }

    /// Every connection is open (or failed): the scenario starts.
    fn begin_run(&mut self, now: u64, totals: Totals) -> Result<(), String> {
        self.ramp_end = Some((now, totals));
        self.rss_at_ramp = self
            .cfg
            .target_pids
            .iter()
            .map(|&p| sys::proc_rss(p))
            .collect();
        self.fleet.set_phase(Phase::Run, None);
        self.phase = Phase::Run;
        self.run_window = Some((now, now));
        if self.cfg.scenario.publishes() {
            let (c, s) = (self.cfg_arc.clone(), self.stop.clone());
            let spawned = std::thread::Builder::new()
                .name("loadgen-publisher".into())
                .spawn(move || publisher::publish(&c, &s))
                .map_err(|e| format!("cannot start the publisher thread: {e}"))?;
            self.publisher = Some(spawned);
        }
        // The run phase ends by itself (the duration, the publisher) or by stdin; the hang
        // guard covers the first only.
        self.abort_at = match self.released {
            Some(_) => u64::MAX,
            None => now + run_bound(self.cfg),
        };
        if self.cfg.hold_stdin {
            say(&format!("open {}", totals.open))?;
        }
        Ok(())
    }

    fn run_over(&self, now: u64) -> bool {
        let (start, _) = self.run_window.expect("run started");
        match (&self.publisher, &self.released) {
            (Some(p), _) => p.is_finished(),
            (None, Some(r)) => r.load(Ordering::Acquire),
            (None, None) => now >= start + self.cfg.duration.as_nanos() as u64,
        }
    }

    /// The run phase is over: stop sending, wait for what is in flight, then close.
    fn begin_drain(&mut self, now: u64) -> Result<(), String> {
        let last_seq = match self.publisher.take() {
            Some(p) => {
                let p = p.join().map_err(|_| "the publisher panicked".to_string())?;
                let last = p.last_seq();
                self.published = Some(p);
                last
            }
            None => None,
        };
        let (start, _) = self.run_window.expect("run started");
        self.run_window = Some((start, now));
        self.fleet.set_phase(Phase::Drain, last_seq);
        self.phase = Phase::Drain;
        self.abort_at = now + drain_bound(self.cfg);
        Ok(())
    }

    /// The run did not end in time: tell everyone to close now, and give up if even that hangs.
    fn abort(&mut self, now: u64) -> Result<(), String> {
        if self.aborted {
            return Err("the clients did not stop after being told to abort".into());
        }
        self.stop.store(true, Ordering::Relaxed);
        self.fleet.set_phase(Phase::Abort, None);
        self.aborted = true;
        self.abort_at = now + self.cfg.timeout.as_nanos() as u64 + 10_000_000_000;
        Ok(())
    }

    /// Collects the results and builds the report.
    fn finish(mut self, plan: &Plan) -> Result<Report, String> {
        let (end, last_totals) = self.end.expect("finished");
        self.timeline.push(Sample::between(
            self.t0,
            self.last_sample,
            (end, last_totals),
            self.phase,
        ));
        self.progress.show(end, self.phase, &last_totals, true);
        self.sample_rss(end);
        if let Some(p) = self.publisher.take() {
            self.published = p.join().ok();
        }
        let (results, worker_cpu) = self.fleet.join()?;
        if self.cfg.echo_check {
            say(&format!("echo-ok {}", results.counts.verified))?;
        }
        if self.cfg.hold_stdin || self.cfg.echo_check {
            say(&format!("closed {}", results.counts.closed_clean))?;
        }
        let mut cpu = self.cpu_start.since(&sys::self_cpu());
        cpu.add(&worker_cpu);
        let rss_at_ramp = self.rss_at_ramp;
        let rss_peak = self.rss_peak;
        let targets = self
            .targets_start
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
                rss_peak: rss_peak.get(i).copied().flatten(),
                rss_after: sys::proc_rss(pid),
            })
            .collect();
        let (ramp_end_ns, ramp_totals) = self.ramp_end.unwrap_or((end, last_totals));
        let (run_start, run_end) = self.run_window.unwrap_or((end, end));
        let timing = Timing {
            ramp_s: secs(self.t0, ramp_end_ns),
            open_at_ramp_end: ramp_totals.open,
            run_s: secs(run_start, run_end),
            wall_s: secs(self.t0, end),
            aborted: self.aborted,
        };
        Ok(Report::build(
            self.cfg,
            plan.procs,
            plan.threads_per_proc * plan.procs,
            results,
            self.published,
            timing,
            cpu,
            targets,
            self.timeline,
        ))
    }
}

/// How long ramping may take before the run counts as hung: bounded by the rate and the
/// timeout; twice that and a margin is a hang.
fn ramp_bound(cfg: &Config) -> u64 {
    let ramp = if cfg.connect_rate > 0.0 {
        (cfg.conns as f64 / cfg.connect_rate * 1e9) as u64
    } else {
        0
    };
    ramp * 2 + 2 * cfg.timeout.as_nanos() as u64 + 30_000_000_000
}

/// How long the run phase may take before the run counts as hung. It ends by itself after
/// --duration, or when the publisher is done: a late publisher gives up --timeout after its
/// schedule's end, and waits at most --timeout more for its last answers (a WebSocket send at
/// most --timeout). Twice the timeout and a margin on top.
fn run_bound(cfg: &Config) -> u64 {
    cfg.duration.as_nanos() as u64 + 4 * cfg.timeout.as_nanos() as u64 + 30_000_000_000
}

/// How long the drain may take: every thread waits at most --timeout for the last echoes or
/// deliveries, then at most --timeout for the close handshakes; a margin on top.
fn drain_bound(cfg: &Config) -> u64 {
    2 * cfg.timeout.as_nanos() as u64 + 10_000_000_000
}

/// `--hold-stdin`: a thread that sets the flag on a line or end of file on stdin (so the hold
/// never outlives whoever drives it).
fn watch_stdin() -> Arc<AtomicBool> {
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        flag.store(true, Ordering::Release);
    });
    released
}

/// One machine-readable line on stdout (`open N`, `echo-ok N`, `closed N`), flushed at once.
fn say(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing to stdout: {e}"))
}

/// One blocking connect to every node (and the publish endpoint), so that a server that is
/// not there is one clear error instead of N failed connections.
fn preflight(cfg: &Config) -> Result<(), String> {
    let limit = cfg.timeout.min(Duration::from_secs(5));
    let mut endpoints: Vec<(&str, String, _)> = cfg
        .urls
        .iter()
        .zip(&cfg.targets)
        .map(|(url, e)| ("--url", url.clone(), e))
        .collect();
    if let Some(p) = &cfg.publish {
        endpoints.push(("--publish-url", format!("http://{}{}", p.host, p.path), p));
    }
    for (flag, url, e) in endpoints {
        TcpStream::connect_timeout(&e.addr, limit).map_err(|err| {
            format!(
                "cannot connect to {} ({flag} {url}): {err}; is the server running?",
                e.addr
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
    fn the_hang_guard_scales_with_duration_and_timeout() {
        let cfg = |d: &str, t: &str| {
            let argv = ["loadgen", "--scenario", "fanout", "--rate", "1000"];
            let mut argv = argv.to_vec();
            argv.extend_from_slice(&["--conns", "1000", "--duration", d, "--timeout", t]);
            crate::args::parse(argv).unwrap()
        };
        // A 10 s fanout: the publisher's own limits (the schedule, --timeout to finish it,
        // --timeout for the last answers) end well within the guard.
        let c = cfg("10s", "10s");
        let publisher_limit = (10 + 10 + 10) * 1_000_000_000;
        assert!(run_bound(&c) >= publisher_limit + 10_000_000_000);
        let long = cfg("1h", "10s");
        assert!(run_bound(&long) > 3_600_000_000_000);
        let slow = cfg("10s", "60s");
        assert!(run_bound(&slow) >= (10 + 3 * 60) * 1_000_000_000);
        assert!(drain_bound(&slow) > 2 * 60_000_000_000);
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
