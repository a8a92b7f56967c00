//! One event-loop thread's worth of clients: a mio `Poll`, a `Slab` of [`Client`]s, and the
//! thread's way through the run's phases.
//!
//! The thread opens its share of connections at its share of the connect rate, reports
//! "ramped", waits for the controller to say "run", drives the scenario (see `scenario`),
//! drains (waits for the last echoes or deliveries, or runs `--echo-check`) when told, closes
//! every connection with a close handshake and returns what it measured. The connection
//! itself, its buffers and the edge-triggered I/O rules are in `client`.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gateway::server::{ConnId, Generations};
use mio::{Events, Interest, Poll};
use slab::Slab;

use crate::args::{Config, Scenario};
use crate::client::{Client, End, Io, Status, fail};
use crate::clock::now_ns;
use crate::control::{Control, Phase, Share};
use crate::nodes::node_of;
use crate::scenario::{OnConn, Peer, Work};
use crate::sockets::{connect_cause, source_addr};
use crate::stats::Results;

/// Longest poll wait: how quickly a thread notices a phase change from the controller.
const TICK: Duration = Duration::from_millis(5);

/// One slab entry: the connection and its scenario state.
#[derive(Debug)]
struct Conn {
    client: Client,
    generation: u32,
    peer: Peer,
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

/// One event-loop thread.
#[derive(Debug)]
pub struct Engine {
    poll: Poll,
    conns: Slab<Conn>,
    io: Io,
    work: Work,
    control: Arc<Control>,
    share: Share,
    generations: Generations,
    /// Connections started so far.
    started: usize,
    /// Connect + handshake deadlines in start order (all have the same timeout, so FIFO).
    deadlines: VecDeque<(ConnId, u64)>,
    local: Local,
    ramp_start: u64,
    last_drain_check: u64,
}

impl Engine {
    pub fn new(cfg: Arc<Config>, control: Arc<Control>, share: Share) -> io::Result<Engine> {
        let seed = now_ns()
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ (share.first as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Ok(Engine {
            poll: Poll::new()?,
            conns: Slab::with_capacity(share.count),
            io: Io::new(&cfg.targets, cfg.deflate, seed),
            work: Work::new(cfg),
            control,
            share,
            generations: Generations::default(),
            started: 0,
            deadlines: VecDeque::new(),
            local: Local::Ramping,
            ramp_start: now_ns(),
            last_drain_check: 0,
        })
    }

    /// Runs the thread's part of the run to the end and returns what it measured.
    pub fn run(mut self) -> Results {
        let mut events = Events::with_capacity(1024);
        self.ramp_start = now_ns();
        while self.local != Local::Finished {
            let now = now_ns();
            self.advance(now);
            self.expire(now);
            self.publish();
            if self.local == Local::Finished {
                break;
            }
            let timeout = self.poll_timeout(now);
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Without a poller nothing more can be measured: fail what is left.
                    self.finish_all(&format!("loadgen: epoll_wait failed: {e}"));
                    self.local = Local::Finished;
                    continue;
                }
            }
            for ev in events.iter() {
                let id = ConnId::from_token(ev.token());
                if self
                    .conns
                    .get(id.slot())
                    .is_none_or(|c| c.generation != id.generation)
                {
                    continue;
                }
                let hup = ev.is_read_closed() || ev.is_error();
                let readable = ev.is_readable() || hup;
                self.on_event(id.slot(), readable, ev.is_writable() || ev.is_error(), hup);
            }
        }
        self.publish();
        self.control.live[self.share.slot]
            .finished
            .store(true, Ordering::Release);
        self.work.results
    }

    /// Follows the controller's phase and this thread's own progress.
    fn advance(&mut self, now: u64) {
        let phase = self.control.phase();
        if phase == Phase::Abort && !matches!(self.local, Local::Closing { .. } | Local::Finished) {
            self.begin_close(now);
        }
        match self.local {
            Local::Ramping => {
                self.start_connections(now);
                if self.started == self.share.count && self.work.pending == 0 {
                    self.work.results.ramp_s = crate::clock::secs(self.ramp_start, now);
                    self.control.live[self.share.slot]
                        .ramped
                        .store(true, Ordering::Release);
                    self.local = Local::Ramped;
                }
            }
            Local::Ramped if phase >= Phase::Run => self.begin_run(now),
            Local::Running if phase >= Phase::Drain => self.begin_drain(now),
            Local::Draining { until } => {
                if self.drained(now) {
                    self.begin_close(now);
                } else if now >= until {
                    let n = self.work.inflight;
                    if n > 0 {
                        self.work.results.counts.unanswered += n;
                        self.work
                            .results
                            .failures
                            .add("echo: unanswered when the drain timed out", n);
                        self.work.inflight = 0;
                    }
                    self.begin_close(now);
                }
            }
            Local::Closing { until } => {
                if self.conns.is_empty() {
                    self.local = Local::Finished;
                } else if now >= until {
                    self.finish_all("close: no close handshake before the timeout");
                    self.local = Local::Finished;
                }
            }
            _ => {}
        }
    }

    /// Runs `f` on every open connection with the thread's cork, then writes the cork out.
    fn each_open(&mut self, now: u64, f: fn(&mut Work, &mut Peer, &mut Client, &mut Vec<u8>, u64)) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            if conn.client.status() != Status::Open {
                continue;
            }
            f(
                &mut self.work,
                &mut conn.peer,
                &mut conn.client,
                &mut self.io.cork,
                now,
            );
            if let Err(end) = conn.client.flush_cork(&mut self.io.cork) {
                self.finish(key, end);
            }
        }
    }

    fn begin_run(&mut self, now: u64) {
        self.local = Local::Running;
        self.work.tracking = true;
        self.work.verified_at_run = self.work.results.counts.verified;
        self.work.sending = self.work.cfg.scenario == Scenario::Echo;
        self.each_open(now, Work::begin_run);
    }

    fn begin_drain(&mut self, now: u64) {
        let c = &mut self.work.results.counts;
        c.verified_in_run = c.verified - self.work.verified_at_run;
        self.work.sending = false;
        self.local = Local::Draining {
            until: now + self.work.cfg.timeout.as_nanos() as u64,
        };
        if self.work.cfg.scenario == Scenario::Connect && self.work.cfg.echo_check {
            self.each_open(now, Work::echo_check);
        }
    }

    /// Whether the last echoes or deliveries are in.
    fn drained(&mut self, now: u64) -> bool {
        match self.work.cfg.scenario {
            Scenario::Connect | Scenario::Echo => self.work.inflight == 0,
            Scenario::Fanout | Scenario::Flood => {
                // A scan of every subscriber: done at most every 10 ms.
                if now < self.last_drain_check + 10_000_000 {
                    return false;
                }
                self.last_drain_check = now;
                match self.control.last_seq() {
                    None => true,
                    Some(last) => self
                        .conns
                        .iter()
                        .all(|(_, c)| !c.peer.subscriber || c.peer.seq.has_seen(last)),
                }
            }
        }
    }

    /// Sends a close frame on every open connection; the rest is done by events.
    fn begin_close(&mut self, now: u64) {
        self.work.sending = false;
        self.work.tracking = false;
        self.local = Local::Closing {
            until: now + self.work.cfg.timeout.as_nanos() as u64,
        };
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            match conn.client.status() {
                Status::Open => {
                    conn.client.close(&mut self.io.cork, now);
                    if let Err(end) = conn.client.flush_cork(&mut self.io.cork) {
                        self.finish(key, end);
                    }
                }
                Status::Connecting | Status::Handshaking => {
                    self.finish(key, fail("aborted before the handshake finished"));
                }
                Status::Closing => {}
            }
        }
    }

    /// Starts as many connections as the rate and the pending limit allow.
    fn start_connections(&mut self, now: u64) {
        let share = self.share;
        let allowed = if share.rate > 0.0 {
            let due = (now - self.ramp_start) as f64 * share.rate / 1e9;
            share.count.min(due as usize + 1)
        } else {
            share.count
        };
        while self.started < allowed && self.work.pending < share.max_pending {
            let index = share.first + self.started;
            self.started += 1;
            self.start_one(index, now);
        }
    }

    fn start_one(&mut self, index: usize, now: u64) {
        let cfg = &self.work.cfg;
        self.work.results.counts.attempted += 1;
        let (node, rank) = node_of(index, cfg.targets.len());
        let target = &cfg.targets[node];
        let src = source_addr(target, cfg.per_addr, rank);
        let timeout = cfg.timeout.as_nanos() as u64;
        let mut client = match Client::connect(target.addr, node, src, now) {
            Ok(c) => c,
            Err(e) => return self.work.failed(&connect_cause(&e)),
        };
        let entry = self.conns.vacant_entry();
        let id = ConnId::new(entry.key(), self.generations.next_generation());
        if let Err(e) = self.poll.registry().register(
            client.stream(),
            id.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self
                .work
                .failed(&format!("loadgen: epoll registration failed: {e}"));
        }
        entry.insert(Conn {
            client,
            generation: id.generation,
            peer: Peer::new(index, node),
        });
        self.work.pending += 1;
        self.deadlines.push_back((id, now + timeout));
    }

    /// Fails connections whose connect or handshake took longer than the timeout.
    fn expire(&mut self, now: u64) {
        while let Some(&(id, at)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(conn) = self.conns.get(id.slot()) else {
                continue;
            };
            if conn.generation != id.generation {
                continue;
            }
            match conn.client.status() {
                Status::Connecting => self.finish(id.slot(), fail("connect: timed out")),
                Status::Handshaking => self.finish(id.slot(), fail("handshake: timed out")),
                _ => {}
            }
        }
    }

    fn poll_timeout(&self, now: u64) -> Duration {
        let share = &self.share;
        if self.local == Local::Ramping
            && self.started < share.count
            && self.work.pending < share.max_pending
            && share.rate > 0.0
        {
            let next = self.ramp_start + (self.started as f64 * 1e9 / share.rate) as u64;
            return Duration::from_nanos(next.saturating_sub(now)).min(TICK);
        }
        TICK
    }

    fn publish(&self) {
        let live = &self.control.live[self.share.slot];
        let c = &self.work.results.counts;
        live.open.store(self.work.open, Ordering::Relaxed);
        live.connected.store(c.connected, Ordering::Relaxed);
        live.failed.store(c.failed, Ordering::Relaxed);
        live.sent.store(c.sent, Ordering::Relaxed);
        live.verified.store(c.verified, Ordering::Relaxed);
        live.deliveries.store(c.deliveries, Ordering::Relaxed);
    }

    fn on_event(&mut self, key: usize, readable: bool, writable: bool, hup: bool) {
        let conn = &mut self.conns[key];
        let mut on = OnConn {
            work: &mut self.work,
            peer: &mut conn.peer,
        };
        let r = conn
            .client
            .on_event(readable, writable, hup, &mut self.io, &mut on);
        if let Err(end) = r {
            self.finish(key, end);
        }
    }

    /// Removes a connection and counts how it ended.
    fn finish(&mut self, key: usize, end: End) {
        let conn = self.conns.remove(key);
        let pending = matches!(
            conn.client.status(),
            Status::Connecting | Status::Handshaking
        );
        self.work.ended(&conn.peer, pending, end);
        // Dropping the stream closes the socket, which also takes it out of the epoll set.
    }

    fn finish_all(&mut self, cause: &str) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.finish(key, fail(cause.to_string()));
        }
    }
}
