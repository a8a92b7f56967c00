//! [`Config`], everything the server can be told, and its out-of-the-box values: the one place
//! a default is written. The `gateway` binary's flags take their defaults from
//! [`Config::default`], shown in `--help` with [`format_duration`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::tls::TlsFiles;
use crate::commands::CommandSpec;
use crate::proto::DeflateConfig;
use crate::topics::HistoryConfig;

/// Everything the server can be told. `Default` is the out-of-the-box configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Worker threads, each with its own event loop. Default: one per CPU.
    pub workers: usize,
    /// Let other processes bind the same address too (SO_REUSEPORT across processes). Default
    /// false: a second gateway on a busy port fails instead of silently sharing it.
    pub reuse_port: bool,
    /// Hand each new connection to the worker `N % workers`, N being the CPU that received it
    /// (a classic BPF program on the SO_REUSEPORT group), instead of by a hash of its
    /// addresses: a connection's kernel work and its worker then tend to share a CPU. Good
    /// when connections arrive on every CPU (multi-queue NICs, RSS/RPS, loopback); with a
    /// single-queue NIC every connection would go to one worker. Default false.
    pub steer_by_cpu: bool,
    /// Listen backlog per worker socket. Default 4096 (the kernel caps it at somaxconn).
    pub backlog: i32,
    /// Open connections (WebSocket and HTTP) across all workers; more are answered 503. Default:
    /// the open-file limit less a reserve of 64.
    pub max_conns: usize,
    /// Open connections one client address may hold; more are answered 503. 0: no limit.
    /// Default 0 (clients behind one NAT or proxy share an address).
    pub max_conns_per_ip: usize,
    /// Largest message accepted, after decompression; larger ones close with 1009. Default 64 KiB.
    pub max_message: usize,
    /// Outbound bytes a connection may have queued before the gateway stops reading from it.
    /// Default 1 MiB. One message may always be queued, so the bound is this plus one message.
    pub max_queued: usize,
    /// A connection that has not completed its handshake by then is dropped. Default 10 s.
    pub handshake_timeout: Duration,
    /// An open connection silent this long is sent a ping. Default 54 s.
    pub ping_interval: Duration,
    /// An open connection from which nothing (pong or any frame) arrives for this long is
    /// dropped. Default 60 s.
    pub pong_timeout: Duration,
    /// How long a closing connection may take to finish the close handshake. Default 5 s.
    pub close_grace: Duration,
    /// On SIGTERM or SIGINT (or [`crate::server::ServerHandle::drain`]), the window over which
    /// open WebSockets are sent close 1001, each at a random moment, before the process exits.
    /// Default 10 s.
    pub drain: Duration,
    /// Origins allowed besides the gateway's own (exact match of the `Origin` header; `*`: any).
    /// By default only same-origin browser requests are allowed: an `Origin` must name the
    /// request's `Host` ([`crate::http::origin`]); requests without `Origin` (non-browser
    /// clients) are always allowed. Applies to every WebSocket path and to publishes that rely
    /// on the loopback trust. Default none.
    pub allowed_origins: Vec<String>,
    /// Subprotocols the server speaks. Of those the client offers, the first in the client's
    /// order is chosen (the client lists its preference). Default none.
    pub subprotocols: Vec<String>,
    pub deflate: DeflateConfig,
    /// Bounds of each topic's history (for `since` recovery).
    pub history: HistoryConfig,
    /// Payload bytes of the history of all topics together (file feeds' latest values, whose
    /// number the operator sets, aside). When it is reached the oldest history across topics
    /// goes first; a `since` that needed it gets a `gap`. Default 256 MiB.
    pub history_memory: usize,
    /// Topics that clients (subscriptions, chat rooms, publishing) may hold at once; past it a
    /// new name is refused (503, or an error on `/ws`). Idle topics are forgotten after
    /// `topic_ttl`, so this bounds the hub's memory without holding it for good. Default
    /// 100,000.
    pub max_topics: usize,
    /// A topic with no subscriber and no publish for this long is forgotten (its history
    /// freed; re-created later under a new epoch). Configured file and log feeds never are.
    /// Default 60 s.
    pub topic_ttl: Duration,
    /// New topics one connection may create at once (a `/ws` subscribe or publish, or
    /// `POST /publish` on a kept-alive connection, to a name not yet held); refill at
    /// `topic_rate`. Past it: a `/ws` error, or 503 with `Retry-After`. Default 64.
    pub topic_burst: u32,
    /// New topics per second one connection may create once its burst is spent. Default 1.
    pub topic_rate: u32,
    /// Bytes of published messages (payload plus a fixed overhead each) waiting in one worker's
    /// mailbox, past which publishers are pushed back: `POST /publish` answers 503 with
    /// `Retry-After`, a `/ws` publish gets an `error`, chat clients are not read until the
    /// workers catch up. Bounds the memory between the hub and the workers. Default 16 MiB.
    pub max_backlog: usize,
    /// Under a high message rate, each subscriber is written at most once per this interval,
    /// with every frame it is owed in one write; a message that follows a quieter spell goes
    /// out at once. Trades up to this much latency for far fewer syscalls (1,000 subscribers
    /// of a topic at 1,000 messages/s: 5 ms level with uWebSockets per CPU-second, 10 ms about
    /// 1.3x with the same p99, 20 ms about 1.9x with a p99 1.7x higher; docs/BENCHMARKS.md).
    /// Default 10 ms; 0 writes every batch at once.
    pub flush_interval: Duration,
    /// The cluster bus: `redis://HOST:PORT[/DB]` ([`crate::bus`]). With it, every publish is
    /// numbered by Redis and reaches the subscribers of every gateway on the same Redis. With
    /// several, topics are spread over them by a hash of their name (every node must list the
    /// same URLs in the same order). Default none: this process alone.
    pub bus: Vec<String>,
    /// With a bus, `/healthz` answers 503 once the bus has been unreachable this long (so a
    /// load balancer stops sending clients to a node that cannot publish). Default 5 s.
    pub bus_grace: Duration,
    /// Bearer token that `POST /publish/..` from non-loopback addresses must present. Default
    /// none: only loopback clients may publish.
    pub publish_token: Option<String>,
    /// Let loopback clients publish without the token. Default true.
    pub trust_loopback: bool,
    /// HS256 secret that tokens (JWT) may be signed with (`--jwt-secret`). With it or
    /// `jwt_public_key` set, every WebSocket upgrade needs a valid token (401 otherwise) and
    /// its claims bound what the connection may subscribe and publish to ([`crate::auth`]).
    /// Default none: tokens are off.
    pub jwt_secret: Option<String>,
    /// PEM file of the public key that tokens may be signed for (`--jwt-public-key`): RSA
    /// verifies RS256, P-256 ES256. Read at start and by
    /// [`crate::server::ServerHandle::reload_tokens`]. Default none.
    pub jwt_public_key: Option<PathBuf>,
    /// How long past its `exp` (and before its `nbf`) a token is still accepted, for clock
    /// skew between the token issuer and the gateway; an open connection is closed (3000) at
    /// `exp` plus this. Default 0.
    pub jwt_leeway: Duration,
    /// Watched files (`--watch NAME=PATH`): the whole content of PATH goes to topic
    /// `file/NAME` whenever it changes, served at `/ws/file/NAME` and `/file/NAME`. Names are
    /// one topic segment ([`crate::feeds::is_valid_feed_name`]). Default none.
    pub watch: Vec<(String, PathBuf)>,
    /// Tailed logs (`--tail NAME=PATH`): each line appended to PATH goes to topic `log/NAME`,
    /// served at `/ws/log/NAME`. Default none.
    pub tail: Vec<(String, PathBuf)>,
    /// Commands run over WebSocket (`--command NAME=COMMAND LINE`): `/ws/cmd/NAME` starts the
    /// command (words as [`crate::commands::split_words`] splits the line; no shell) once per
    /// connection, for clients that present the publish token. Default none: the command
    /// runner is off.
    pub commands: Vec<CommandSpec>,
    /// Command processes running at once, across workers (counted until each is reaped); past
    /// it `/ws/cmd/..` answers 503. Default 16.
    pub max_commands: usize,
    /// TLS (`--tls-cert PATH --tls-key PATH`, PEM): with it the listener speaks only TLS
    /// (`https://`, `wss://`), ALPN `http/1.1`, the TLS handshake within
    /// `handshake_timeout`; the files are reread by [`crate::server::ServerHandle::reload_tls`].
    /// Default none: plain TCP.
    pub tls: Option<TlsFiles>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            reuse_port: false,
            steer_by_cpu: false,
            backlog: 4096,
            max_conns: default_max_conns(),
            max_conns_per_ip: 0,
            max_message: 64 * 1024,
            max_queued: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(54),
            pong_timeout: Duration::from_secs(60),
            close_grace: Duration::from_secs(5),
            drain: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            deflate: DeflateConfig::default(),
            history: HistoryConfig::default(),
            history_memory: 256 * 1024 * 1024,
            max_topics: 100_000,
            topic_ttl: Duration::from_secs(60),
            topic_burst: 64,
            topic_rate: 1,
            max_backlog: 16 * 1024 * 1024,
            bus: Vec::new(),
            bus_grace: Duration::from_secs(5),
            flush_interval: Duration::from_millis(10),
            publish_token: None,
            trust_loopback: true,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_leeway: Duration::ZERO,
            watch: Vec::new(),
            tail: Vec::new(),
            commands: Vec::new(),
            max_commands: 16,
            tls: None,
        }
    }
}

/// The open-file soft limit less a reserve for listeners, wakers and files.
fn default_max_conns() -> usize {
    match crate::sys::nofile_limit() {
        Ok((soft, _)) => usize::try_from(soft)
            .unwrap_or(usize::MAX)
            .saturating_sub(64)
            .max(16),
        Err(_) => 1000,
    }
}

/// Writes a duration the way [`crate::cli::parse_duration`] reads it: whole seconds as `10s`,
/// whole milliseconds as `250ms`, anything finer as fractional seconds.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse_duration;

    #[test]
    fn durations_format_as_they_parse() {
        let cases = [
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(60), "60s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(2500), "0.0025s"),
        ];
        for (d, text) in cases {
            assert_eq!(format_duration(d), text);
            let back = parse_duration(text).unwrap();
            assert!(
                back.abs_diff(d) < Duration::from_nanos(10),
                "{text}: {back:?}"
            );
        }
        let c = Config::default();
        for d in [
            c.handshake_timeout,
            c.ping_interval,
            c.pong_timeout,
            c.close_grace,
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn defaults_are_usable() {
        let c = Config::default();
        assert!(c.workers >= 1 && c.max_conns >= 16);
        assert!(c.ping_interval < c.pong_timeout);
        assert!(c.history.messages >= 1 && c.deflate.enabled);
    }
}
