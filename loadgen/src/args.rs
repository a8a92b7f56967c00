//! Command-line flags, and their validation into a [`Config`].
//!
//! Flags are parsed by clap, then checked together (a ws:// URL, at least one connection, a
//! payload big enough to verify, enough loopback source addresses). Every problem becomes one
//! line of text; `main` prints it and exits with status 2, so a bad invocation never panics and
//! never starts a half-configured run.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::tls::Trust;
use crate::url::{self, Endpoint};

/// The smallest echo payload: sequence number, send time and connection index (see
/// `payload::write_echo`).
pub const ECHO_MIN_SIZE: usize = 20;
/// Largest `--size`: far above what a push gateway carries, far below what would exhaust memory.
pub const MAX_SIZE: usize = 16 << 20;

/// What the clients do once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum Scenario {
    /// Open N connections at a controlled rate, hold them, close them cleanly.
    Connect,
    /// N connections, each with --pipeline messages in flight to an echo endpoint.
    Echo,
    /// N subscribers on a topic; a publisher sends --rate messages/s to it.
    Fanout,
    /// N subscribers (may be 0) on a topic; the publisher floods it for --duration, as fast as
    /// the server accepts (--rate is not used), counting 200s and 503s, server closes, and the
    /// targets' peak memory.
    Flood,
}

impl Scenario {
    /// Whether a publisher sends to the subscribers' topic (fanout and flood).
    pub fn publishes(self) -> bool {
        matches!(self, Scenario::Fanout | Scenario::Flood)
    }
}

/// Default `--publish-window`: HTTP requests in flight on the publisher's connection.
pub const DEFAULT_PUBLISH_WINDOW: usize = 256;

/// How the fan-out publisher reaches the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum PublisherKind {
    /// `POST /publish/TOPIC` over one keep-alive HTTP/1.1 connection, pipelined.
    Http,
    /// Text messages on its own WebSocket to the topic URL (a chat client).
    Ws,
}

/// Opens tens of thousands of WebSocket clients and measures latency.
///
/// Exit status: 0 when every client did what was asked; 3 when the run finished but some
/// connections failed, some echo did not verify or some delivery was lost; 2 for bad flags;
/// 1 when the run could not be made (server unreachable, a worker process died).
///
/// Fanout: message i is due at start + i/--rate and carries that due time, so delivery latency
/// is corrected for coordinated omission; the HTTP publisher pipelines its requests (up to
/// --publish-window unanswered) and counts 503 refusals apart from losses.
///
/// Flood (`--scenario flood`): the publisher pipelines --size-byte messages as fast as the
/// server accepts them for --duration; the summary counts 200s and 503s (with and without
/// Retry-After), the deliveries, the subscribers the server closed and with which close code
/// (1008: slow consumer), and with --target-pid the target's peak and final memory (VmRSS,
/// sampled every 100 ms). --conns may be 0 (no subscribers).
///
/// Across nodes (a cluster of gateways): give --url several times or as a comma-separated list
/// (`--url ws://127.0.0.1:8080/ws/chat/t,ws://127.0.0.1:8081/ws/chat/t`). Connection i goes to
/// URL i mod N (subscribers, echo and connect clients alike); the publisher publishes on the
/// first URL only (the HTTP publisher to /publish/TOPIC there, unless --publish-url). The
/// summary, --report and --json then add one row per node: connections, subscribers,
/// deliveries, lost (accepted messages a subscriber never got), duplicated, out of order, and
/// latency p50/p99/max. --per-addr counts per source address and node.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Args {
    /// Target URL [default: ws://127.0.0.1:8080/echo; for fanout ws://127.0.0.1:8080/ws/chat/loadgen].
    /// Repeat it, or give a comma-separated list, to spread the connections round-robin over
    /// several nodes of a cluster (connection i goes to URL i mod N); the publisher publishes
    /// on the first, and the summary adds a row per node.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub url: Vec<String>,
    /// Connections (clients; for fanout and flood, subscribers) to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    #[arg(long, value_enum, default_value_t = Scenario::Connect)]
    pub scenario: Scenario,
    /// How long to hold (connect), echo (echo) or publish (fanout) once every connection is open.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// New connections per second while ramping up; 0 opens them as fast as --max-pending allows.
    #[arg(long, default_value_t = 10_000.0)]
    pub connect_rate: f64,
    /// Connections in their TCP or WebSocket handshake at once, across all threads.
    #[arg(long, default_value_t = 512)]
    pub max_pending: usize,
    /// Echo: messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Message size in bytes (echo: at least 20; fanout: the JSON is padded up to it).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Fanout: messages per second the publisher sends.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Fanout, flood: how the publisher sends.
    #[arg(long, value_enum, default_value_t = PublisherKind::Http)]
    pub publisher: PublisherKind,
    /// Fanout, flood: HTTP publish requests in flight (sent, not yet answered) at most; when
    /// the window is full the publisher waits, and falls behind schedule (reported as its lag).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PUBLISH_WINDOW)]
    pub publish_window: usize,
    /// Fanout: the HTTP publish URL [default: derived from --url, /ws/TOPIC -> /publish/TOPIC].
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Fanout: bearer token for the publish API (`Authorization: Bearer TOKEN`); the gateway
    /// asks for one from non-loopback publishers.
    #[arg(long, value_name = "TOKEN")]
    pub publish_token: Option<String>,
    /// Limit on each connect + handshake, on draining the last echoes or deliveries, and on
    /// the close handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Event-loop threads in all [default: number of CPUs].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Worker processes [default: as many as the open-file limit requires; 1 runs in-process].
    #[arg(long)]
    pub procs: Option<usize>,
    /// Loopback targets: connections per source address 127.0.0.K and node (--url). Each
    /// address has its own
    /// ~28k ephemeral ports toward one server port, but the kernel's search for a free port in
    /// connect() slows down as they fill (and gave EADDRNOTAVAIL near 15k here); 5000 keeps it
    /// cheap and still reaches 1.27 million connections over 127.0.0.1-254.
    #[arg(long, default_value_t = 5_000)]
    pub per_addr: usize,
    /// Write every figure as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts to this file.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Process whose CPU time and memory to report beside loadgen's (repeatable, or comma-separated).
    #[arg(long = "target-pid", value_name = "PID", value_delimiter = ',')]
    pub target_pids: Vec<u32>,
    /// No live progress line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Offer permessage-deflate in every upgrade request.
    #[arg(long)]
    pub deflate: bool,
    /// Connect: hold the connections until a line or end of file on stdin instead of for
    /// --duration; print `open N` on stdout once the ramp is over.
    #[arg(long)]
    pub hold_stdin: bool,
    /// Connect: after the hold, every connection sends one message and verifies its echo
    /// (print `echo-ok N` on stdout), then all close (print `closed N`).
    #[arg(long)]
    pub echo_check: bool,
    /// wss:// URLs: trust the server certificates this CA (PEM) signed.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// wss:// URLs: accept any server certificate (self-signed test certificates); the
    /// handshake is otherwise a real one.
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
}

/// A validated run description. It is also what the parent hands each worker process (as
/// JSON), so every field has a plain serialisable form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub scenario: Scenario,
    /// The first node: where the publisher publishes (and the only node with one `--url`).
    pub target: Endpoint,
    /// Every node, `target` first; connection i goes to `targets[i % targets.len()]`.
    pub targets: Vec<Endpoint>,
    /// The URLs as given, comma-separated, for reports.
    pub url: String,
    /// Each node's URL as given, in the order of `targets`.
    pub urls: Vec<String>,
    pub conns: usize,
    pub duration: Duration,
    /// Connections per second while ramping; 0 = unlimited.
    pub connect_rate: f64,
    pub max_pending: usize,
    pub pipeline: usize,
    pub size: usize,
    pub rate: f64,
    pub publisher: PublisherKind,
    /// HTTP publish requests in flight at most.
    pub publish_window: usize,
    /// The HTTP publish endpoint (fanout or flood with the HTTP publisher).
    pub publish: Option<Endpoint>,
    pub publish_token: Option<String>,
    pub timeout: Duration,
    pub threads: usize,
    /// Worker processes; 0 = decide from the open-file limit.
    pub procs: usize,
    pub per_addr: usize,
    pub json: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub target_pids: Vec<u32>,
    pub quiet: bool,
    /// Offer permessage-deflate.
    pub deflate: bool,
    /// Connect: the hold ends on a line or end of file on stdin, not after `duration`.
    pub hold_stdin: bool,
    /// Connect: one verified echo per connection after the hold.
    pub echo_check: bool,
    /// The loadgen binary to start worker processes from [default: this executable]. Tests
    /// that call [`crate::run`] from another binary set it.
    pub exe: Option<PathBuf>,
}

pub use gateway::cli::parse_duration;

/// The URLs as given, their nodes resolved, and the publish endpoint.
type Endpoints = (Vec<String>, Vec<Endpoint>, Option<Endpoint>);

impl Args {
    /// Checks the flags together and resolves the URLs.
    pub fn into_config(self) -> Result<Config, String> {
        self.check_numbers()?;
        let (threads, procs) = self.threads_and_procs()?;
        let (urls, targets, publish) = self.endpoints()?;
        Ok(Config {
            scenario: self.scenario,
            target: targets[0].clone(),
            targets,
            url: urls.join(","),
            urls,
            conns: self.conns,
            duration: self.duration,
            connect_rate: self.connect_rate,
            max_pending: self.max_pending,
            pipeline: self.pipeline,
            size: self.size,
            rate: self.rate,
            publisher: self.publisher,
            publish_window: self.publish_window,
            publish,
            publish_token: self.publish_token,
            timeout: self.timeout,
            threads,
            procs,
            per_addr: self.per_addr,
            json: self.json,
            report: self.report,
            target_pids: self.target_pids,
            quiet: self.quiet,
            deflate: self.deflate,
            hold_stdin: self.hold_stdin,
            echo_check: self.echo_check,
            exe: None,
        })
    }

    /// Counts, sizes and rates, and which flags go together.
    fn check_numbers(&self) -> Result<(), String> {
        if self.conns == 0 && self.scenario != Scenario::Flood {
            return Err("--conns must be at least 1 (0 only for --scenario flood)".into());
        }
        if self.publish_window == 0 {
            return Err("--publish-window must be at least 1".into());
        }
        if self.pipeline == 0 {
            return Err("--pipeline must be at least 1".into());
        }
        if self.max_pending == 0 {
            return Err("--max-pending must be at least 1".into());
        }
        if self.per_addr == 0 {
            return Err("--per-addr must be at least 1".into());
        }
        if !(self.connect_rate.is_finite() && self.connect_rate >= 0.0) {
            return Err("--connect-rate must be a number >= 0 (0: unlimited)".into());
        }
        if self.size > MAX_SIZE {
            return Err(format!("--size must be at most {MAX_SIZE} bytes"));
        }
        if (self.hold_stdin || self.echo_check) && self.scenario != Scenario::Connect {
            return Err("--hold-stdin and --echo-check go with --scenario connect".into());
        }
        if (self.scenario == Scenario::Echo || self.echo_check) && self.size < ECHO_MIN_SIZE {
            return Err(format!(
                "--size must be at least {ECHO_MIN_SIZE} for echo: every payload carries its \
                 sequence number, send time and connection, so the echo can be verified"
            ));
        }
        if self.scenario == Scenario::Fanout && !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(
                "--rate must be a positive number of messages per second (as fast as \
                        the server accepts: --scenario flood)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Threads in all (default: the CPUs) and worker processes (0: decide later).
    fn threads_and_procs(&self) -> Result<(usize, usize), String> {
        let threads = match self.threads {
            Some(0) => return Err("--threads must be at least 1".into()),
            Some(t) => t,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let procs = match self.procs {
            Some(0) => return Err("--procs must be at least 1".into()),
            Some(p) if p > self.conns => {
                return Err(format!(
                    "--procs {p} is more than --conns {}: every process needs a connection",
                    self.conns
                ));
            }
            Some(p) => p,
            None => 0,
        };
        Ok((threads, procs))
    }

    /// The URLs as given (or the scenario's default), the resolved nodes (the publisher's
    /// first) and the publish endpoint.
    fn endpoints(&self) -> Result<Endpoints, String> {
        let default_url = match self.scenario {
            Scenario::Fanout | Scenario::Flood => "ws://127.0.0.1:8080/ws/chat/loadgen",
            _ => "ws://127.0.0.1:8080/echo",
        };
        let urls = if self.url.is_empty() {
            vec![default_url.to_string()]
        } else {
            self.url.clone()
        };
        let mut targets = url::parse_ws_list(&urls).map_err(|e| format!("--url {e}"))?;
        let url = &urls[0];
        let trust = if targets[0].tls.is_some() {
            Some(match (&self.ca, self.insecure) {
                (Some(ca), _) => Trust::from_ca_file(ca)?,
                (None, true) => Trust::Insecure,
                (None, false) => {
                    return Err(format!(
                        "--url {url}: say which certificates to trust: --ca FILE (the CA that \
                         signed the gateway's) or --insecure (any, for test certificates)"
                    ));
                }
            })
        } else if self.ca.is_some() || self.insecure {
            return Err("--ca and --insecure go with a wss:// --url".into());
        } else {
            None
        };
        for t in &mut targets {
            t.tls.clone_from(&trust);
        }
        let per_node = self.conns.div_ceil(targets.len());
        if targets.iter().any(|t| t.is_loopback_v4()) && per_node.div_ceil(self.per_addr) > 254 {
            return Err(format!(
                "{} connections at --per-addr {} need more than the 254 source addresses \
                 127.0.0.1-127.0.0.254; raise --per-addr",
                self.conns, self.per_addr
            ));
        }
        let target = &targets[0];
        let publish = match (self.scenario.publishes(), self.publisher, &self.publish_url) {
            (true, PublisherKind::Http, Some(u)) => {
                Some(url::parse_http(u).map_err(|e| format!("--publish-url {e}"))?)
            }
            (true, PublisherKind::Http, None) => Some(url::publish_url_for(target)?),
            _ => None,
        };
        if publish.as_ref().is_some_and(|p| p.tls.is_some()) {
            return Err(
                "the HTTP publisher speaks plain HTTP only: with a wss:// --url use \
                 --publisher ws"
                    .into(),
            );
        }
        Ok((urls, targets, publish))
    }
}

/// Parses and validates a command line (without the program name handling clap does for
/// `--help`/`--version`; those come back as `Err` with clap's text, see `main`).
pub fn parse<I, T>(argv: I) -> Result<Config, ArgError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::try_parse_from(argv).map_err(ArgError::Clap)?;
    args.into_config().map_err(ArgError::Invalid)
}

/// Why a command line was not accepted.
#[derive(Debug)]
pub enum ArgError {
    /// clap's own verdict, including `--help` and `--version` (which are not errors).
    Clap(clap::Error),
    /// The flags parse but do not make sense together; one line.
    Invalid(String),
}

impl ArgError {
    /// `Some(text)` for `--help`/`--version`, which print and exit 0.
    pub fn info(&self) -> Option<String> {
        match self {
            ArgError::Clap(e)
                if matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) =>
            {
                Some(e.render().to_string())
            }
            _ => None,
        }
    }

    /// The error as one line (clap's message without its usage block).
    pub fn line(&self) -> String {
        match self {
            ArgError::Clap(e) => {
                let text = e.render().to_string();
                let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                first.trim_start_matches("error: ").to_string()
            }
            ArgError::Invalid(s) => s.clone(),
        }
    }
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
