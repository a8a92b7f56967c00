//! One worker: a mio `Poll`, its listener, a `Slab` of connections, a buffer pool and a timer
//! wheel, all owned by one thread.
//!
//! Edge-triggered rules live here and nowhere else: sockets are registered once for reading and
//! writing; a readable event is read until `WouldBlock`, a short read, or the per-turn budget
//! (after which the connection goes on the backlog, so one busy peer cannot starve the rest); a
//! writable event drains the queued output. While the input of one read is processed, small
//! frames owed to that connection are corked into one per-worker buffer and written with one
//! syscall when the read is done; larger ones are written straight to the socket. Only what the
//! socket did not take is queued in the connection's [`Outbox`].
//!
//! Topic delivery, the publish API and the `/ws` protocol live in [`feeds`]; the file and log
//! feed sockets in [`sources`].

use std::io::{self, IoSlice, Read, Write};
use std::mem;
use std::net::{Shutdown, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::Shared;
mod delivery;
mod feeds;

use super::conn::{Conn, Phase, Ws};
use super::outbox::Outbox;
use super::pool::BufPool;
use super::stats::WorkerStats;
use super::timer::{self, Entry, TimerWheel};
use crate::http::{self, PlainContext, Route};
use crate::proto::close::encode_close_payload;
use crate::proto::handshake::{self, HandshakeError, Request, ServerPolicy};
use crate::proto::{
    CloseCode, CloseFrame, DeflateParams, Deflater, Event, HeaderBuf, MessageKind, OpCode,
    ProtocolError, Reader, Role,
};
use crate::topics::ToWorker;
use crate::topics::local::{LocalTopics, Sub};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// The one read buffer of the loop: every socket is read into it.
const READ_BUF: usize = 64 * 1024;
/// Reads per connection per turn before it yields to the others.
const READS_PER_TURN: usize = 8;
/// Pooled buffers kept per worker.
const POOL_MAX: usize = 1024;
/// Frames up to this size are corked; larger ones are written directly (after the cork).
const CORK_MAX: usize = 16 * 1024;
/// The scratch buffer is shrunk back to this after a large message.
const SCRATCH_KEEP: usize = 256 * 1024;

const RESPONSE_503: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 31\r\nConnection: close\r\n\r\nserver at its connection limit\n";

fn token(key: usize, generation: u32) -> Token {
    Token(((generation as usize) << 32) | key)
}

fn untoken(t: Token) -> (usize, u32) {
    (t.0 & 0xffff_ffff, (t.0 >> 32) as u32)
}

/// Deadlines in ticks, precomputed from the configuration.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    handshake: u32,
    ping: u32,
    pong: u32,
    grace: u32,
}

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    shared: Arc<Shared>,
    timers: TimerWheel,
    due: Vec<Entry>,
    pool: BufPool,
    read_buf: Vec<u8>,
    scratch: Vec<u8>,
    /// Output owed to the connection whose input is being processed, written once per read.
    cork: Vec<u8>,
    corked: Option<usize>,
    /// One compressor per window size; every message is compressed on its own
    /// (server_no_context_takeover), so connections share them.
    deflaters: [Option<Deflater>; 8],
    epoch: Instant,
    now: u32,
    deadlines: Deadlines,
    next_generation: u32,
    /// Connections that used up their read budget and still have input.
    backlog: Vec<(usize, u32)>,
    accept_errors: u64,
    /// Published messages from the hub.
    mailbox: Receiver<ToWorker>,
    /// This worker's subscriptions.
    local: LocalTopics,
    due_subs: Vec<Sub>,
    /// Empty outboxes, reused with their queue's capacity. Kept boxed because a connection
    /// holds its outbox as one pointer (`Conn` stays small), so reuse moves no allocation.
    #[expect(
        clippy::vec_box,
        reason = "connections hold outboxes boxed; the pool hands the boxes back"
    )]
    outboxes: Vec<Box<Outbox>>,
}

impl Worker {
    pub fn new(
        id: usize,
        listener: StdListener,
        shared: Arc<Shared>,
        mailbox: Receiver<ToWorker>,
    ) -> io::Result<(Worker, Arc<Waker>)> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let cfg = &shared.config;
        // Events are stamped with the tick they happened in, which may be nearly over; one tick
        // more keeps every deadline from firing early (they fire up to one tick late).
        let deadlines = Deadlines {
            handshake: timer::ticks(cfg.handshake_timeout) + 1,
            ping: timer::ticks(cfg.ping_interval) + 1,
            pong: timer::ticks(cfg.pong_timeout) + 1,
            grace: timer::ticks(cfg.close_grace) + 1,
        };
        // Reserve the slab for this worker's share of connections up front: the pages are only
        // committed when touched, so the reservation costs no resident memory, and the slab never
        // reallocates (a reallocation would briefly need twice the memory).
        let per_worker = (cfg.max_conns / cfg.workers.max(1) + 64).min(1 << 20);
        let worker = Worker {
            id,
            poll,
            listener,
            conns: Slab::with_capacity(per_worker),
            timers: TimerWheel::default(),
            due: Vec::new(),
            pool: BufPool::new(POOL_MAX),
            read_buf: vec![0; READ_BUF],
            scratch: Vec::new(),
            cork: Vec::with_capacity(64 * 1024),
            corked: None,
            deflaters: Default::default(),
            epoch: Instant::now(),
            now: 1,
            deadlines,
            next_generation: 0,
            backlog: Vec::new(),
            accept_errors: 0,
            mailbox,
            local: LocalTopics::default(),
            due_subs: Vec::new(),
            outboxes: Vec::new(),
            shared,
        };
        Ok((worker, waker))
    }

    fn stats(&self) -> &WorkerStats {
        self.shared.stats.worker(self.id)
    }

    fn tick_now(&self) -> u32 {
        (self.epoch.elapsed().as_nanos() / timer::TICK.as_nanos()) as u32 + 1
    }

    /// Time from now until the start of tick `at`.
    fn until_tick(&self, at: u32) -> Duration {
        let deadline = self.epoch + timer::TICK * (at - 1);
        deadline.saturating_duration_since(Instant::now())
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.backlog.is_empty() {
                self.timers
                    .ticks_to_next()
                    .map(|t| self.until_tick(self.timers.current() + t))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("gateway: worker {}: poll failed: {e}", self.id);
                return;
            }
            if self.shared.shutdown.load(Ordering::Relaxed) {
                self.shutdown();
                return;
            }
            self.now = self.tick_now();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    t => {
                        let (key, generation) = untoken(t);
                        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        self.conn_event(key, generation, readable, ev.is_writable());
                    }
                }
            }
            self.drain_mailbox();
            for (key, generation) in mem::take(&mut self.backlog) {
                if self.is_live(key, generation) {
                    self.read_ready(key);
                    self.reap(key);
                }
            }
            self.expire_timers();
        }
    }

    fn is_live(&self, key: usize, generation: u32) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.generation == generation)
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _peer)) => {
                    WorkerStats::add(&self.stats().accepted_total, 1);
                    let open = self.shared.open_conns.fetch_add(1, Ordering::Relaxed);
                    if open >= self.shared.config.max_conns {
                        self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
                        WorkerStats::add(&self.stats().refused_max_conns_total, 1);
                        refuse_at_capacity(&stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    assert!(key < u32::MAX as usize, "slab key fits the timer's u32");
                    self.next_generation = self.next_generation.wrapping_add(1).max(1);
                    let generation = self.next_generation;
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token(key, generation), interest)
                        .is_err()
                    {
                        self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                    entry.insert(Conn::new(stream, generation, self.now));
                    self.arm_timer(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the connection stays in the kernel's queue. Say so
                    // now and then, not on every attempt.
                    self.accept_errors += 1;
                    if self.accept_errors.is_power_of_two() {
                        eprintln!(
                            "gateway: worker {}: accept failed ({} times): {e}",
                            self.id, self.accept_errors
                        );
                    }
                    return;
                }
            }
        }
    }

    fn conn_event(&mut self, key: usize, generation: u32, readable: bool, writable: bool) {
        if !self.is_live(key, generation) {
            return;
        }
        if writable {
            self.flush(key);
        }
        if readable && self.is_live(key, generation) && !self.conns[key].dead {
            self.read_ready(key);
        }
        if self.is_live(key, generation) {
            self.reap(key);
        }
    }

    /// Removes the connection if a write failed on it.
    fn reap(&mut self, key: usize) {
        if self.conns.get(key).is_some_and(|c| c.dead) {
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        let conn = self.conns.remove(key);
        if let Phase::Open(ws) = conn.phase {
            self.end_ws(key, conn.generation, ws);
        }
        self.pool.put(conn.inbuf);
        if let Some(out) = conn.out {
            out.recycle(&mut self.pool);
        }
        self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
        // Dropping the stream closes the socket, which also removes it from the epoll set.
    }

    fn read_ready(&mut self, key: usize) {
        for _ in 0..READS_PER_TURN {
            let conn = &mut self.conns[key];
            if conn.peer_closed {
                return;
            }
            if conn.queued() > self.shared.config.max_queued {
                conn.paused = true;
                return;
            }
            let n = match conn.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    // The peer will send nothing more. Output it has not received yet (echoes,
                    // the close reply) still goes out: close once it has drained.
                    if conn.queued() == 0 {
                        self.close(key);
                    } else {
                        conn.peer_closed = true;
                        if matches!(conn.phase, Phase::Open(_)) {
                            self.linger(key);
                        }
                    }
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(key);
                    return;
                }
            };
            conn.last_rx = self.now;
            WorkerStats::add(&self.shared.stats.worker(self.id).bytes_in_total, n as u64);
            self.corked = Some(key);
            self.on_input(key, n);
            if self.conns.contains(key) {
                self.flush_cork(key);
            }
            self.corked = None;
            self.cork.clear();
            match self.conns.get(key) {
                Some(c) if !c.dead => {}
                _ => return,
            }
            if n < self.read_buf.len() {
                // A short read emptied the socket; the next edge will say when more arrives.
                return;
            }
        }
        let generation = self.conns[key].generation;
        self.backlog.push((key, generation));
    }

    /// Handles `n` fresh bytes in the read buffer, together with any kept from before.
    fn on_input(&mut self, key: usize, n: usize) {
        let mut rb = mem::take(&mut self.read_buf);
        if self.conns[key].inbuf.is_empty() {
            let used = self.process(key, &mut rb[..n]);
            if used < n {
                if let Some(conn) = self.conns.get_mut(key) {
                    if conn.inbuf.capacity() == 0 {
                        conn.inbuf = self.pool.get();
                    }
                    conn.inbuf.extend_from_slice(&rb[used..n]);
                }
            }
        } else {
            let mut pending = mem::take(&mut self.conns[key].inbuf);
            pending.extend_from_slice(&rb[..n]);
            let used = self.process(key, &mut pending);
            pending.drain(..used);
            match self.conns.get_mut(key) {
                Some(conn) => {
                    conn.inbuf = pending;
                    self.pool.release_if_empty(&mut conn.inbuf);
                }
                None => self.pool.put(pending),
            }
        }
        self.read_buf = rb;
    }

    /// Runs the input through the connection's phase; returns the bytes consumed.
    fn process(&mut self, key: usize, input: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns.get(key) else {
                return input.len();
            };
            if conn.dead {
                return input.len();
            }
            match conn.phase {
                Phase::Handshake => match self.handshake(key, &input[pos..]) {
                    0 => return pos,
                    n => pos += n,
                },
                Phase::Linger => return input.len(),
                Phase::Open(_) => return pos + self.process_frames(key, &mut input[pos..]),
            }
        }
    }

    /// Handles a request head if it is complete; returns the bytes consumed (0: need more).
    fn handshake(&mut self, key: usize, input: &[u8]) -> usize {
        let mut storage = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
        let req = match Request::parse(input, &mut storage) {
            Ok(None) => return 0,
            Ok(Some(req)) => req,
            Err(e) => {
                self.refuse(key, e);
                return input.len();
            }
        };
        let (route, param) = http::route(req.path());
        if route == Route::Publish {
            return self.publish_request(key, &req, param, input);
        }
        if !route.is_websocket() {
            if req.is_upgrade() {
                self.refuse_status(key, 404);
            } else {
                self.answer_plain(key, &req, route, param);
            }
            return input.len();
        }
        // A chat room is one topic segment.
        if route == Route::Chat && (param.contains('/') || !crate::topics::is_valid_topic(param)) {
            self.refuse_status(key, 404);
            return input.len();
        }
        // The room's topic, created now if new; refused while the hub holds its topic limit.
        let room = match route {
            Route::Chat => {
                let name = format!("chat/{param}");
                match self
                    .shared
                    .hub
                    .try_topic(&name, crate::topics::TopicKind::Stream)
                {
                    Some(id) => Some(id),
                    None => {
                        self.refuse_status(key, 503);
                        return input.len();
                    }
                }
            }
            _ => None,
        };
        // A file or log socket must name a configured feed.
        if matches!(route, Route::File | Route::Log) && !self.feed_configured(route, param) {
            self.refuse_status(key, 404);
            return input.len();
        }
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let origin_check = |origin: &str| cfg.allowed_origins.iter().any(|a| a == origin);
        let policy = ServerPolicy {
            subprotocols: &cfg.subprotocols,
            origin: if cfg.allowed_origins.is_empty() {
                None
            } else {
                Some(&origin_check)
            },
            deflate: cfg.deflate,
        };
        match handshake::accept(&req, &policy) {
            Ok(accepted) => {
                let mut resp = mem::take(&mut self.scratch);
                resp.clear();
                accepted.write_response(&mut resp);
                self.send_parts(key, &[&resp]);
                self.scratch = resp;
                self.open(key, route, accepted.deflate);
                match route {
                    Route::Chat => self.subscribe_chat(key, room.expect("chat rooms have a topic")),
                    Route::File | Route::Log => self.subscribe_feed(key, route, param, req.query()),
                    _ => {}
                }
                req.head_len
            }
            Err(e) => {
                self.refuse(key, e);
                input.len()
            }
        }
    }

    fn answer_plain(&mut self, key: usize, req: &Request<'_, '_>, route: Route, param: &str) {
        let shared = self.shared.clone();
        let metrics = || {
            shared
                .stats
                .render_prometheus(shared.open_conns.load(Ordering::Relaxed))
        };
        let topics = || shared.hub.snapshot();
        let file = |name: &str| feeds::file_view(&shared, name);
        let mut out = mem::take(&mut self.scratch);
        out.clear();
        let ctx = PlainContext {
            metrics: &metrics,
            topics: &topics,
            file: &file,
        };
        let status = http::respond(req, route, param, &ctx, &mut out);
        self.count_status(status);
        WorkerStats::add(&self.stats().http_requests_total, 1);
        self.send_parts(key, &[&out]);
        self.scratch = out;
        self.linger(key);
    }

    fn refuse(&mut self, key: usize, e: HandshakeError) {
        let mut out = mem::take(&mut self.scratch);
        out.clear();
        e.write_response(&mut out);
        self.count_status(e.status());
        self.send_parts(key, &[&out]);
        self.scratch = out;
        self.linger(key);
    }

    fn refuse_status(&mut self, key: usize, status: u16) {
        let mut out = mem::take(&mut self.scratch);
        out.clear();
        let body = format!(
            "{}\n",
            handshake::reason_phrase(status).to_ascii_lowercase()
        );
        handshake::write_http_response(
            &mut out,
            status,
            &[],
            "text/plain; charset=utf-8",
            body.as_bytes(),
            false,
        );
        self.count_status(status);
        self.send_parts(key, &[&out]);
        self.scratch = out;
        self.linger(key);
    }

    fn count_status(&self, status: u16) {
        let s = self.stats();
        let counter = match status {
            400 => &s.http_refused_400_total,
            401 => &s.http_refused_401_total,
            403 => &s.http_refused_403_total,
            413 => &s.http_refused_413_total,
            404 => &s.http_refused_404_total,
            405 => &s.http_refused_405_total,
            426 => &s.http_refused_426_total,
            431 => &s.http_refused_431_total,
            other if other >= 400 => &s.http_refused_other_total,
            _ => return,
        };
        WorkerStats::add(counter, 1);
    }

    fn open(&mut self, key: usize, route: Route, deflate: Option<DeflateParams>) {
        let cfg = &self.shared.config;
        let conn = &mut self.conns[key];
        conn.phase = Phase::Open(Ws {
            reader: Reader::new(
                Role::Server,
                cfg.max_message,
                deflate.map(|d| d.receiving(Role::Server)),
            ),
            msg: Vec::new(),
            inflater: None,
            send_deflate: deflate.map(|d| d.sending(Role::Server).0),
            route,
            topics: Vec::new(),
            close_sent: false,
        });
        conn.since = self.now;
        conn.last_rx = self.now;
        conn.last_ping = self.now;
        WorkerStats::add(&self.shared.stats.worker(self.id).ws_opened_total, 1);
        self.arm_timer(key);
    }

    /// Reads frames; returns the bytes consumed.
    fn process_frames(&mut self, key: usize, input: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            let conn = &mut self.conns[key];
            let Phase::Open(ws) = &mut conn.phase else {
                return input.len();
            };
            if conn.dead {
                return input.len();
            }
            if ws.msg.capacity() == 0 {
                ws.msg = self.pool.get();
            }
            let step = match ws
                .reader
                .read(&mut input[pos..], &mut ws.msg, &mut ws.inflater)
            {
                Ok(step) => step,
                Err(e) => {
                    self.fail(key, e);
                    return input.len();
                }
            };
            pos += step.consumed;
            match step.event {
                None if step.consumed == 0 => break,
                None => {}
                Some(Event::Message(kind)) => {
                    let msg = mem::take(&mut ws.msg);
                    let route = ws.route;
                    WorkerStats::add(&self.shared.stats.worker(self.id).messages_in_total, 1);
                    self.on_message(key, route, kind, &msg);
                    self.pool.put(msg);
                }
                Some(Event::Ping(payload)) if !ws.close_sent => {
                    self.send_parts(
                        key,
                        &[
                            HeaderBuf::new(OpCode::Pong, false, None, payload.len()).as_bytes(),
                            payload,
                        ],
                    );
                }
                Some(Event::Ping(_) | Event::Pong(_)) => {}
                Some(Event::Close(frame)) => {
                    self.on_close_frame(key, frame);
                    return input.len();
                }
            }
        }
        if let Phase::Open(ws) = &mut self.conns[key].phase {
            if ws.reader.is_between_messages() {
                self.pool.release_if_empty(&mut ws.msg);
            }
        }
        pos
    }

    fn on_message(&mut self, key: usize, route: Route, kind: MessageKind, payload: &[u8]) {
        match route {
            Route::Echo => self.send_message(key, kind, payload),
            Route::Chat => self.chat_message(key, kind, payload),
            Route::Multiplex => self.multiplex_message(key, kind, payload),
            // Only WebSocket routes reach the open phase.
            _ => {}
        }
    }

    /// Sends one data message, compressed when negotiated and worth it.
    fn send_message(&mut self, key: usize, kind: MessageKind, payload: &[u8]) {
        let Phase::Open(ws) = &self.conns[key].phase else {
            return;
        };
        if ws.close_sent {
            return;
        }
        let cfg = &self.shared.config.deflate;
        match ws.send_deflate {
            Some(bits) if payload.len() >= cfg.min_size => {
                let level = cfg.level;
                let mut z = mem::take(&mut self.scratch);
                z.clear();
                self.deflaters[usize::from(bits.clamp(8, 15) - 8)]
                    .get_or_insert_with(|| Deflater::new(bits, true, level))
                    .compress(payload, &mut z);
                // Incompressible data goes out as it is: same bytes, no work for the client.
                let (rsv1, body): (bool, &[u8]) = if z.len() < payload.len() {
                    (true, &z)
                } else {
                    (false, payload)
                };
                self.send_parts(
                    key,
                    &[
                        HeaderBuf::new(kind.opcode(), rsv1, None, body.len()).as_bytes(),
                        body,
                    ],
                );
                if z.capacity() > SCRATCH_KEEP {
                    z = Vec::new();
                }
                self.scratch = z;
            }
            _ => self.send_parts(
                key,
                &[
                    HeaderBuf::new(kind.opcode(), false, None, payload.len()).as_bytes(),
                    payload,
                ],
            ),
        }
        WorkerStats::add(&self.shared.stats.worker(self.id).messages_out_total, 1);
    }

    /// The peer sent a close frame.
    fn on_close_frame(&mut self, key: usize, frame: CloseFrame<'_>) {
        let Phase::Open(ws) = &mut self.conns[key].phase else {
            return;
        };
        if !ws.close_sent {
            // Echo the status code (RFC 6455 5.5.1), then close our side.
            ws.close_sent = true;
            let mut payload = [0u8; 125];
            let n = frame
                .code
                .map_or(0, |code| encode_close_payload(&mut payload, code, ""));
            self.send_parts(
                key,
                &[
                    HeaderBuf::new(OpCode::Close, false, None, n).as_bytes(),
                    &payload[..n],
                ],
            );
        }
        self.linger(key);
    }

    /// Fails the connection: a close frame naming the broken rule, then close.
    fn fail(&mut self, key: usize, e: ProtocolError) {
        let s = self.stats();
        let counter = match e.close_code() {
            CloseCode::INVALID_DATA => &s.close_1007_total,
            CloseCode::TOO_BIG => &s.close_1009_total,
            _ => &s.close_1002_total,
        };
        WorkerStats::add(counter, 1);
        let Phase::Open(ws) = &mut self.conns[key].phase else {
            return;
        };
        if !ws.close_sent {
            ws.close_sent = true;
            let mut payload = [0u8; 125];
            let n = encode_close_payload(&mut payload, e.close_code(), &e.to_string());
            self.send_parts(
                key,
                &[
                    HeaderBuf::new(OpCode::Close, false, None, n).as_bytes(),
                    &payload[..n],
                ],
            );
        }
        self.linger(key);
    }

    /// Releases what an open WebSocket held: its buffers and its subscriptions.
    fn end_ws(&mut self, key: usize, generation: u32, ws: Ws) {
        WorkerStats::add(&self.shared.stats.worker(self.id).ws_closed_total, 1);
        self.pool.put(ws.msg);
        for topic in ws.topics {
            self.local.remove(topic, key as u32, generation);
            self.shared.hub.unsubscribe(topic);
        }
    }

    fn linger(&mut self, key: usize) {
        self.flush_cork(key);
        let conn = &mut self.conns[key];
        let generation = conn.generation;
        if let Phase::Open(ws) = mem::replace(&mut conn.phase, Phase::Linger) {
            self.end_ws(key, generation, ws);
        }
        let conn = &mut self.conns[key];
        conn.since = self.now;
        if conn.queued() == 0 && !conn.write_shut {
            conn.write_shut = true;
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
        self.arm_timer(key);
    }

    /// Writes what is corked for `key` (keeping it corked for what follows).
    fn flush_cork(&mut self, key: usize) {
        if self.corked != Some(key) || self.cork.is_empty() {
            return;
        }
        let mut cork = mem::take(&mut self.cork);
        self.corked = None;
        self.send_parts(key, &[&cork]);
        self.corked = Some(key);
        cork.clear();
        self.cork = cork;
    }

    /// Sends `parts` (a frame header and payload, say): corked if small and the connection's
    /// input is being processed, else written now if nothing is queued; whatever the socket does
    /// not take is queued.
    fn send_parts(&mut self, key: usize, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if self.corked == Some(key) {
            if total <= CORK_MAX && self.cork.len() + total <= self.cork.capacity().max(64 * 1024) {
                for part in parts {
                    self.cork.extend_from_slice(part);
                }
                return;
            }
            self.flush_cork(key);
        }
        let conn = &mut self.conns[key];
        if conn.dead || conn.write_shut {
            return;
        }
        let mut written = 0;
        if conn.queued() == 0 {
            match self.write_direct(key, parts) {
                Some(n) => written = n,
                None => return,
            }
        }
        let conn = &mut self.conns[key];
        if written == total {
            return;
        }
        let out = conn
            .out
            .get_or_insert_with(|| self.outboxes.pop().unwrap_or_default());
        let mut skip = written;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            out.push_owned(&part[skip..], &mut self.pool);
            skip = 0;
        }
    }

    /// Writes queued output (on a writable event).
    fn flush(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let Some(out) = conn.out.as_mut() else { return };
        match out.write_to(&mut conn.stream, &mut self.pool) {
            Ok(written) => WorkerStats::add(
                &self.shared.stats.worker(self.id).bytes_out_total,
                written as u64,
            ),
            Err(_) => {
                conn.dead = true;
                return;
            }
        }
        if out.is_empty() {
            let out = conn.out.take().expect("checked above");
            if self.outboxes.len() < POOL_MAX {
                self.outboxes.push(out);
            }
        }
        if conn.queued() == 0 && conn.peer_closed {
            self.close(key);
            return;
        }
        if conn.queued() == 0 && matches!(conn.phase, Phase::Linger) && !conn.write_shut {
            conn.write_shut = true;
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
        if conn.paused && conn.queued() <= self.shared.config.max_queued {
            conn.paused = false;
            self.read_ready(key);
        }
    }

    /// The tick at which this connection next needs attention.
    fn next_due(&self, conn: &Conn) -> u32 {
        let d = self.deadlines;
        match &conn.phase {
            Phase::Handshake => conn.since.saturating_add(d.handshake),
            Phase::Linger => conn.since.saturating_add(d.grace),
            Phase::Open(ws) if ws.close_sent => conn.since.saturating_add(d.grace),
            Phase::Open(_) => conn
                .last_rx
                .saturating_add(d.pong)
                .min(conn.last_rx.max(conn.last_ping).saturating_add(d.ping)),
        }
    }

    /// Makes sure a wheel entry fires no later than the connection's next deadline.
    fn arm_timer(&mut self, key: usize) {
        let due = self.next_due(&self.conns[key]);
        let conn = &mut self.conns[key];
        if conn.timer_at == 0 || due < conn.timer_at {
            let at = due.max(self.timers.current() + 1);
            self.timers.schedule(key as u32, conn.generation, at);
            conn.timer_at = at;
        }
    }

    fn expire_timers(&mut self) {
        self.now = self.tick_now();
        let mut due = mem::take(&mut self.due);
        self.timers.expire(self.now, &mut due);
        for entry in due.drain(..) {
            let key = entry.key as usize;
            match self.conns.get_mut(key) {
                Some(c) if c.generation == entry.generation && c.timer_at == entry.at => {
                    c.timer_at = 0
                }
                _ => continue, // superseded, or the connection is gone
            }
            let next = self.next_due(&self.conns[key]);
            if next > self.now {
                self.arm_timer(key);
                continue;
            }
            self.on_deadline(key);
            self.reap(key);
        }
        self.due = due;
    }

    fn on_deadline(&mut self, key: usize) {
        let conn = &self.conns[key];
        let s = self.shared.stats.worker(self.id);
        match &conn.phase {
            Phase::Handshake => {
                WorkerStats::add(&s.handshake_timeouts_total, 1);
                self.close(key);
            }
            Phase::Linger => {
                WorkerStats::add(&s.close_grace_timeouts_total, 1);
                self.close(key);
            }
            Phase::Open(ws) if ws.close_sent => {
                WorkerStats::add(&s.close_grace_timeouts_total, 1);
                self.close(key);
            }
            Phase::Open(_) if self.now >= conn.last_rx.saturating_add(self.deadlines.pong) => {
                WorkerStats::add(&s.pong_timeouts_total, 1);
                self.close(key);
            }
            Phase::Open(_) => {
                WorkerStats::add(&s.pings_sent_total, 1);
                self.send_parts(
                    key,
                    &[HeaderBuf::new(OpCode::Ping, false, None, 0).as_bytes()],
                );
                self.conns[key].last_ping = self.now;
                self.arm_timer(key);
            }
        }
    }

    /// Says goodbye (1001) to every open WebSocket, best effort, and drops every connection.
    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Phase::Open(ws) = &self.conns[key].phase {
                if !ws.close_sent {
                    let mut payload = [0u8; 125];
                    let n = encode_close_payload(
                        &mut payload,
                        CloseCode::GOING_AWAY,
                        "server shutting down",
                    );
                    self.send_parts(
                        key,
                        &[
                            HeaderBuf::new(OpCode::Close, false, None, n).as_bytes(),
                            &payload[..n],
                        ],
                    );
                }
            }
            self.close(key);
        }
    }
}

/// Answers 503 on a connection over the limit without giving it a slot: the answer (which fits
/// a fresh socket's send buffer), a FIN, and whatever request bytes already arrived are read, so
/// closing does not reset the connection and destroy the answer. Bytes arriving later can still
/// draw a reset; a client over the limit gets best effort, not a slot.
fn refuse_at_capacity(stream: &mio::net::TcpStream) {
    let mut s = stream;
    let _ = s.write(RESPONSE_503);
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match s.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

impl Worker {
    /// Writes `parts` straight to the connection's socket (nothing may be queued before them):
    /// counts the bytes, marks the connection dead on failure; returns the bytes written.
    fn write_direct(&mut self, key: usize, parts: &[&[u8]]) -> Option<usize> {
        let conn = &mut self.conns[key];
        let written = write_now(&mut conn.stream, parts);
        match written {
            Some(n) => {
                WorkerStats::add(&self.shared.stats.worker(self.id).bytes_out_total, n as u64)
            }
            None => conn.dead = true,
        }
        written
    }
}

/// Writes `parts` to the socket until all is written or it would block; returns the bytes
/// written, or `None` when the connection failed. The one place that writes without queueing.
pub(super) fn write_now(stream: &mut mio::net::TcpStream, parts: &[&[u8]]) -> Option<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        let mut slices = [IoSlice::new(&[]); 4];
        let n = remaining_slices(parts, written, &mut slices);
        // One slice (a corked batch, a shared frame) goes out with send(2), which skips the
        // vfs layer writev(2) goes through: measurably cheaper per message.
        let result = if n == 1 {
            stream.write(&slices[0])
        } else {
            stream.write_vectored(&slices[..n])
        };
        match result {
            Ok(0) => return None,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(written)
}

/// Fills `out` with the parts of `parts` after the first `skip` bytes; returns how many.
fn remaining_slices<'a>(parts: &[&'a [u8]], mut skip: usize, out: &mut [IoSlice<'a>; 4]) -> usize {
    let mut n = 0;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        if n == out.len() {
            break;
        }
        out[n] = IoSlice::new(&part[skip..]);
        skip = 0;
        n += 1;
    }
    n
}
