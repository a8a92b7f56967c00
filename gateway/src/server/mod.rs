//! The mio event loop: worker threads, each owning its listener, connections, buffers and timers.
//!
//! [`Server::start`] binds one SO_REUSEPORT listening socket per worker (so the kernel spreads
//! accepts over them) and starts the workers; a connection lives and dies on the worker that
//! accepted it. Nothing on the per-message path takes a lock: the only state shared between
//! workers is configuration (read-only but for reloads, see `reload`), the open-connection
//! count (one atomic), per-worker counters that `/metrics` sums, and the token verifier
//! (read-mostly, behind a lock taken once per upgrade, replaced by
//! [`ServerHandle::reload_tokens`]).
//!
//! The feeds configured with `--watch` and `--tail` ([`crate::feeds`]) run on threads of their
//! own, started here and stopped with the workers. Command processes (`--command`) belong to
//! the worker whose connection started them.

pub mod config;
mod conn;
pub mod conn_id;
pub mod histogram;
mod outbox;
mod pool;
mod reload;
mod report;
pub mod stats;
pub mod timer;
pub mod tls;
mod tls_conn;
mod worker;

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::Verifier;
use crate::feeds::{self, FeedHandle};
use crate::topics::{Hub, HubLimits, Mailbox};
pub use config::Config;
pub use conn_id::{ConnId, Generations};
pub use reload::Reloaded;
pub use stats::{Stats, WorkerStats};
/// The `/ws` command parser (`Command::parse`, a pure function), public for its fuzz target.
pub use worker::{BadCommand, Command};

/// State every worker sees.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration the server started with: what a reload cannot change.
    pub config: Config,
    /// The configuration now, which reloads replace; workers keep a copy ([`reload`]).
    pub live: reload::LiveConfig,
    pub shutdown: AtomicBool,
    /// A graceful drain was asked for ([`ServerHandle::drain`]).
    pub draining: AtomicBool,
    /// Open connections per client address (only with `--max-conns-per-ip`).
    pub per_ip: PerIp,
    pub open_conns: AtomicUsize,
    /// Command processes running (spawned and not yet reaped), against `--max-commands`.
    pub running_commands: AtomicUsize,
    pub stats: Stats,
    /// Shared with the feed threads, which publish to it.
    pub hub: Arc<Hub>,
    /// The token verifier (`None`: tokens are off), replaced by
    /// [`ServerHandle::reload_tokens`]; read once per upgrade and per publish with a token.
    pub tokens: RwLock<Option<Arc<Verifier>>>,
    /// With `--tls-cert` and `--tls-key`: every connection speaks TLS.
    pub tls: Option<tls::Tls>,
}

impl Shared {
    /// See [`ServerHandle::reload_tokens`].
    fn reload_tokens(&self, config: &Config) -> Result<(), String> {
        let verifier = Verifier::from_config(config)?.map(Arc::new);
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = verifier;
        Ok(())
    }

    /// The token verifier in force now; `None` when tokens are off.
    pub fn verifier(&self) -> Option<Arc<Verifier>> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The server starter; see [`Server::start`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds the listeners and starts the workers and the feeds. Errors (address in use, bad
    /// address, a bad feed name) are returned before any thread starts. A watched or tailed
    /// file that is missing is not an error: it is reported, and followed once it appears.
    /// With commands configured, the descriptors this process inherited are marked
    /// close-on-exec ([`crate::sys::cloexec_inherited`]), so no command inherits them.
    pub fn start(config: Config) -> io::Result<ServerHandle> {
        feeds::check_names(&config.watch, &config.tail)?;
        let tokens = Verifier::from_config(&config)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        crate::commands::check_commands(&config.commands)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if !config.commands.is_empty() {
            // Commands get their three pipes and nothing else of this process.
            crate::sys::cloexec_inherited()?;
        }
        let tls = match &config.tls {
            Some(files) => Some(tls::Tls::new(files).map_err(io::Error::other)?),
            None => None,
        };
        let bus = if config.bus.is_empty() {
            None
        } else {
            Some(
                crate::bus::Cluster::new(&config.bus, config.history, config.max_backlog)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            )
        };
        let workers = config.workers.max(1);
        let listeners = bind_listeners(&config, workers)?;
        if config.steer_by_cpu && workers > 1 {
            // An old kernel without SO_ATTACH_REUSEPORT_CBPF keeps the address hash.
            if let Err(e) = crate::sys::steer_by_cpu(&listeners[0], workers) {
                log::warn!("--steer-by-cpu: {e}; connections are spread by address hash");
            }
        }
        let local_addr = listeners[0].local_addr()?;
        let shared = Arc::new(Shared {
            stats: Stats::new(workers),
            hub: Arc::new(Hub::with_limits(
                config.history,
                HubLimits {
                    max_topics: config.max_topics,
                    max_backlog: config.max_backlog,
                    history_memory: config.history_memory,
                    topic_ttl: config.topic_ttl,
                },
            )),
            live: reload::LiveConfig::new(config.clone()),
            config,
            shutdown: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            per_ip: PerIp::default(),
            open_conns: AtomicUsize::new(0),
            tokens: RwLock::new(tokens.map(Arc::new)),
            running_commands: AtomicUsize::new(0),
            tls,
        });
        let mut mailboxes = Vec::new();
        let mut built = Vec::new();
        for (id, listener) in listeners.into_iter().enumerate() {
            let (worker, mailbox) = worker::Worker::new(id, listener, shared.clone())?;
            mailboxes.push(mailbox);
            built.push(worker);
        }
        let wakers = mailboxes.clone();
        // Every worker can receive before any can publish.
        shared.hub.set_mailboxes(mailboxes);
        if let Some(bus) = bus {
            shared.hub.set_bus(bus.clone());
            bus.start(&shared.hub, &local_addr.to_string())?;
            // The feeds publish their first versions next: give the bus a moment to connect
            // (a node whose Redis is down still starts, and answers 503 until it is back).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            while !bus.connected() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if !bus.connected() {
                log::warn!(
                    "bus: {} not reachable yet; publishing answers 503 until it is",
                    bus.shown()
                );
            }
        }
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
    /// The workers' mailboxes, to wake them for shutdown.
    wakers: Vec<Mailbox>,
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

    /// Rereads the `--tls-cert` and `--tls-key` files and serves them to new handshakes
    /// (connections already open keep theirs): what SIGHUP does. On an error (a missing or
    /// invalid file, a key that is not the certificate's) the certificate served so far stays
    /// and the error names the file. Without TLS there is nothing to reload: `Ok`.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.shared.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    /// Asks every worker to stop: open WebSockets are sent close 1001 and all sockets are
    /// closed. The feeds stop too.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            w.wake();
        }
        for s in &self.sources {
            s.stop();
        }
        if let Some(bus) = self.shared.hub.bus() {
            bus.shutdown();
        }
    }

    /// Starts a graceful drain: the listeners close (new connections are refused), every open
    /// WebSocket is sent close 1001 at a random moment within `--drain` (so clients do not all
    /// reconnect at once), close handshakes and queued output finish, and the workers stop;
    /// [`ServerHandle::join`] then returns.
    pub fn drain(&self) {
        self.drainer().drain();
    }

    /// Takes the token settings of `config` (`jwt_secret`, `jwt_public_key`, re-read from its
    /// file now, `jwt_leeway`) for every upgrade and publish from now on; meant for SIGHUP. On
    /// an error (an unreadable or unusable key) the keys in force stay and the error is
    /// returned. Open connections keep the claims they were admitted with, until their `exp`.
    /// A configuration with neither key turns tokens off.
    pub fn reload_tokens(&self, config: &Config) -> Result<(), String> {
        self.shared.reload_tokens(config)
    }

    /// A handle that can start the drain from another thread (a signal handler's).
    pub fn drainer(&self) -> Drainer {
        Drainer {
            shared: self.shared.clone(),
            wakers: self.wakers.clone(),
        }
    }

    /// Applies a new configuration to the running server: what may change safely changes
    /// (origins, tokens, limits, timeouts), without dropping a connection; what needs a
    /// restart keeps its running value and is listed in the report ([`Reloaded`]).
    pub fn reload(&self, new: &Config) -> Reloaded {
        self.reloader().reload(new)
    }

    /// A handle that can reload the configuration from another thread (a signal handler's).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
            wakers: self.wakers.clone(),
        }
    }

    /// Logs the refusals (connections, requests, publishes, timeouts) of each `interval` in
    /// one line, when there were any, until the server stops: the operator sees attacks and
    /// exhausted limits without a line per refusal.
    pub fn log_refusals_every(&self, interval: std::time::Duration) {
        report::spawn(Arc::downgrade(&self.shared), interval);
    }

    /// Waits until the workers have stopped (after [`ServerHandle::shutdown`], or forever),
    /// then stops the feeds and waits for them.
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for s in self.sources.drain(..) {
            s.stop();
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

/// Starts a drain from any thread; see [`ServerHandle::drain`].
#[derive(Debug, Clone)]
pub struct Drainer {
    shared: Arc<Shared>,
    wakers: Vec<Mailbox>,
}

impl Drainer {
    pub fn drain(&self) {
        if !self.shared.draining.swap(true, Ordering::SeqCst) {
            WorkerStats::add_from_outside(&self.shared.stats.worker(0).drains_total, 1);
        }
        for w in &self.wakers {
            w.wake();
        }
    }
}

/// Reloads the configuration from any thread; see [`ServerHandle::reload`].
#[derive(Debug, Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    wakers: Vec<Mailbox>,
}

impl Reloader {
    pub fn reload(&self, new: &Config) -> Reloaded {
        // Tokens first: keys that cannot be used leave the token settings as they are.
        let mut token_error = None;
        let mut new = new.clone();
        if let Err(e) = self.shared.reload_tokens(&new) {
            let running = self.shared.live.current();
            new.jwt_secret = running.jwt_secret.clone();
            new.jwt_public_key = running.jwt_public_key.clone();
            new.jwt_leeway = running.jwt_leeway;
            token_error = Some(format!("tokens: {e}; the keys in force are kept"));
        }
        let (now, mut report) = self.shared.live.reload(&new);
        report.errors.extend(token_error);
        // The certificate files are reread: a renewed certificate is served from now on.
        if let Some(tls) = &self.shared.tls {
            match tls.reload() {
                Ok(()) => report.changed.push("certificates (reread)"),
                Err(e) => report.errors.push(format!(
                    "certificates: {e}; the certificate in force is kept"
                )),
            }
        }
        let hub = &self.shared.hub;
        hub.set_limits(now.max_topics, now.max_backlog, now.topic_ttl);
        // Idle workers pick the new configuration up at once rather than at their next event.
        for w in &self.wakers {
            w.wake();
        }
        WorkerStats::add_from_outside(&self.shared.stats.worker(0).reloads_total, 1);
        report
    }
}

/// Open connections per client address, across workers. Consulted only when
/// `--max-conns-per-ip` is set: one short lock per accept and per close.
#[derive(Debug, Default)]
pub(crate) struct PerIp(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>);

impl PerIp {
    /// Counts one more connection from `ip` unless it already has `limit`.
    pub fn try_add(&self, ip: std::net::IpAddr, limit: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n as usize >= limit {
            return false;
        }
        *n += 1;
        true
    }

    pub fn remove(&self, ip: std::net::IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}
