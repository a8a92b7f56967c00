//! One event-loop thread's worth of clients: a mio `Poll`, a `Slab` of connections, and the
//! scenario's per-connection behaviour.
//!
//! A connection goes Connecting -> Handshaking -> Open -> Closing and is then removed, counted
//! either as a clean close or as a failure with its cause. The thread itself goes through the
//! run's phases (see [`Phase`]): it opens its share of connections at its share of the connect
//! rate, reports "ramped", waits for the controller to say "run", drives the scenario, drains
//! (waits for the last echoes or deliveries) when told, closes every connection with a close
//! handshake and returns what it measured.
//!
//! Edge-triggered rules live here: each socket is registered once for reading and writing; a
//! readable socket is read until `WouldBlock` or a short read; every byte owed to a connection
//! during one read (echo replies, pongs) is gathered in one per-thread cork buffer and written
//! with one syscall, and only what the socket did not take is kept in the connection's own
//! buffer. Reads go into one per-thread buffer; a connection keeps input only while a frame is
//! incomplete. So the hot path does not allocate per message.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use gateway::proto::close::encode_close_payload;
use gateway::proto::frame::write_frame;
use gateway::proto::handshake::{
    ClientHandshakeError, client_key, parse_client_response, write_client_request,
};
use gateway::proto::{CloseCode, Event, MessageKind, OpCode, Reader, Role};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use crate::args::{Config, Scenario};
use crate::clock::now_ns;
use crate::payload::{self, Delivery, SeqTracker};
use crate::stats::Results;

/// The one read buffer of a thread.
const READ_BUF: usize = 64 * 1024;
/// Largest message accepted from the server.
const MAX_MESSAGE: usize = 16 << 20 | 1024;
/// Longest poll wait: how quickly a thread notices a phase change from the controller.
const TICK: Duration = Duration::from_millis(5);
/// A connection's input buffer is given back when it empties if it grew past this.
const INBUF_KEEP: usize = 4096;

/// The run's phases, as the controller announces them to every thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Open connections; then wait.
    Ramp = 0,
    /// Every connection in the run is open: drive the scenario.
    Run = 1,
    /// Stop sending; wait for the last echoes or deliveries, then close.
    Drain = 2,
    /// Close everything now (the controller gave up or went away).
    Abort = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Ramp,
            1 => Phase::Run,
            2 => Phase::Drain,
            _ => Phase::Abort,
        }
    }
}

/// Counters a thread publishes for the live progress line, read by the controller.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Live {
    pub open: AtomicU64,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub sent: AtomicU64,
    pub verified: AtomicU64,
    pub deliveries: AtomicU64,
    pub ramped: AtomicBool,
    pub finished: AtomicBool,
}

/// What the controller and the threads of one process share.
#[derive(Debug)]
pub struct Control {
    phase: AtomicU8,
    /// Fanout: the last sequence number published, or `u64::MAX` when none was.
    last_seq: AtomicU64,
    pub live: Vec<Live>,
}

impl Control {
    pub fn new(threads: usize) -> Control {
        Control {
            phase: AtomicU8::new(Phase::Ramp as u8),
            last_seq: AtomicU64::new(u64::MAX),
            live: (0..threads).map(|_| Live::default()).collect(),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase` (never backwards). `last_seq` is set before the phase, so a thread that
    /// sees Drain also sees it.
    pub fn set_phase(&self, phase: Phase, last_seq: Option<u64>) {
        if let Some(s) = last_seq {
            self.last_seq.store(s, Ordering::Release);
        }
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }

    fn last_seq(&self) -> Option<u64> {
        match self.last_seq.load(Ordering::Acquire) {
            u64::MAX => None,
            s => Some(s),
        }
    }
}

/// Which connections a thread opens and how fast.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    /// Thread number within the process (its `Live` slot).
    pub slot: usize,
    /// Global index of the first connection (source addresses and payloads depend on it).
    pub first: usize,
    pub count: usize,
    /// Connections per second for this thread; 0 = unlimited.
    pub rate: f64,
    pub max_pending: usize,
}

#[derive(Debug)]
enum State {
    Connecting,
    /// The upgrade request is out; waiting for the 101. Holds the key to check the answer.
    Handshaking(Box<str>),
    Open,
    /// Our close frame is out; waiting for the server's close frame and end of stream.
    Closing {
        acked: bool,
    },
}

/// One client connection.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    generation: u32,
    index: u32,
    state: State,
    started_ns: u64,
    opened: bool,
    reader: Reader,
    /// Received bytes not consumed yet (only while a frame is incomplete).
    inbuf: Vec<u8>,
    /// The message being assembled.
    msg: Vec<u8>,
    /// Output the socket did not take yet.
    out: Vec<u8>,
    /// Echo: messages sent and echoes verified.
    sent: u64,
    recvd: u64,
    /// Fanout: sequence numbers seen.
    seq: SeqTracker,
    subscriber: bool,
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    Clean,
    Failed(Cow<'static, str>),
}

fn fail(cause: impl Into<Cow<'static, str>>) -> End {
    End::Failed(cause.into())
}

/// Where a thread is in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    Ramping,
    Ramped,
    Running,
    Draining { until: u64 },
    Closing { until: u64 },
    Finished,
}

/// xorshift64*: mask keys and handshake keys need no cryptographic strength here.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn mask(&mut self) -> [u8; 4] {
        (self.next() as u32).to_le_bytes()
    }

    fn key(&mut self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.next().to_le_bytes());
        k[8..].copy_from_slice(&self.next().to_le_bytes());
        k
    }
}

/// Everything of a thread but its connections, so both can be borrowed at once.
#[derive(Debug)]
struct Ctx {
    cfg: Arc<Config>,
    control: Arc<Control>,
    share: Share,
    results: Results,
    cork: Vec<u8>,
    payload: Vec<u8>,
    rng: Rng,
    /// Echo: whether to send the next message when an echo arrives.
    sending: bool,
    /// Echo: messages sent and not yet answered, over all connections.
    inflight: u64,
    open: u64,
    /// Connections in their TCP or WebSocket handshake.
    pending: usize,
    started: usize,
    verified_at_run: u64,
}

/// One event-loop thread.
#[derive(Debug)]
pub struct Engine {
    poll: Poll,
    conns: Slab<Conn>,
    ctx: Ctx,
    next_generation: u32,
    /// Connect + handshake deadlines in start order (all have the same timeout, so FIFO).
    deadlines: VecDeque<(usize, u32, u64)>,
    read_buf: Vec<u8>,
    local: Local,
    ramp_start: u64,
    last_drain_check: u64,
}

fn token(key: usize, generation: u32) -> Token {
    Token(((generation as usize) << 32) | key)
}

fn untoken(t: Token) -> (usize, u32) {
    (t.0 & 0xffff_ffff, (t.0 >> 32) as u32)
}

impl Engine {
    pub fn new(cfg: Arc<Config>, control: Arc<Control>, share: Share) -> io::Result<Engine> {
        let seed = now_ns()
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ (share.first as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Ok(Engine {
            poll: Poll::new()?,
            conns: Slab::with_capacity(share.count),
            ctx: Ctx {
                cfg,
                control,
                share,
                results: Results::default(),
                cork: Vec::with_capacity(64 * 1024),
                payload: Vec::new(),
                rng: Rng(seed | 1),
                sending: false,
                inflight: 0,
                open: 0,
                pending: 0,
                started: 0,
                verified_at_run: 0,
            },
            next_generation: 0,
            deadlines: VecDeque::new(),
            read_buf: vec![0; READ_BUF],
            local: Local::Ramping,
            ramp_start: now_ns(),
            last_drain_check: 0,
        })
    }

    /// Runs the thread's part of the run to the end and returns what it measured.
    pub fn run(mut self) -> Results {
        let mut events = Events::with_capacity(1024);
        self.ramp_start = now_ns();
        loop {
            let now = now_ns();
            self.advance(now);
            self.expire(now);
            self.publish();
            if self.local == Local::Finished {
                break;
            }
            let timeout = self.poll_timeout(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Without a poller nothing more can be measured: fail what is left.
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.finish(key, fail(format!("loadgen: epoll_wait failed: {e}")));
                }
                self.local = Local::Finished;
                continue;
            }
            for ev in events.iter() {
                let (key, generation) = untoken(ev.token());
                if self
                    .conns
                    .get(key)
                    .is_none_or(|c| c.generation != generation)
                {
                    continue;
                }
                let hup = ev.is_read_closed() || ev.is_error();
                let readable = ev.is_readable() || hup;
                self.on_event(key, readable, hup, ev.is_writable() || ev.is_error());
            }
        }
        self.publish();
        self.ctx.control.live[self.ctx.share.slot]
            .finished
            .store(true, Ordering::Release);
        self.ctx.results
    }

    /// Follows the controller's phase and this thread's own progress.
    fn advance(&mut self, now: u64) {
        let phase = self.ctx.control.phase();
        if phase == Phase::Abort && !matches!(self.local, Local::Closing { .. } | Local::Finished) {
            self.begin_close(now);
        }
        match self.local {
            Local::Ramping => {
                self.start_connections(now);
                if self.ctx.started == self.ctx.share.count && self.ctx.pending == 0 {
                    self.ctx.results.ramp_s = crate::clock::secs(self.ramp_start, now);
                    self.ctx.control.live[self.ctx.share.slot]
                        .ramped
                        .store(true, Ordering::Release);
                    self.local = Local::Ramped;
                }
            }
            Local::Ramped if phase >= Phase::Run => self.begin_run(now),
            Local::Running if phase >= Phase::Drain => {
                let c = &mut self.ctx.results.counts;
                c.verified_in_run = c.verified - self.ctx.verified_at_run;
                self.ctx.sending = false;
                self.local = Local::Draining {
                    until: now + self.ctx.cfg.timeout.as_nanos() as u64,
                };
            }
            Local::Draining { until } => {
                if self.drained(now) {
                    self.begin_close(now);
                } else if now >= until {
                    if self.ctx.inflight > 0 {
                        let n = self.ctx.inflight;
                        self.ctx.results.counts.unanswered += n;
                        self.ctx
                            .results
                            .failures
                            .add("echo: unanswered when the drain timed out", n);
                        self.ctx.inflight = 0;
                    }
                    self.begin_close(now);
                }
            }
            Local::Closing { until } => {
                if self.conns.is_empty() {
                    self.local = Local::Finished;
                } else if now >= until {
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        self.finish(key, fail("close: no close handshake before the timeout"));
                    }
                    self.local = Local::Finished;
                }
            }
            _ => {}
        }
    }

    fn begin_run(&mut self, now: u64) {
        self.local = Local::Running;
        self.ctx.verified_at_run = self.ctx.results.counts.verified;
        match self.ctx.cfg.scenario {
            Scenario::Connect => {}
            Scenario::Fanout => {
                for (_, c) in self.conns.iter_mut() {
                    if matches!(c.state, State::Open) {
                        c.subscriber = true;
                        self.ctx.results.counts.subscribers += 1;
                    }
                }
            }
            Scenario::Echo => {
                self.ctx.sending = true;
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    let conn = &mut self.conns[key];
                    if !matches!(conn.state, State::Open) {
                        continue;
                    }
                    for _ in 0..self.ctx.cfg.pipeline {
                        self.ctx.send_echo(conn, now);
                    }
                    if let Err(end) = self.ctx.flush_cork(conn) {
                        self.finish(key, end);
                    }
                }
            }
        }
    }

    /// Whether the last echoes or deliveries are in.
    fn drained(&mut self, now: u64) -> bool {
        match self.ctx.cfg.scenario {
            Scenario::Connect => true,
            Scenario::Echo => self.ctx.inflight == 0,
            Scenario::Fanout => {
                // A scan of every subscriber: done at most every 10 ms.
                if now < self.last_drain_check + 10_000_000 {
                    return false;
                }
                self.last_drain_check = now;
                match self.ctx.control.last_seq() {
                    None => true,
                    Some(last) => self
                        .conns
                        .iter()
                        .all(|(_, c)| !c.subscriber || c.seq.has_seen(last)),
                }
            }
        }
    }

    /// Sends a close frame on every open connection; the rest is done by events.
    fn begin_close(&mut self, now: u64) {
        self.ctx.sending = false;
        self.local = Local::Closing {
            until: now + self.ctx.cfg.timeout.as_nanos() as u64,
        };
        let mut payload = [0u8; 125];
        let n = encode_close_payload(&mut payload, CloseCode::NORMAL, "");
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            match conn.state {
                State::Open => {
                    let mask = self.ctx.rng.mask();
                    write_frame(
                        &mut self.ctx.cork,
                        true,
                        OpCode::Close,
                        false,
                        Some(mask),
                        &payload[..n],
                    );
                    conn.state = State::Closing { acked: false };
                    if let Err(end) = self.ctx.flush_cork(conn) {
                        self.finish(key, end);
                    }
                }
                State::Connecting | State::Handshaking(_) => {
                    self.finish(key, fail("aborted before the handshake finished"));
                }
                State::Closing { .. } => {}
            }
        }
    }

    /// Starts as many connections as the rate and the pending limit allow.
    fn start_connections(&mut self, now: u64) {
        let share = self.ctx.share;
        let allowed = if share.rate > 0.0 {
            let due = (now - self.ramp_start) as f64 * share.rate / 1e9;
            share.count.min(due as usize + 1)
        } else {
            share.count
        };
        while self.ctx.started < allowed && self.ctx.pending < share.max_pending {
            let index = share.first + self.ctx.started;
            self.ctx.started += 1;
            self.start_one(index, now);
        }
    }

    fn start_one(&mut self, index: usize, now: u64) {
        let cfg = &self.ctx.cfg;
        self.ctx.results.counts.attempted += 1;
        let src = cfg.target.is_loopback_v4().then(|| {
            // 127.0.0.1, .2, ...: each source address has its own ephemeral ports.
            Ipv4Addr::new(127, 0, 0, (1 + index / cfg.per_addr) as u8)
        });
        let mut stream = match open_socket(cfg.target.addr, src) {
            Ok(s) => s,
            Err(e) => {
                self.ctx.results.counts.failed += 1;
                self.ctx.results.failures.add(&connect_cause(&e), 1);
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token(key, generation),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.ctx.results.counts.failed += 1;
            self.ctx
                .results
                .failures
                .add(&format!("loadgen: epoll registration failed: {e}"), 1);
            return;
        }
        entry.insert(Conn {
            stream,
            generation,
            index: index as u32,
            state: State::Connecting,
            started_ns: now,
            opened: false,
            reader: Reader::new(Role::Client, MAX_MESSAGE, None),
            inbuf: Vec::new(),
            msg: Vec::new(),
            out: Vec::new(),
            sent: 0,
            recvd: 0,
            seq: SeqTracker::default(),
            subscriber: false,
        });
        self.ctx.pending += 1;
        self.deadlines
            .push_back((key, generation, now + cfg.timeout.as_nanos() as u64));
    }

    /// Fails connections whose connect or handshake took longer than the timeout.
    fn expire(&mut self, now: u64) {
        while let Some(&(key, generation, at)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            match conn.state {
                State::Connecting => self.finish(key, fail("connect: timed out")),
                State::Handshaking(_) => self.finish(key, fail("handshake: timed out")),
                _ => {}
            }
        }
    }

    fn poll_timeout(&self, now: u64) -> Duration {
        if self.local == Local::Ramping
            && self.ctx.started < self.ctx.share.count
            && self.ctx.pending < self.ctx.share.max_pending
            && self.ctx.share.rate > 0.0
        {
            let next =
                self.ramp_start + (self.ctx.started as f64 * 1e9 / self.ctx.share.rate) as u64;
            return Duration::from_nanos(next.saturating_sub(now)).min(TICK);
        }
        TICK
    }

    fn publish(&self) {
        let live = &self.ctx.control.live[self.ctx.share.slot];
        let c = &self.ctx.results.counts;
        live.open.store(self.ctx.open, Ordering::Relaxed);
        live.connected.store(c.connected, Ordering::Relaxed);
        live.failed.store(c.failed, Ordering::Relaxed);
        live.sent.store(c.sent, Ordering::Relaxed);
        live.verified.store(c.verified, Ordering::Relaxed);
        live.deliveries.store(c.deliveries, Ordering::Relaxed);
    }

    fn on_event(&mut self, key: usize, readable: bool, hup: bool, writable: bool) {
        if matches!(self.conns[key].state, State::Connecting) {
            match self.check_connected(key) {
                Ok(true) => {}
                Ok(false) => return,
                Err(end) => return self.finish(key, end),
            }
        }
        if writable {
            let conn = &mut self.conns[key];
            if !conn.out.is_empty() {
                if let Err(end) = flush(conn) {
                    return self.finish(key, end);
                }
            }
        }
        if readable {
            if let Err(end) = self.on_readable(key, hup) {
                self.finish(key, end);
            }
        }
    }

    /// A connecting socket reported readiness: connected (and the upgrade request sent), still
    /// connecting (a spurious wake-up), or failed.
    fn check_connected(&mut self, key: usize) -> Result<bool, End> {
        let conn = &mut self.conns[key];
        if let Ok(Some(e)) | Err(e) = conn.stream.take_error() {
            return Err(fail(connect_cause(&e)));
        }
        match conn.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(fail(connect_cause(&e))),
        }
        let cfg = &self.ctx.cfg;
        let key_text = client_key(self.ctx.rng.key());
        write_client_request(
            &mut self.ctx.cork,
            &cfg.target.host,
            &cfg.target.path,
            &key_text,
            &[],
        );
        conn.state = State::Handshaking(key_text.into_boxed_str());
        self.ctx.flush_cork(conn)?;
        Ok(true)
    }

    /// Reads until `WouldBlock` (or a short read), processing each read as it comes.
    ///
    /// A short read means the socket is drained for now, and the next bytes will raise a new
    /// edge, except for an end of stream that came with the bytes just read: when the event
    /// says the peer closed (`hup`), reading goes on to `WouldBlock` or the end.
    fn on_readable(&mut self, key: usize, hup: bool) -> Result<(), End> {
        let mut buf = mem::take(&mut self.read_buf);
        let result = loop {
            let conn = &mut self.conns[key];
            match conn.stream.read(&mut buf) {
                Ok(0) => break Err(eof_end(conn)),
                Ok(n) => {
                    if let Err(end) = self.ctx.input(conn, &mut buf[..n]) {
                        break Err(end);
                    }
                    if n < buf.len() && !hup {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(io_end(conn, &e)),
            }
        };
        self.read_buf = buf;
        result
    }

    /// Removes a connection and counts how it ended.
    fn finish(&mut self, key: usize, end: End) {
        let conn = self.conns.remove(key);
        let ctx = &mut self.ctx;
        match conn.state {
            State::Connecting | State::Handshaking(_) => ctx.pending -= 1,
            State::Open | State::Closing { .. } => {}
        }
        if conn.opened {
            ctx.open -= 1;
        }
        let unanswered = conn.sent - conn.recvd;
        if unanswered > 0 {
            ctx.inflight -= unanswered;
            ctx.results.counts.unanswered += unanswered;
            ctx.results
                .failures
                .add("echo: unanswered when its connection ended", unanswered);
        }
        match end {
            End::Clean => ctx.results.counts.closed_clean += 1,
            End::Failed(cause) => {
                ctx.results.counts.failed += 1;
                ctx.results.failures.add(&cause, 1);
            }
        }
        // Dropping the stream closes the socket, which also takes it out of the epoll set.
    }
}

impl Ctx {
    /// Processes one read's worth of input for `conn`, then writes what is owed to it.
    fn input(&mut self, conn: &mut Conn, data: &mut [u8]) -> Result<(), End> {
        let now = now_ns();
        if let State::Handshaking(key) = &conn.state {
            conn.inbuf.extend_from_slice(data);
            let accepted = match parse_client_response(&conn.inbuf, key) {
                Ok(None) => return Ok(()),
                Ok(Some(a)) => a,
                Err(ClientHandshakeError::Status(s)) => {
                    return Err(fail(format!("handshake: HTTP {s}")));
                }
                Err(e) => return Err(fail(format!("handshake: {e}"))),
            };
            if accepted.deflate.is_some() {
                return Err(fail(
                    "handshake: server agreed to deflate, which was not offered",
                ));
            }
            self.results.handshake.record(now - conn.started_ns);
            self.results.counts.connected += 1;
            self.pending -= 1;
            self.open += 1;
            conn.opened = true;
            conn.state = State::Open;
            conn.inbuf.drain(..accepted.head_len);
            if conn.inbuf.is_empty() {
                return Ok(());
            }
            let mut buffered = mem::take(&mut conn.inbuf);
            let result = self.frames(conn, &mut buffered, now);
            return self.keep_rest(conn, buffered, result);
        }
        if conn.inbuf.is_empty() {
            let used = self.frames(conn, data, now);
            let used = match used {
                Ok(n) => n,
                Err(end) => {
                    self.flush_cork(conn)?;
                    return Err(end);
                }
            };
            conn.inbuf.extend_from_slice(&data[used..]);
        } else {
            // A frame was split across reads: complete it in the connection's own buffer.
            let mut buffered = mem::take(&mut conn.inbuf);
            buffered.extend_from_slice(data);
            let result = self.frames(conn, &mut buffered, now);
            self.keep_rest(conn, buffered, result)?;
        }
        self.flush_cork(conn)
    }

    /// After frames were taken from `buffered`, keeps the unconsumed rest in the connection.
    fn keep_rest(
        &mut self,
        conn: &mut Conn,
        mut buffered: Vec<u8>,
        result: Result<usize, End>,
    ) -> Result<(), End> {
        let used = match result {
            Ok(n) => n,
            Err(end) => {
                self.flush_cork(conn)?;
                return Err(end);
            }
        };
        buffered.drain(..used);
        if buffered.is_empty() && buffered.capacity() > INBUF_KEEP {
            buffered = Vec::new();
        }
        conn.inbuf = buffered;
        self.flush_cork(conn)
    }

    /// Takes every complete frame from `buf`; returns the bytes consumed.
    fn frames(&mut self, conn: &mut Conn, buf: &mut [u8], now: u64) -> Result<usize, End> {
        let mut pos = 0;
        let mut no_inflater = None;
        loop {
            let step = conn
                .reader
                .read(&mut buf[pos..], &mut conn.msg, &mut no_inflater)
                .map_err(|e| fail(format!("protocol error from the server: {e}")))?;
            pos += step.consumed;
            match step.event {
                None if step.consumed == 0 => return Ok(pos),
                None => {}
                Some(Event::Message(kind)) => {
                    let r = self.on_message(conn, kind, now);
                    conn.msg.clear();
                    r?;
                }
                Some(Event::Ping(p)) => {
                    let mask = self.rng.mask();
                    write_frame(&mut self.cork, true, OpCode::Pong, false, Some(mask), p);
                }
                Some(Event::Pong(_)) => {}
                Some(Event::Close(frame)) => match conn.state {
                    State::Closing { ref mut acked } => *acked = true,
                    _ => {
                        // The server closed first: answer it, and count why.
                        let code = frame.code.map_or(CloseCode::NORMAL, |c| c);
                        let cause = format!(
                            "closed by the server with code {}",
                            frame.code.map_or("(none)".to_string(), |c| c.0.to_string())
                        );
                        let mut payload = [0u8; 125];
                        let n = encode_close_payload(&mut payload, code, "");
                        let mask = self.rng.mask();
                        write_frame(
                            &mut self.cork,
                            true,
                            OpCode::Close,
                            false,
                            Some(mask),
                            &payload[..n],
                        );
                        return Err(fail(cause));
                    }
                },
            }
        }
    }

    fn on_message(&mut self, conn: &mut Conn, kind: MessageKind, now: u64) -> Result<(), End> {
        match self.cfg.scenario {
            Scenario::Connect => Ok(()),
            Scenario::Echo => {
                if conn.recvd >= conn.sent {
                    self.results.counts.mismatched += 1;
                    return Err(fail("echo: a message that was never sent"));
                }
                let expect = conn.recvd;
                conn.recvd += 1;
                self.inflight -= 1;
                let sent_ns = match (
                    kind,
                    payload::check_echo(&conn.msg, self.cfg.size, expect, conn.index),
                ) {
                    (MessageKind::Binary, Ok(t)) => t,
                    (MessageKind::Text, _) => {
                        self.results.counts.mismatched += 1;
                        return Err(fail("echo: text answer to a binary message"));
                    }
                    (_, Err(m)) => {
                        self.results.counts.mismatched += 1;
                        return Err(fail(m.cause()));
                    }
                };
                self.results.rtt.record(now.saturating_sub(sent_ns));
                self.results.counts.verified += 1;
                if self.sending {
                    self.send_echo(conn, now);
                }
                Ok(())
            }
            Scenario::Fanout => {
                let parsed = (kind == MessageKind::Text)
                    .then(|| payload::parse_fanout(&conn.msg))
                    .flatten()
                    .filter(|f| f.seq <= payload::MAX_SEQ);
                let Some(f) = parsed else {
                    self.results.counts.malformed += 1;
                    return Ok(());
                };
                self.results.counts.deliveries += 1;
                self.results.delivery.record(now.saturating_sub(f.due_ns));
                self.results
                    .delivery_uncorrected
                    .record(now.saturating_sub(f.sent_ns));
                match conn.seq.observe(f.seq) {
                    Delivery::First => {
                        let seq = f.seq as usize;
                        let per_seq = &mut self.results.per_seq;
                        if per_seq.len() <= seq {
                            per_seq.resize((seq + 1).max(per_seq.len() * 2), 0);
                        }
                        per_seq[seq] += 1;
                    }
                    Delivery::Duplicate => self.results.counts.duplicates += 1,
                }
                Ok(())
            }
        }
    }

    /// Queues the connection's next echo message in the cork.
    fn send_echo(&mut self, conn: &mut Conn, now: u64) {
        payload::write_echo(&mut self.payload, self.cfg.size, conn.sent, conn.index, now);
        let mask = self.rng.mask();
        write_frame(
            &mut self.cork,
            true,
            OpCode::Binary,
            false,
            Some(mask),
            &self.payload,
        );
        conn.sent += 1;
        self.inflight += 1;
        self.results.counts.sent += 1;
    }

    /// Writes the cork to `conn` (after anything it already had queued).
    fn flush_cork(&mut self, conn: &mut Conn) -> Result<(), End> {
        if self.cork.is_empty() {
            return Ok(());
        }
        if conn.out.is_empty() {
            let mut written = 0;
            let result = loop {
                match conn.stream.write(&self.cork[written..]) {
                    Ok(n) => {
                        written += n;
                        if written == self.cork.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(io_end(conn, &e)),
                }
            };
            if result.is_ok() {
                conn.out.extend_from_slice(&self.cork[written..]);
            }
            self.cork.clear();
            result
        } else {
            conn.out.extend_from_slice(&self.cork);
            self.cork.clear();
            flush(conn)
        }
    }
}

/// Writes what the connection has queued until the socket stops taking it.
fn flush(conn: &mut Conn) -> Result<(), End> {
    let mut written = 0;
    let result = loop {
        if written == conn.out.len() {
            break Ok(());
        }
        match conn.stream.write(&conn.out[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(io_end(conn, &e)),
        }
    };
    conn.out.drain(..written);
    if conn.out.is_empty() && conn.out.capacity() > INBUF_KEEP {
        conn.out = Vec::new();
    }
    result
}

fn eof_end(conn: &Conn) -> End {
    match conn.state {
        State::Closing { acked: true } => End::Clean,
        State::Closing { acked: false } => {
            fail("close: server ended the stream without a close frame")
        }
        State::Handshaking(_) => fail("handshake: server closed the connection before answering"),
        State::Connecting => fail("connect: closed by the server"),
        State::Open => fail("closed by the server without a close frame"),
    }
}

fn io_end(conn: &Conn, e: &io::Error) -> End {
    let phase = match conn.state {
        State::Connecting => return fail(connect_cause(e)),
        State::Handshaking(_) => "handshake",
        State::Open => "open",
        State::Closing { .. } => "close",
    };
    match e.raw_os_error() {
        Some(libc::ECONNRESET) => fail(format!("{phase}: reset by the server")),
        Some(libc::EPIPE) => fail(format!("{phase}: broken pipe")),
        _ => fail(format!("{phase}: {e}")),
    }
}

/// A connect error as a failure cause that groups well.
fn connect_cause(e: &io::Error) -> Cow<'static, str> {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connect: refused".into(),
        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => {
            "connect: no free source port (EADDRNOTAVAIL); lower --per-addr".into()
        }
        Some(libc::EMFILE | libc::ENFILE) => "connect: open-file limit reached (EMFILE)".into(),
        Some(libc::ETIMEDOUT) => "connect: timed out".into(),
        Some(libc::ECONNRESET) => "connect: reset".into(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => "connect: unreachable".into(),
        _ => format!("connect: {e}").into(),
    }
}

/// A non-blocking socket with its connect under way, bound to `src` when given.
fn open_socket(target: SocketAddr, src: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    if let Some(ip) = src {
        set_bind_address_no_port(&s);
        s.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    }
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// IP_BIND_ADDRESS_NO_PORT: a socket bound to a source address gets its port at connect time,
/// chosen for the whole 4-tuple, instead of at bind time from the ports free for every
/// destination. Best effort: without it binding still works, with fewer ports.
fn set_bind_address_no_port(s: &Socket) {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a valid socket owned by `s`; the option value is a c_int that lives for
    // the duration of the call, and its size is passed alongside.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_generation() {
        assert_eq!(untoken(token(12345, 7)), (12345, 7));
        assert_eq!(untoken(token(0, u32::MAX)), (0, u32::MAX));
    }

    #[test]
    fn phases_never_go_back() {
        let c = Control::new(1);
        c.set_phase(Phase::Drain, Some(41));
        c.set_phase(Phase::Run, None);
        assert_eq!(c.phase(), Phase::Drain);
        assert_eq!(c.last_seq(), Some(41));
    }

    #[test]
    fn connect_errors_group_by_cause() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(connect_cause(&e), "connect: refused");
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(connect_cause(&e).contains("open-file limit"));
    }
}
