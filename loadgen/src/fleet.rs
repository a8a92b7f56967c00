//! The clients of a run, as the controller sees them: event-loop threads in this process
//! ([`LocalFleet`]), or worker processes ([`RemoteFleet`]) when one process may not open that
//! many sockets.
//!
//! A worker process is this same binary started with the hidden flag `--worker-spec JSON`. It
//! runs a [`LocalFleet`] for its slice of the connections and speaks a line protocol:
//! - on stdout, JSON lines: `{"Progress":{..}}` every 100 ms, and `{"Result":{..}}` (its
//!   merged [`Results`] with serialized histograms, and its own CPU time) once at the end;
//! - on stdin, words from the parent: `run`, `drain SEQ` (or `drain -`), `abort`. End of stdin
//!   (the parent died) aborts, so a worker never outlives its parent by more than a timeout.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::args::Config;
use crate::control::{Control, Phase, Share};
use crate::engine::Engine;
use crate::stats::Results;
use crate::sys::{self, CpuTime};

/// Sums of the live counters, for the progress line and the timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub open: u64,
    pub connected: u64,
    pub failed: u64,
    pub sent: u64,
    pub verified: u64,
    pub deliveries: u64,
    /// Every thread (in every process) has opened or failed all its connections.
    pub ramped: bool,
    /// Every thread has closed all its connections and stopped.
    pub finished: bool,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.open += o.open;
        self.connected += o.connected;
        self.failed += o.failed;
        self.sent += o.sent;
        self.verified += o.verified;
        self.deliveries += o.deliveries;
        self.ramped &= o.ramped;
        self.finished &= o.finished;
    }
}

/// What the controller needs from a set of clients, in-process or not.
pub trait Fleet: std::fmt::Debug {
    fn totals(&self) -> Totals;
    fn set_phase(&mut self, phase: Phase, last_seq: Option<u64>);
    /// Waits for the end and returns the merged results and the CPU time of worker processes
    /// (zero for threads of this process, whose CPU time is this process's).
    fn join(self: Box<Self>) -> Result<(Results, CpuTime), String>;
}

/// How many connections a process runs, and how fast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    /// Global index of the first connection.
    pub first: usize,
    pub count: usize,
    pub threads: usize,
    /// Connections per second for the whole slice; 0 = unlimited.
    pub rate: f64,
    pub max_pending: usize,
}

/// Splits `0..n` into `parts` contiguous ranges, as even as can be.
pub fn split(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    (0..parts)
        .map(|i| i * n / parts..(i + 1) * n / parts)
        .collect()
}

/// Event-loop threads in this process.
#[derive(Debug)]
pub struct LocalFleet {
    control: Arc<Control>,
    threads: Vec<JoinHandle<Results>>,
}

impl LocalFleet {
    pub fn start(cfg: Arc<Config>, slice: &Slice) -> Result<LocalFleet, String> {
        let threads = slice.threads.clamp(1, slice.count.max(1));
        let control = Arc::new(Control::new(threads));
        let mut handles = Vec::with_capacity(threads);
        for (slot, range) in split(slice.count, threads).into_iter().enumerate() {
            let share = Share {
                slot,
                first: slice.first + range.start,
                count: range.len(),
                rate: slice.rate / threads as f64,
                max_pending: (slice.max_pending / threads).max(1),
            };
            let engine = Engine::new(cfg.clone(), control.clone(), share)
                .map_err(|e| format!("cannot create an event loop: {e}"))?;
            let handle = std::thread::Builder::new()
                .name(format!("loadgen-{slot}"))
                .spawn(move || engine.run())
                .map_err(|e| format!("cannot start a thread: {e}"))?;
            handles.push(handle);
        }
        Ok(LocalFleet {
            control,
            threads: handles,
        })
    }
}

impl Fleet for LocalFleet {
    fn totals(&self) -> Totals {
        let mut t = Totals {
            ramped: true,
            finished: true,
            ..Totals::default()
        };
        for l in &self.control.live {
            t.add(&Totals {
                open: l.open.load(Ordering::Relaxed),
                connected: l.connected.load(Ordering::Relaxed),
                failed: l.failed.load(Ordering::Relaxed),
                sent: l.sent.load(Ordering::Relaxed),
                verified: l.verified.load(Ordering::Relaxed),
                deliveries: l.deliveries.load(Ordering::Relaxed),
                ramped: l.ramped.load(Ordering::Acquire),
                finished: l.finished.load(Ordering::Acquire),
            });
        }
        t
    }

    fn set_phase(&mut self, phase: Phase, last_seq: Option<u64>) {
        self.control.set_phase(phase, last_seq);
    }

    fn join(self: Box<Self>) -> Result<(Results, CpuTime), String> {
        let mut merged = Results::default();
        for h in self.threads {
            let r = h
                .join()
                .map_err(|_| "an event-loop thread panicked".to_string())?;
            merged.merge(&r);
        }
        Ok((merged, CpuTime::default()))
    }
}

/// What a worker process is told to do (passed as JSON on its command line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub config: Config,
    pub slice: Slice,
}

/// One line a worker writes to its parent.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerMsg {
    Progress(Totals),
    Result { results: Box<Results>, cpu: CpuTime },
    Error(String),
}

/// The hidden flag that makes the binary a worker.
pub const WORKER_FLAG: &str = "--worker-spec";

/// Entry point of a worker process: runs its slice and reports over stdout.
pub fn worker_main(spec_json: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let mut say = |msg: &WorkerMsg| -> bool {
        let line = serde_json::to_string(msg).expect("worker messages serialize");
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    };
    let spec: WorkerSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => {
            say(&WorkerMsg::Error(format!("bad worker spec: {e}")));
            return ExitCode::from(2);
        }
    };
    let _ = gateway::sys::raise_nofile_limit();
    let mut fleet = match LocalFleet::start(Arc::new(spec.config), &spec.slice) {
        Ok(f) => f,
        Err(e) => {
            say(&WorkerMsg::Error(e));
            return ExitCode::FAILURE;
        }
    };
    // Orders from the parent arrive on stdin; its end means the parent is gone.
    let control = fleet.control.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            match words.next() {
                Some("run") => control.set_phase(Phase::Run, None),
                Some("drain") => {
                    let seq = words.next().and_then(|w| w.parse().ok());
                    control.set_phase(Phase::Drain, seq);
                }
                Some("abort") => control.set_phase(Phase::Abort, None),
                _ => {}
            }
        }
        control.set_phase(Phase::Abort, None);
    });
    loop {
        let t = fleet.totals();
        if !say(&WorkerMsg::Progress(t)) {
            // Nobody reads our reports any more: stop.
            fleet.set_phase(Phase::Abort, None);
        }
        if t.finished {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match Box::new(fleet).join() {
        Ok((results, _)) => {
            say(&WorkerMsg::Result {
                results: Box::new(results),
                cpu: sys::self_cpu(),
            });
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&WorkerMsg::Error(e));
            ExitCode::FAILURE
        }
    }
}

/// What the parent knows about one worker.
#[derive(Debug, Default)]
struct View {
    totals: Totals,
    result: Option<(Results, CpuTime)>,
    error: Option<String>,
}

/// Worker processes, each running a [`LocalFleet`] for its slice.
#[derive(Debug)]
pub struct RemoteFleet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    views: Arc<Mutex<Vec<View>>>,
    readers: Vec<JoinHandle<()>>,
}

impl RemoteFleet {
    pub fn start(cfg: &Config, slices: Vec<Slice>) -> Result<RemoteFleet, String> {
        let exe: PathBuf = match &cfg.exe {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find the loadgen executable to start workers: {e}"))?,
        };
        let views = Arc::new(Mutex::new(
            (0..slices.len())
                .map(|_| View::default())
                .collect::<Vec<_>>(),
        ));
        let mut fleet = RemoteFleet {
            children: Vec::new(),
            stdins: Vec::new(),
            views: views.clone(),
            readers: Vec::new(),
        };
        for (i, slice) in slices.into_iter().enumerate() {
            let spec = WorkerSpec {
                config: Config {
                    quiet: true,
                    json: None,
                    report: None,
                    ..cfg.clone()
                },
                slice,
            };
            let spec = serde_json::to_string(&spec).expect("worker specs serialize");
            let mut child = Command::new(&exe)
                .arg(WORKER_FLAG)
                .arg(spec)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start worker process {}: {e}", exe.display()))?;
            let stdout = child.stdout.take().expect("piped stdout");
            fleet.stdins.push(child.stdin.take());
            fleet.children.push(child);
            let views = views.clone();
            fleet.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg = serde_json::from_str::<WorkerMsg>(&line);
                    let mut views = views.lock().expect("views lock");
                    let view = &mut views[i];
                    match msg {
                        Ok(WorkerMsg::Progress(t)) => view.totals = t,
                        Ok(WorkerMsg::Result { results, cpu }) => {
                            view.totals.finished = true;
                            view.result = Some((*results, cpu));
                        }
                        Ok(WorkerMsg::Error(e)) => view.error = Some(e),
                        Err(e) => view.error = Some(format!("unreadable report: {e}")),
                    }
                }
                // End of output: the worker is done one way or another.
                let mut views = views.lock().expect("views lock");
                views[i].totals.finished = true;
                views[i].totals.ramped = true;
            }));
        }
        Ok(fleet)
    }

    fn tell(&mut self, line: &str) {
        for stdin in self.stdins.iter_mut() {
            if let Some(s) = stdin
                && writeln!(s, "{line}").and_then(|()| s.flush()).is_err()
            {
                *stdin = None;
            }
        }
    }
}

impl Fleet for RemoteFleet {
    fn totals(&self) -> Totals {
        let views = self.views.lock().expect("views lock");
        let mut t = Totals {
            ramped: true,
            finished: true,
            ..Totals::default()
        };
        for v in views.iter() {
            t.add(&v.totals);
        }
        t
    }

    fn set_phase(&mut self, phase: Phase, last_seq: Option<u64>) {
        match phase {
            Phase::Ramp => {}
            Phase::Run => self.tell("run"),
            Phase::Drain => self.tell(&match last_seq {
                Some(s) => format!("drain {s}"),
                None => "drain -".to_string(),
            }),
            Phase::Abort => self.tell("abort"),
        }
    }

    fn join(mut self: Box<Self>) -> Result<(Results, CpuTime), String> {
        // Closing stdin is harmless now: every worker has reported or is about to.
        self.stdins.clear();
        let mut statuses = Vec::new();
        for c in self.children.iter_mut() {
            statuses.push(c.wait().map_err(|e| format!("waiting for a worker: {e}"))?);
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let mut views = self.views.lock().expect("views lock");
        let mut merged = Results::default();
        let mut cpu = CpuTime::default();
        for (i, v) in views.iter_mut().enumerate() {
            match v.result.take() {
                Some((r, c)) => {
                    merged.merge(&r);
                    cpu.add(&c);
                }
                None => {
                    let why = v
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("exited with {}", statuses[i]));
                    return Err(format!("worker process {i} did not report: {why}"));
                }
            }
        }
        Ok((merged, cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        for (n, parts) in [(50_000, 3), (10, 3), (3, 3), (7, 1), (5, 2)] {
            let r = split(n, parts);
            assert_eq!(r.len(), parts);
            assert_eq!(r[0].start, 0);
            assert_eq!(r.last().unwrap().end, n);
            assert!(r.windows(2).all(|w| w[0].end == w[1].start));
            let (min, max) = (
                r.iter().map(|x| x.len()).min().unwrap(),
                r.iter().map(|x| x.len()).max().unwrap(),
            );
            assert!(max - min <= 1);
        }
    }

    #[test]
    fn worker_messages_roundtrip() {
        let mut results = Results::default();
        results.rtt.record(1234);
        results.counts.verified = 9;
        let msg = WorkerMsg::Result {
            results: Box::new(results.clone()),
            cpu: CpuTime {
                user_s: 1.0,
                sys_s: 2.0,
            },
        };
        let line = serde_json::to_string(&msg).unwrap();
        assert!(!line.contains('\n'));
        match serde_json::from_str::<WorkerMsg>(&line).unwrap() {
            WorkerMsg::Result { results: r, cpu } => {
                assert_eq!(*r, results);
                assert_eq!(cpu.total(), 3.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn totals_are_ramped_only_when_everyone_is() {
        let mut t = Totals {
            ramped: true,
            finished: true,
            ..Totals::default()
        };
        t.add(&Totals {
            open: 2,
            ramped: true,
            ..Totals::default()
        });
        t.add(&Totals {
            open: 3,
            ramped: false,
            ..Totals::default()
        });
        assert_eq!(t.open, 5);
        assert!(!t.ramped && !t.finished);
    }
}
