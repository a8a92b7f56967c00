//! One worker: a mio `Poll`, its listener, a `Slab` of connections, a buffer pool, a timer
//! wheel and its share of topic subscriptions, all owned by one thread. This file owns the
//! worker's state, its loop, and removing connections.
//!
//! The files of the worker, in the order a message meets them:
//! - [`accept`]: new connections: `--max-conns`, and running out of descriptors (retry, reserve).
//! - [`sockets`]: the edge-triggered I/O rules and the cork: reading, sending, queueing, draining.
//! - [`http`]: a request head: route, upgrade or refusal, plain answers, the publish API.
//! - [`auth`]: tokens: the upgrade's token checked, its claims kept by slot, its expiry (3000).
//! - [`ws`]: an open WebSocket: the `proto::Session` driven with the socket's bytes; echo.
//! - [`multiplex`]: the `/ws` JSON protocol, parsed into a `Command` and executed.
//! - [`delivery`]: topics: subscribing (one routine for every endpoint), delivering published
//!   frames, slow consumers, chat.
//! - [`feeds`]: the `/ws/file/..` and `/ws/log/..` sockets.
//! - [`quota`]: how many topics one connection may create, and how fast.
//! - [`commands`]: the `/ws/cmd/..` sockets: a process per connection, its pipes in the `Poll`.
//! - [`timers`]: deadlines: handshake, keep-alive, close grace.
//! - [`drain`]: the graceful drain: no more accepts, closes spread over `--drain`.
//! - [`tls`]: with `--tls-cert`, each connection's rustls state and the socket calls through it.
//!
//! **Ending a connection.** Only [`Worker::reap`] removes a connection from the slab. Every
//! other path that finishes one (a failed write, a reset, a deadline, the end of a linger) marks
//! it `dead` ([`Worker::kill`]); the loop reaps after each socket event, backlog entry, timer and
//! delivery. So within one event a connection's slab entry never disappears under a caller:
//! callers check `dead` (sending to a dead connection does nothing), never liveness.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::mem;
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

mod accept;
mod auth;
mod cluster;
mod commands;
mod delivery;
mod drain;
mod feeds;
mod http;
mod multiplex;
mod quota;
mod sockets;
mod timers;
mod tls;
mod ws;

pub use multiplex::{BadCommand, Command};

use super::conn::{Conn, Phase};
use super::outbox::Outbox;
use super::pool::BufPool;
use super::stats::WorkerStats;
use super::timer::{Entry, TimerWheel};
use super::tls_conn::{TlsConn, TlsScratch};
use super::{Config, ConnId, Generations, Shared};
use crate::proto::{Compressor, Timeouts};
use crate::topics::TopicId;
use crate::topics::local::{LocalTopics, Sub};
use crate::topics::mailbox::{self, Inbox, Mailbox};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// The one read buffer of the loop: every socket is read into it.
const READ_BUF: usize = 64 * 1024;
/// A side table keyed by slab slot.
type SideTable<V> = HashMap<usize, V, BuildHasherDefault<SlotHasher>>;

/// Hashes a slab slot with one multiplication (Fibonacci hashing): slots are small, dense and
/// chosen by the worker, not by a peer, so SipHash's protection against chosen keys buys
/// nothing here, and the tables are consulted on every read.
#[derive(Debug, Default)]
struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Gives back a side table's memory once it is mostly empty (after a burst of connections), so
/// that idle connections do not pay for what their handshakes needed.
fn shrink_side<V>(table: &mut SideTable<V>) {
    if table.capacity() > 1024 && table.len() < table.capacity() / 4 {
        table.shrink_to(table.len() * 2);
    }
}

/// How often a worker with paused publishers checks whether the hub caught up.
const PAUSED_RECHECK: Duration = Duration::from_millis(10);
/// Pooled buffers kept per worker.
const POOL_MAX: usize = 1024;

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    /// `None` once a drain has started.
    listener: Option<TcpListener>,
    drain: Option<drain::Drain>,
    conns: Slab<Conn>,
    shared: Arc<Shared>,
    /// The configuration as of the last reload this worker picked up, and its version
    /// (`shared.live`; checked once per turn of the loop).
    config: Arc<Config>,
    config_version: u64,
    timers: TimerWheel,
    due: Vec<Entry>,
    pool: BufPool,
    read_buf: Vec<u8>,
    /// Where HTTP answers are written before they are sent.
    scratch: Vec<u8>,
    /// Where a session writes the control frames it owes (pongs, close frames, pings).
    ctl: Vec<u8>,
    /// Output owed to the connection whose input is being processed, written once per read.
    cork: Vec<u8>,
    /// Where an outbox gathers small queued segments to send them with one `send`.
    gather: Vec<u8>,
    corked: Option<usize>,
    compressor: Compressor,
    epoch: Instant,
    now: u32,
    /// Ticks of the handshake and linger deadlines.
    handshake_ticks: u32,
    /// Keep-alive and close deadlines of open sessions, in ticks.
    timeouts: Timeouts,
    generations: Generations,
    /// Connections that used up their read budget and still have input.
    backlog: Vec<ConnId>,
    /// Steps left in the turn of the connection being read (see `sockets::STEPS_PER_TURN`).
    steps_left: u32,
    /// Accepting after EMFILE/ENFILE: the retry timer, the reserve descriptor.
    accept: accept::AcceptState,
    /// Published messages from the hub.
    mailbox: Inbox,
    /// Connections with frames queued in the current delivery batch.
    batch: Vec<ConnId>,
    /// Publish times of the batch's messages, with their deliveries (for the histogram).
    batch_times: Vec<(Instant, u64)>,
    /// When the last delivery batch was written, and when the pending one is due (see
    /// `Worker::write_batch_when_due`); messages queued since the last write.
    last_flush: Instant,
    flush_due: Option<Instant>,
    batch_messages: usize,
    /// Chat connections not read while the hub is congested.
    hub_paused: Vec<ConnId>,
    /// Side tables, by slab slot, for what only some connections need for a while (kept out
    /// of `Conn` so an idle connection does not pay for them; an entry goes when its
    /// connection is reaped):
    /// received bytes not consumed yet (part of a request head or frame that spans reads),
    partial_input: SideTable<Vec<u8>>,
    /// messages that span reads,
    partial_msgs: SideTable<Vec<u8>>,
    /// the topics of a `/ws` connection after its first,
    more_topics: SideTable<Vec<TopicId>>,
    /// each connection's address, while `--max-conns-per-ip` is on,
    peer_ips: SideTable<std::net::IpAddr>,
    /// when a connection still in its request head was accepted,
    accepted_at: SideTable<Instant>,
    /// what a connection admitted with a token may do, until when (tokens on only),
    auth: SideTable<auth::Authorized>,
    /// and the allowance of new topics of a connection that has created one.
    topic_quota: SideTable<quota::Bucket>,
    /// Command processes (`/ws/cmd/..`), with their own side table by slot.
    procs: commands::Procs,
    /// and each connection's TLS state, with `--tls-cert` (boxed: a few KiB each).
    tls: SideTable<Box<TlsConn>>,
    /// The buffers TLS connections borrow while one of them is processed.
    tls_scratch: TlsScratch,
    /// The last TLS read was short only because it used up its budget of socket reads.
    tls_more: bool,
    /// This worker's subscriptions.
    local: LocalTopics,
    /// When this worker next looks for idle topics to forget (`--topic-ttl`).
    next_topic_sweep: Instant,
    due_subs: Vec<Sub>,
    /// Empty outboxes, reused with their queue's capacity. Kept boxed because a connection
    /// holds its outbox as one pointer (`Conn` stays small), so reuse moves no allocation.
    #[expect(
        clippy::vec_box,
        reason = "connections hold outboxes boxed; the pool hands the boxes back"
    )]
    outboxes: Vec<Box<Outbox>>,
    /// Requests waiting for the cluster bus, by their number ([`cluster`]).
    waits: HashMap<u64, cluster::Wait>,
    next_wait: u64,
    /// and, with a bus, the `POST /publish` answers a connection is owed, in request order.
    publishes: SideTable<std::collections::VecDeque<cluster::Owed>>,
    /// Topic names this worker published to through the bus ([`cluster`]).
    bus_names: std::collections::HashSet<Box<str>>,
    /// Connections reaped since this worker last gave free heap pages back (see
    /// [`Worker::trim_after_mass_close`]).
    reaped_since_trim: usize,
}

/// A worker returns free heap pages to the kernel once at least this many connections, and
/// at least as many as remain open, were reaped since it last did.
const TRIM_AFTER_REAPS: usize = 256;

impl Worker {
    pub fn new(
        id: usize,
        listener: StdListener,
        shared: Arc<Shared>,
    ) -> io::Result<(Worker, Mailbox)> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (to_worker, mailbox) = mailbox::mailbox(waker);
        let cfg = &shared.config;
        // Reserve the slab for this worker's share of connections up front: the pages are only
        // committed when touched, so the reservation costs no resident memory, and the slab never
        // reallocates (a reallocation would briefly need twice the memory).
        let per_worker = (cfg.max_conns / cfg.workers.max(1) + 64).min(1 << 20);
        let worker = Worker {
            id,
            poll,
            listener: Some(listener),
            drain: None,
            conns: Slab::with_capacity(per_worker),
            timers: TimerWheel::default(),
            due: Vec::new(),
            pool: BufPool::new(POOL_MAX),
            read_buf: vec![0; READ_BUF],
            scratch: Vec::new(),
            ctl: Vec::with_capacity(256),
            cork: Vec::with_capacity(64 * 1024),
            gather: Vec::with_capacity(crate::server::outbox::GATHER_MAX),
            corked: None,
            compressor: Compressor::new(&cfg.deflate),
            epoch: Instant::now(),
            now: 1,
            handshake_ticks: timers::deadline_ticks(cfg.handshake_timeout),
            timeouts: timers::session_timeouts(cfg),
            generations: Generations::default(),
            backlog: Vec::new(),
            steps_left: 0,
            accept: accept::AcceptState::new(),
            mailbox,
            batch: Vec::new(),
            batch_times: Vec::new(),
            last_flush: Instant::now(),
            flush_due: None,
            batch_messages: 0,
            hub_paused: Vec::new(),
            partial_input: SideTable::default(),
            partial_msgs: SideTable::default(),
            more_topics: SideTable::default(),
            peer_ips: SideTable::default(),
            accepted_at: SideTable::default(),
            auth: SideTable::default(),
            topic_quota: SideTable::default(),
            procs: commands::Procs::default(),
            tls: SideTable::default(),
            tls_scratch: TlsScratch::default(),
            tls_more: false,
            local: LocalTopics::default(),
            next_topic_sweep: Instant::now(),
            due_subs: Vec::new(),
            outboxes: Vec::new(),
            reaped_since_trim: 0,
            waits: HashMap::new(),
            next_wait: 0,
            publishes: SideTable::default(),
            bus_names: std::collections::HashSet::new(),
            config: shared.live.current(),
            config_version: shared.live.version(),
            shared,
        };
        Ok((worker, to_worker))
    }

    /// Takes the reloaded configuration if there is a new one (`shared.live`).
    fn pick_up_reload(&mut self) {
        let version = self.shared.live.version();
        if version == self.config_version {
            return;
        }
        self.config = self.shared.live.current();
        self.config_version = version;
        self.handshake_ticks = timers::deadline_ticks(self.config.handshake_timeout);
        self.timeouts = timers::session_timeouts(&self.config);
    }

    fn stats(&self) -> &WorkerStats {
        self.shared.stats.worker(self.id)
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            // Never sleep while the hub has posted messages this worker has not delivered
            // (some may still be on their way into the channel; see `topics::mailbox`).
            let timeout = if self.backlog.is_empty() && !self.mailbox.is_pending() {
                let timer = self
                    .timers
                    .ticks_to_next()
                    .map(|t| self.until_tick(self.timers.current() + t));
                let flush = self
                    .flush_due
                    .map(|at| at.saturating_duration_since(Instant::now()))
                    // Paused publishers wait on other workers' backlogs: look again soon.
                    .or((!self.hub_paused.is_empty()).then_some(PAUSED_RECHECK));
                let procs = self.commands_timeout();
                [
                    timer,
                    flush,
                    self.drain_timeout(),
                    self.accept.retry_in(),
                    procs,
                ]
                .into_iter()
                .flatten()
                .min()
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("worker {}: poll failed: {e}", self.id);
                return;
            }
            if self.shared.shutdown.load(Ordering::Relaxed) {
                self.shutdown();
                return;
            }
            if self.drain.is_none() && self.shared.draining.load(Ordering::Relaxed) {
                self.start_drain();
            }
            self.pick_up_reload();
            self.now = self.tick_now();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(true),
                    WAKER => {}
                    t if commands::is_process_token(t) => self.process_event(t),
                    t => {
                        let closed = ev.is_read_closed() || ev.is_error();
                        let readable = ev.is_readable() || closed;
                        let id = ConnId::from_token(t);
                        self.conn_event(id, readable, ev.is_writable(), closed);
                    }
                }
            }
            if self.accept.retry_due() {
                self.accept(false);
            }
            self.drain_bus_replies();
            self.drain_mailbox();
            for id in mem::take(&mut self.backlog) {
                if self.is_live(id) {
                    self.conns[id.slot()].backlogged = false;
                    self.read_ready(id.slot(), false);
                    self.reap(id.slot());
                }
            }
            self.run_ready_commands();
            self.expire_timers();
            self.sweep_topics();
            self.run_command_timers();
            self.trim_after_mass_close();
            if self.drain.is_some() && self.drain_step() {
                return;
            }
        }
    }

    /// Forgets idle topics, at most once a second per worker and only when it is awake anyway
    /// (creating a topic does it too), so that their history is freed without new topics.
    fn sweep_topics(&mut self) {
        let now = Instant::now();
        if now >= self.next_topic_sweep {
            self.next_topic_sweep = now + Duration::from_secs(1);
            self.shared.hub.expire_idle();
        }
    }

    fn is_live(&self, id: ConnId) -> bool {
        self.conns
            .get(id.slot())
            .is_some_and(|c| c.generation == id.generation)
    }

    fn conn_event(&mut self, id: ConnId, readable: bool, writable: bool, read_closed: bool) {
        if !self.is_live(id) {
            return;
        }
        let key = id.slot();
        if writable {
            self.on_writable(key);
        }
        if readable {
            self.read_ready(key, read_closed);
        }
        self.reap(key);
    }

    /// Marks a connection finished; [`Worker::reap`] removes it at the end of the event.
    fn kill(&mut self, key: usize) {
        self.conns[key].dead = true;
    }

    /// Removes the connection if it is finished: the one place a connection leaves the slab.
    fn reap(&mut self, key: usize) {
        if !self.conns.get(key).is_some_and(|c| c.dead) {
            return;
        }
        let conn = self.conns.remove(key);
        let id = conn.id(key);
        if let Phase::Open(ws) = conn.phase {
            self.end_ws(id, ws);
        }
        if let Some(buf) = self.partial_input.remove(&key) {
            self.pool.put(buf);
        }
        if let Some(ip) = self.peer_ips.remove(&key) {
            self.shared.per_ip.remove(ip);
        }
        if self.accepted_at.remove(&key).is_some() {
            shrink_side(&mut self.accepted_at);
        }
        if self.auth.remove(&key).is_some() {
            shrink_side(&mut self.auth);
        }
        if self.publishes.remove(&key).is_some() {
            shrink_side(&mut self.publishes);
        }
        if self.topic_quota.remove(&key).is_some() {
            shrink_side(&mut self.topic_quota);
        }
        if let Some(out) = conn.out {
            out.recycle(&mut self.pool);
        }
        self.tls_reap(key);
        self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
        self.reaped_since_trim += 1;
        // Dropping the stream closes the socket, which also removes it from the epoll set.
    }

    /// After many connections closed (relative to those still open), gives the free pages of
    /// the heap back to the kernel: what closed connections freed (inflate windows, buffers) is
    /// otherwise kept by the allocator, scattered between live allocations, and the process
    /// stays at its peak. Rare by construction: under steady churn it runs once per "all the
    /// open connections were replaced".
    fn trim_after_mass_close(&mut self) {
        if self.reaped_since_trim >= TRIM_AFTER_REAPS.max(self.conns.len()) {
            self.reaped_since_trim = 0;
            crate::sys::release_free_memory();
            WorkerStats::add(&self.stats().heap_trims_total, 1);
        }
    }

    /// Ends the current phase: the queued bytes go out, then the write side is shut and the
    /// connection waits (close grace) for the peer to close.
    fn linger(&mut self, key: usize) {
        self.linger_as(key, false);
    }

    /// Ends the WebSocket after its close handshake completed (the peer's Close frame arrived,
    /// ours is written or queued): a plain connection closes once its output drains.
    fn close_after_handshake(&mut self, key: usize) {
        self.linger_as(key, true);
    }

    fn linger_as(&mut self, key: usize, handshake_done: bool) {
        self.uncork(key);
        let conn = &mut self.conns[key];
        let id = conn.id(key);
        if let Phase::Open(ws) = mem::replace(&mut conn.phase, Phase::Linger { handshake_done }) {
            self.end_ws(id, ws);
        }
        self.conns[key].since = self.now;
        self.shut_write_when_drained(key);
        self.arm_timer(key);
    }

    /// Says goodbye (1001) to every open WebSocket, best effort, and drops every connection.
    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_ws(
                key,
                crate::proto::CloseCode::GOING_AWAY,
                "server shutting down",
            );
            self.kill(key);
            self.reap(key);
        }
        self.kill_all_commands();
    }
}
