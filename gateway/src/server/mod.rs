//! The mio event loop: worker threads, each owning its listener, connections, buffers and timers.
//!
//! [`Server::start`] binds one SO_REUSEPORT listening socket per worker (so the kernel spreads
//! accepts over them) and starts the workers; a connection lives and dies on the worker that
//! accepted it. Nothing on the per-message path takes a lock: the only state shared between
//! workers is configuration (read-only), the open-connection count (one atomic) and per-worker
//! counters that `/metrics` sums.
//!
//! The feeds configured with `--watch` and `--tail` ([`crate::feeds`]) run on threads of their
//! own, started here and stopped with the workers.

mod conn;
pub mod conn_id;
mod outbox;
mod pool;
pub mod stats;
pub mod timer;
mod worker;

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::feeds::{self, FeedHandle};
use crate::proto::DeflateConfig;
use crate::topics::{HistoryConfig, Hub, Mailbox};
pub use conn_id::{ConnId, Generations};
pub use stats::{Stats, WorkerStats};

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
    /// Listen backlog per worker socket. Default 4096 (the kernel caps it at somaxconn).
    pub backlog: i32,
    /// Open connections (WebSocket and HTTP) across all workers; more are answered 503. Default:
    /// the open-file limit less a reserve of 64.
    pub max_conns: usize,
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
    /// Origins allowed to open WebSockets (exact match of the `Origin` header). Empty: any
    /// origin. Requests without `Origin` (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Subprotocols the server speaks. Of those the client offers, the first in the client's
    /// order is chosen (the client lists its preference). Default none.
    pub subprotocols: Vec<String>,
    pub deflate: DeflateConfig,
    /// Bounds of each topic's history (for `since` recovery).
    pub history: HistoryConfig,
    /// Topics that clients (subscriptions, chat rooms, publishing) may create in all; past it a
    /// new name is refused (503, or an error on `/ws`). Topics are never forgotten, so this
    /// bounds the hub's memory. Default 100,000.
    pub max_topics: usize,
    /// Bearer token that `POST /publish/..` from non-loopback addresses must present. Default
    /// none: only loopback clients may publish.
    pub publish_token: Option<String>,
    /// Let loopback clients publish without the token. Default true.
    pub trust_loopback: bool,
    /// Watched files (`--watch NAME=PATH`): the whole content of PATH goes to topic
    /// `file/NAME` whenever it changes, served at `/ws/file/NAME` and `/file/NAME`. Names are
    /// one topic segment ([`feeds::is_valid_feed_name`]). Default none.
    pub watch: Vec<(String, PathBuf)>,
    /// Tailed logs (`--tail NAME=PATH`): each line appended to PATH goes to topic `log/NAME`,
    /// served at `/ws/log/NAME`. Default none.
    pub tail: Vec<(String, PathBuf)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            reuse_port: false,
            backlog: 4096,
            max_conns: default_max_conns(),
            max_message: 64 * 1024,
            max_queued: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(54),
            pong_timeout: Duration::from_secs(60),
            close_grace: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            deflate: DeflateConfig::default(),
            history: HistoryConfig::default(),
            max_topics: 100_000,
            publish_token: None,
            trust_loopback: true,
            watch: Vec::new(),
            tail: Vec::new(),
        }
    }
}

/// The open-file soft limit less a reserve for listeners, wakers and files.
fn default_max_conns() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if ok {
        (lim.rlim_cur as usize).saturating_sub(64).max(16)
    } else {
        1000
    }
}

/// State every worker sees.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub shutdown: AtomicBool,
    pub open_conns: AtomicUsize,
    pub stats: Stats,
    /// Shared with the feed threads, which publish to it.
    pub hub: Arc<Hub>,
}

/// The server starter; see [`Server::start`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds the listeners and starts the workers and the feeds. Errors (address in use, bad
    /// address, a bad feed name) are returned before any thread starts. A watched or tailed
    /// file that is missing is not an error: it is reported, and followed once it appears.
    pub fn start(config: Config) -> io::Result<ServerHandle> {
        feeds::check_names(&config.watch, &config.tail)?;
        let workers = config.workers.max(1);
        let listeners = bind_listeners(&config, workers)?;
        let local_addr = listeners[0].local_addr()?;
        let shared = Arc::new(Shared {
            stats: Stats::new(workers),
            hub: Arc::new(Hub::with_max_topics(config.history, config.max_topics)),
            config,
            shutdown: AtomicBool::new(false),
            open_conns: AtomicUsize::new(0),
        });
        let mut wakers = Vec::new();
        let mut mailboxes = Vec::new();
        let mut built = Vec::new();
        for (id, listener) in listeners.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let (worker, waker) = worker::Worker::new(id, listener, shared.clone(), rx)?;
            mailboxes.push(Mailbox {
                tx,
                waker: waker.clone(),
            });
            wakers.push(waker);
            built.push(worker);
        }
        // Every worker can receive before any can publish.
        shared.hub.set_mailboxes(mailboxes);
        // The feeds create their topics (with their kind) and publish their first version
        // before any client can subscribe.
        let sources = feeds::start(&shared.hub, &shared.config.watch, &shared.config.tail)?;
        let mut threads = Vec::new();
        for (id, worker) in built.into_iter().enumerate() {
            threads.push(
                std::thread::Builder::new()
                    .name(format!("gw-worker-{id}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(ServerHandle {
            local_addr,
            shared,
            wakers,
            threads,
            sources,
        })
    }
}

/// Binds one listener per worker on the same address. With port 0 the first socket picks the
/// port and the others join it.
fn bind_listeners(config: &Config, workers: usize) -> io::Result<Vec<StdListener>> {
    if !config.reuse_port && config.listen.port() != 0 {
        // Probe without SO_REUSEPORT, so a port held by another process is an error, not a share.
        let probe = Socket::new(
            Domain::for_address(config.listen),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        probe.set_reuse_address(true)?;
        probe.bind(&config.listen.into()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {}: {e} (pass --reuse-port to share it)",
                    config.listen
                ),
            )
        })?;
    }
    let mut addr = config.listen;
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        s.listen(config.backlog)?;
        let l: StdListener = s.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// A running server. Dropping it shuts the server down and waits for the workers.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    wakers: Vec<Arc<mio::Waker>>,
    threads: Vec<JoinHandle<()>>,
    sources: Vec<FeedHandle>,
}

impl ServerHandle {
    /// The bound address (with the real port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The topic hub, to publish from the embedding program (file watchers, tests).
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// Connections open right now (WebSocket and HTTP).
    pub fn open_connections(&self) -> usize {
        self.shared.open_conns.load(Ordering::Relaxed)
    }

    /// Asks every worker to stop: open WebSockets are sent close 1001 and all sockets are
    /// closed. The feeds stop too.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for s in &self.sources {
            s.stop();
        }
    }

    /// Waits until the workers have stopped (after [`ServerHandle::shutdown`], or forever),
    /// then stops the feeds and waits for them.
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for s in self.sources.drain(..) {
            s.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        for s in self.sources.drain(..) {
            s.join();
        }
    }
}
