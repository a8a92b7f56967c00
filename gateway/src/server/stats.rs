//! Counters and latency histograms: one block per worker (each on its own cache lines), summed
//! when read.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::histogram::{self, Histogram};

macro_rules! counters {
    ($( $field:ident : $help:literal ),* $(,)?) => {
        /// One worker's counters; only that worker writes them.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct WorkerStats {
            $( #[doc = $help] pub $field: AtomicU64, )*
        }

        impl WorkerStats {
            const FIELDS: &'static [(&'static str, &'static str)] = &[$( (stringify!($field), $help), )*];

            fn values(&self) -> Vec<u64> {
                vec![$( self.$field.load(Ordering::Relaxed), )*]
            }
        }
    };
}

counters! {
    accepted_total: "TCP connections accepted",
    refused_max_conns_total: "connections refused with 503 because --max-conns was reached",
    refused_per_ip_total: "connections refused with 503 because their address had --max-conns-per-ip open",
    accept_errors_total: "accept() failures (EMFILE, ENFILE, ...): the connection stays queued; accepting is retried every 50 ms",
    refused_no_fds_total: "queued connections answered 503 through the reserve descriptor after a second without file descriptors",
    http_requests_total: "plain HTTP requests answered",
    http_refused_400_total: "requests answered 400 (malformed HTTP or handshake, no or several Host, bad or conflicting Content-Length)",
    http_refused_403_total: "requests refused 403 (origin policy; publish from non-loopback without a configured token; a topic outside the JWT's claims)",
    http_refused_404_total: "requests answered 404",
    http_refused_405_total: "requests answered 405",
    http_refused_426_total: "requests answered 426 (not an upgrade, or wrong version)",
    http_refused_431_total: "requests answered 431 (head too large)",
    http_refused_401_total: "requests answered 401 (publish: missing or wrong token; with --jwt-*: an upgrade or publish without a valid JWT)",
    http_refused_411_total: "publish requests answered 411 (no Content-Length, or a chunked body)",
    http_refused_413_total: "publish requests answered 413 (body over --max-message)",
    http_refused_other_total: "requests refused with another 4xx or 5xx status (503: topic limit, busy)",
    published_total: "messages published to topics (API, chat and /ws)",
    deliveries_total: "topic messages queued or written to subscribers",
    slow_consumers_total: "subscribers closed with 1008 for falling --max-queued bytes behind",
    publish_refused_busy_total: "publishes refused (503 or a /ws error) while a worker's backlog was over --max-backlog",
    topics_refused_limit_total: "new topics refused (503 or a /ws error) because --max-topics topics were held",
    topics_refused_rate_total: "new topics refused (503 with Retry-After or a /ws error) because the connection had used up --topic-burst at --topic-rate",
    topic_resets_total: "/ws subscribes answered reset: their since was from another epoch or beyond the topic's last seq",
    publishers_paused_total: "times a chat client was paused (not read) while a worker's backlog was over --max-backlog",
    ws_opened_total: "WebSocket handshakes completed",
    ws_closed_total: "WebSocket connections closed, for any reason",
    messages_in_total: "messages received",
    messages_out_total: "messages sent",
    bytes_in_total: "bytes read from sockets",
    bytes_out_total: "bytes written to sockets",
    close_1002_total: "connections failed with 1002 (protocol error)",
    close_1007_total: "connections failed with 1007 (invalid data)",
    close_1008_total: "connections failed with 1008 (a message of too many frames for its size)",
    close_1009_total: "connections failed with 1009 (message too big)",
    handshake_timeouts_total: "connections dropped at the handshake timeout",
    pong_timeouts_total: "connections dropped at the pong timeout",
    close_grace_timeouts_total: "closing connections dropped at the close grace timeout",
    heap_trims_total: "times a worker gave free heap memory back to the kernel (malloc_trim) after many connections closed",
    pings_sent_total: "keep-alive pings sent",
    drains_total: "graceful drains started (SIGTERM, SIGINT)",
    reloads_total: "configuration reloads applied (SIGHUP)",
    token_refused_missing_total: "WebSocket upgrades refused 401: tokens are on and none was presented",
    token_refused_too_long_total: "tokens refused 401: longer than 4096 bytes",
    token_refused_malformed_total: "tokens refused 401: not three base64url parts of JSON",
    token_refused_algorithm_total: "tokens refused 401: alg none, unsupported, or not the configured key's",
    token_refused_signature_total: "tokens refused 401: the signature does not verify",
    token_refused_expired_total: "tokens refused 401: exp is past (with --jwt-leeway)",
    token_refused_claims_total: "tokens refused 401: a claim missing or of the wrong type, or nbf ahead",
    token_refused_forbidden_total: "requests a valid token does not cover (403 at the upgrade or publish, a /ws error, chat close 1008)",
    token_expired_closes_total: "open WebSockets closed with 3000 when their token expired",
    commands_started_total: "command processes started (/ws/cmd/..)",
    commands_refused_busy_total: "command sockets refused with 503 because --max-commands processes were running",
    commands_failed_total: "command sockets closed with 1011 because the process could not start",
    commands_killed_total: "command processes sent SIGKILL after ignoring stdin's end and SIGINT",
    commands_binary_refused_total: "command sockets closed with 1003 for a binary message",
    tls_handshakes_total: "TLS handshakes completed",
    tls_handshakes_failed_total: "TLS connections closed before their handshake completed (a plain-text request, a bad or unacceptable ClientHello, the handshake timeout, the peer leaving)",
}

impl WorkerStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        // Only the owning worker writes, so a plain load and store suffice: no locked
        // read-modify-write on the per-message path (readers only ever see a whole value).
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// For counters of events outside the workers (a drain, a reload), which are kept in the
    /// first worker's block and that worker never writes.
    pub fn add_from_outside(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// All workers' counters.
#[derive(Debug)]
pub struct Stats {
    workers: Vec<WorkerStats>,
    latencies: Vec<Latencies>,
}

/// One worker's latency histograms.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Latencies {
    /// From publish to the write of the frame to each subscriber (weighted per delivery).
    pub delivery: Histogram,
    /// From accepting the TCP connection to sending the 101.
    pub handshake: Histogram,
}

impl Stats {
    pub fn new(workers: usize) -> Stats {
        Stats {
            workers: (0..workers).map(|_| WorkerStats::default()).collect(),
            latencies: (0..workers).map(|_| Latencies::default()).collect(),
        }
    }

    pub fn worker(&self, id: usize) -> &WorkerStats {
        &self.workers[id]
    }

    pub fn latencies(&self, id: usize) -> &Latencies {
        &self.latencies[id]
    }

    /// The sum of one counter over all workers, by name.
    pub fn total(&self, name: &str) -> u64 {
        let i = WorkerStats::FIELDS
            .iter()
            .position(|(n, _)| *n == name)
            .expect("known counter");
        self.workers.iter().map(|w| w.values()[i]).sum()
    }

    /// Every counter with its sum over all workers.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        let mut sums = vec![0u64; WorkerStats::FIELDS.len()];
        for w in &self.workers {
            for (s, v) in sums.iter_mut().zip(w.values()) {
                *s += v;
            }
        }
        WorkerStats::FIELDS
            .iter()
            .map(|(n, _)| *n)
            .zip(sums)
            .collect()
    }

    /// Prometheus text exposition of every counter plus the gauges given as
    /// (name, help, value), e.g. open connections.
    pub fn render_prometheus(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut sums = vec![0u64; WorkerStats::FIELDS.len()];
        for w in &self.workers {
            for (s, v) in sums.iter_mut().zip(w.values()) {
                *s += v;
            }
        }
        let mut out = String::new();
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP gateway_{name} {help}\n# TYPE gateway_{name} gauge\ngateway_{name} {v}"
            );
        }
        for ((name, help), v) in WorkerStats::FIELDS.iter().zip(sums) {
            let _ = writeln!(
                out,
                "# HELP gateway_{name} {help}\n# TYPE gateway_{name} counter\ngateway_{name} {v}"
            );
        }
        histogram::render(
            &mut out,
            "delivery_latency_seconds",
            "time from a message's publish to the write of its frame, per delivery",
            self.latencies.iter().map(|l| &l.delivery),
        );
        histogram::render(
            &mut out,
            "handshake_seconds",
            "time from accepting a connection to sending its 101",
            self.latencies.iter().map(|l| &l.handshake),
        );
        out
    }
}
