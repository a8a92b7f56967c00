//! One connection's record in the worker's slab: the socket, the phase it is in, and the
//! buffers it has borrowed.
//!
//! A connection moves Handshake -> Open -> Linger -> (removed), or Handshake -> Linger for a plain
//! HTTP answer or a refused handshake. The phase enum owns what only that phase needs: the
//! WebSocket session exists only while the WebSocket is open. What only some connections need
//! for a while (bytes of a frame or request head that spans reads, a message that spans reads,
//! a `/ws` connection's further topics) lives in side tables of the worker, not here.

use mio::net::TcpStream;

use super::ConnId;
use super::outbox::Outbox;
use crate::http::Route;
use crate::proto::ServerSession;
use crate::topics::TopicId;

/// A connection's lifecycle phase.
#[derive(Debug)]
pub(super) enum Phase {
    /// Waiting for a complete HTTP request head (or the next one, on a kept-alive publish
    /// connection).
    Handshake,
    /// The WebSocket is open.
    Open(Ws),
    /// The last bytes are queued; once they drain the write side is shut, and input is read and
    /// discarded until the peer closes or the close grace runs out. Closing this way, rather than
    /// at once, keeps the kernel from answering unread input with a reset that could destroy the
    /// response or close frame the peer has not read yet.
    ///
    /// `handshake_done`: the peer's Close frame arrived and ours is written or queued. Nothing
    /// may follow the peer's Close, so nothing unread can turn the FIN into a reset: a plain
    /// socket is closed as soon as its output drains (RFC 6455 7.1.1: the server closes the TCP
    /// connection first), saving the shutdown, the wake-up for the peer's end of stream and
    /// the read of it. Over TLS the close_notify still goes first, through the usual linger.
    Linger { handshake_done: bool },
}

/// An open WebSocket: the protocol session, what the endpoint does with messages, and the
/// first topic it follows.
#[derive(Debug)]
pub(super) struct Ws {
    pub session: ServerSession,
    pub route: Route,
    /// The first topic this connection subscribed to ([`FirstTopic::NONE`] when none). A chat or feed
    /// socket follows exactly one, kept here; a `/ws` connection's further topics are in the
    /// worker's side table, so no connection's topic list costs a heap allocation of its own
    /// unless it follows several.
    pub first_topic: FirstTopic,
}

/// The slot ([`crate::topics::slot_of`]) of a connection's first topic: unique among live
/// topics, and the topic is live while the connection follows it; the worker's subscription
/// table gives its full id. 32 bits, so `Conn` stays within its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FirstTopic(u32);

impl FirstTopic {
    /// No topic.
    pub const NONE: FirstTopic = FirstTopic(u32::MAX);

    pub fn new(id: TopicId) -> FirstTopic {
        FirstTopic(crate::topics::slot_of(id))
    }

    pub fn slot(self) -> Option<u32> {
        (self != Self::NONE).then_some(self.0)
    }
}

/// A connection: its slab entry is all an idle connection costs in user space.
#[derive(Debug)]
pub(super) struct Conn {
    pub stream: TcpStream,
    /// Distinguishes this connection from earlier users of the same slab slot.
    pub generation: u32,
    /// Tick of this connection's live timer-wheel entry; 0 when none is armed.
    pub timer_at: u32,
    /// Tick the current phase began (the handshake and linger deadlines count from it).
    pub since: u32,
    /// The connection is finished (failed write, reset, deadline, clean end): it is removed
    /// from the slab by `Worker::reap` at the end of the current event, and nothing more is
    /// read or written meanwhile.
    pub dead: bool,
    /// Reading stopped because too much output is queued; resumes when it drains.
    pub paused: bool,
    /// Reading stopped because the hub is congested (a chat client that publishes); resumes
    /// when the workers' backlogs fall under the limit.
    pub hub_paused: bool,
    /// Frames were queued for it in the current delivery batch; it is in the batch list.
    pub batched: bool,
    /// The write side was shut (Linger).
    pub write_shut: bool,
    /// The peer shut its write side; the connection closes once its output drains.
    pub peer_closed: bool,
    /// The last turn spent its budget of steps with input left unprocessed (in the worker's
    /// side table); the next turn processes it before reading more.
    pub yielded: bool,
    /// It is on the worker's backlog (at most once: a connection whose readable events keep
    /// coming while it is there must not gain a turn per event).
    pub backlogged: bool,
    pub phase: Phase,
    /// Output the socket has not taken yet; `None` when everything went out.
    pub out: Option<Box<Outbox>>,
}

/// The per-connection cost is this struct; keep it from creeping (see docs/BENCHMARKS.md).
/// Release builds only: in debug builds mio's socket carries a selector id for its own checks.
#[cfg(not(debug_assertions))]
const _: () = assert!(std::mem::size_of::<Conn>() <= 96, "Conn grew past 96 bytes");

impl Conn {
    pub fn new(stream: TcpStream, generation: u32, now: u32) -> Conn {
        Conn {
            stream,
            generation,
            timer_at: 0,
            since: now,
            dead: false,
            paused: false,
            hub_paused: false,
            batched: false,
            write_shut: false,
            peer_closed: false,
            yielded: false,
            backlogged: false,
            phase: Phase::Handshake,
            out: None,
        }
    }

    pub fn id(&self, slot: usize) -> ConnId {
        ConnId::new(slot, self.generation)
    }

    /// The connection's outbox, taking an empty one from `spare` (the worker's reusable ones)
    /// if it has none.
    #[expect(clippy::vec_box, reason = "connections hold outboxes boxed")]
    pub fn outbox<'a>(&'a mut self, spare: &mut Vec<Box<Outbox>>) -> &'a mut Outbox {
        self.out
            .get_or_insert_with(|| spare.pop().unwrap_or_default())
    }

    /// Bytes queued for the socket.
    pub fn queued(&self) -> usize {
        self.out.as_ref().map_or(0, |o| o.queued())
    }
}
