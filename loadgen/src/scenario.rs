//! The scenarios' per-connection behaviour: what a client sends and how it checks what comes
//! back (connect: nothing, or one echo with `--echo-check`; echo: `--pipeline` messages in
//! flight, each verified and answered by the next; fanout and flood: sequence numbers, delivery
//! latency, and how far a subscriber got when it ended early). [`Work`] is one thread's side of it: the figures it measures and its running
//! totals; [`Peer`] is one connection's bookkeeping.

use std::sync::Arc;

use gateway::proto::MessageKind;

use crate::args::{Config, Scenario};
use crate::client::{Client, End, Handler, Reply, fail};
use crate::nodes::NodeResults;
use crate::payload::{self, Delivery, SeqTracker};
use crate::stats::{Results, count_first};

/// One connection's scenario state.
#[derive(Debug)]
pub struct Peer {
    /// Global index of the connection (in echo payloads).
    pub index: u32,
    /// The node (`--url`) it connects to.
    pub node: u32,
    /// Echo: messages sent and echoes verified.
    pub sent: u64,
    pub recvd: u64,
    /// Fanout: sequence numbers seen.
    pub seq: SeqTracker,
    pub subscriber: bool,
    /// Whether the upgrade completed (the connection counts as open).
    pub opened: bool,
}

impl Peer {
    pub fn new(index: usize, node: usize) -> Peer {
        Peer {
            index: index as u32,
            node: node as u32,
            sent: 0,
            recvd: 0,
            seq: SeqTracker::default(),
            subscriber: false,
            opened: false,
        }
    }
}

/// A thread's measurements and running totals.
#[derive(Debug)]
pub struct Work {
    pub cfg: Arc<Config>,
    pub results: Results,
    payload: Vec<u8>,
    /// Echo: whether to send the next message when an echo arrives.
    pub sending: bool,
    /// Echo: messages sent and not yet answered, over all connections.
    pub inflight: u64,
    /// Connections open (upgrade done, not yet ended).
    pub open: u64,
    /// Connections in their TCP or WebSocket handshake.
    pub pending: usize,
    pub verified_at_run: u64,
    /// Fanout, flood: from the run's start until closing begins, a subscriber that ends is
    /// cut off (its figures say how far it got).
    pub tracking: bool,
}

impl Work {
    pub fn new(cfg: Arc<Config>) -> Work {
        // Per-node figures only with several nodes (see `nodes`).
        let nodes = match cfg.targets.len() {
            0 | 1 => Vec::new(),
            n => vec![NodeResults::default(); n],
        };
        Work {
            cfg,
            results: Results {
                nodes,
                ..Results::default()
            },
            payload: Vec::new(),
            sending: false,
            inflight: 0,
            open: 0,
            pending: 0,
            verified_at_run: 0,
            tracking: false,
        }
    }

    /// Starts the run phase on one open connection: subscribes it (fanout) or puts its
    /// pipeline of echoes in flight (echo). Output goes to `cork`.
    pub fn begin_run(
        &mut self,
        peer: &mut Peer,
        client: &mut Client,
        cork: &mut Vec<u8>,
        now: u64,
    ) {
        match self.cfg.scenario {
            Scenario::Connect => {}
            Scenario::Fanout | Scenario::Flood => {
                peer.subscriber = true;
                self.results.counts.subscribers += 1;
                if let Some(n) = self.results.nodes.get_mut(peer.node as usize) {
                    n.subscribers += 1;
                }
            }
            Scenario::Echo => {
                for _ in 0..self.cfg.pipeline {
                    self.send_echo(peer, now, |p| client.send(MessageKind::Binary, p, cork));
                }
            }
        }
    }

    /// `--echo-check`: one echo on an open connection after the hold.
    pub fn echo_check(
        &mut self,
        peer: &mut Peer,
        client: &mut Client,
        cork: &mut Vec<u8>,
        now: u64,
    ) {
        self.send_echo(peer, now, |p| client.send(MessageKind::Binary, p, cork));
    }

    /// Writes the connection's next echo message and hands it to `send`; counts it if sent.
    fn send_echo(&mut self, peer: &mut Peer, now: u64, send: impl FnOnce(&[u8]) -> bool) {
        payload::write_echo(&mut self.payload, self.cfg.size, peer.sent, peer.index, now);
        if send(&self.payload) {
            peer.sent += 1;
            self.inflight += 1;
            self.results.counts.sent += 1;
        }
    }

    /// Counts how a connection ended, with its echoes left unanswered.
    pub fn ended(&mut self, peer: &Peer, pending: bool, end: End) {
        if pending {
            self.pending -= 1;
        }
        if peer.opened {
            self.open -= 1;
        }
        if peer.subscriber && self.tracking {
            self.results.cut_off.push(peer.seq.next());
            if let Some(n) = self.results.nodes.get_mut(peer.node as usize) {
                n.cut_off.push(peer.seq.next());
            }
        }
        let unanswered = peer.sent - peer.recvd;
        if unanswered > 0 {
            self.inflight -= unanswered;
            self.results.counts.unanswered += unanswered;
            self.results
                .failures
                .add("echo: unanswered when its connection ended", unanswered);
        }
        match end {
            End::Clean => self.results.counts.closed_clean += 1,
            End::Failed(cause) => self.failed(&cause),
        }
    }

    /// Counts a connection that failed (also one that never got a socket).
    pub fn failed(&mut self, cause: &str) {
        self.results.counts.failed += 1;
        self.results.failures.add(cause, 1);
    }

    fn on_echo(
        &mut self,
        peer: &mut Peer,
        kind: MessageKind,
        msg: &[u8],
        reply: &mut Reply<'_>,
        now: u64,
    ) -> Result<(), End> {
        if peer.recvd >= peer.sent {
            self.results.counts.mismatched += 1;
            return Err(fail("echo: a message that was never sent"));
        }
        let expect = peer.recvd;
        peer.recvd += 1;
        self.inflight -= 1;
        let checked = payload::check_echo(msg, self.cfg.size, expect, peer.index);
        let sent_ns = match (kind, checked) {
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
            self.send_echo(peer, now, |p| reply.send(MessageKind::Binary, p));
        }
        Ok(())
    }

    fn on_delivery(&mut self, peer: &mut Peer, kind: MessageKind, msg: &[u8], now: u64) {
        let parsed = (kind == MessageKind::Text)
            .then(|| payload::parse_fanout(msg))
            .flatten()
            .filter(|f| f.seq <= payload::MAX_SEQ);
        let Some(f) = parsed else {
            self.results.counts.malformed += 1;
            return;
        };
        let r = &mut self.results;
        let latency = now.saturating_sub(f.due_ns);
        r.counts.deliveries += 1;
        r.delivery.record(latency);
        r.delivery_uncorrected.record(now.saturating_sub(f.sent_ns));
        let seen = peer.seq.observe(f.seq);
        let seq = f.seq as usize;
        let c = &mut r.counts;
        tally(
            seen,
            seq,
            &mut r.per_seq,
            &mut c.out_of_order,
            &mut c.duplicates,
        );
        if let Some(n) = r.nodes.get_mut(peer.node as usize) {
            n.deliveries += 1;
            n.delivery.record(latency);
            tally(
                seen,
                seq,
                &mut n.per_seq,
                &mut n.out_of_order,
                &mut n.duplicates,
            );
        }
    }
}

/// Counts one delivery of `seq` as its subscriber saw it: a first or late one in `per_seq`
/// (a late one also as out of order), a repeat as a duplicate.
fn tally(seen: Delivery, seq: usize, per_seq: &mut Vec<u32>, late: &mut u64, dup: &mut u64) {
    match seen {
        Delivery::First => count_first(per_seq, seq),
        Delivery::Late => {
            count_first(per_seq, seq);
            *late += 1;
        }
        Delivery::Duplicate => *dup += 1,
    }
}

/// The [`Handler`] for one connection's read: the thread's [`Work`] and the connection's
/// [`Peer`].
#[derive(Debug)]
pub struct OnConn<'a> {
    pub work: &'a mut Work,
    pub peer: &'a mut Peer,
}

impl Handler for OnConn<'_> {
    fn opened(&mut self, handshake_ns: u64) {
        let w = &mut *self.work;
        w.results.handshake.record(handshake_ns);
        w.results.counts.connected += 1;
        if let Some(n) = w.results.nodes.get_mut(self.peer.node as usize) {
            n.handshake.record(handshake_ns);
            n.connected += 1;
        }
        w.pending -= 1;
        w.open += 1;
        self.peer.opened = true;
    }

    fn message(
        &mut self,
        kind: MessageKind,
        msg: &[u8],
        reply: &mut Reply<'_>,
        now: u64,
    ) -> Result<(), End> {
        match self.work.cfg.scenario {
            Scenario::Connect if !self.work.cfg.echo_check => Ok(()),
            // A connect run's messages are then the answers to `--echo-check`.
            Scenario::Connect | Scenario::Echo => {
                self.work.on_echo(self.peer, kind, msg, reply, now)
            }
            Scenario::Fanout | Scenario::Flood => {
                self.work.on_delivery(self.peer, kind, msg, now);
                Ok(())
            }
        }
    }
}
