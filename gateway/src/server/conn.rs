//! One connection's state: the socket, the phase it is in, and the buffers it has borrowed.
//!
//! A connection moves Handshake -> Open -> Linger -> (removed), or Handshake -> Linger for a plain
//! HTTP answer or a refused handshake. The phase enum owns what only that phase needs: the frame
//! reader and message buffer exist only while the WebSocket is open.

use mio::net::TcpStream;

use super::outbox::Outbox;
use crate::http::Route;
use crate::proto::{Inflater, Reader};
use crate::topics::TopicId;

/// A connection's lifecycle phase.
#[derive(Debug)]
pub(super) enum Phase {
    /// Waiting for a complete HTTP request head.
    Handshake,
    /// The WebSocket is open (a close frame may have been sent: see [`Ws::close_sent`]).
    Open(Ws),
    /// The last bytes are queued; once they drain the write side is shut, and input is read and
    /// discarded until the peer closes or the close grace runs out. Closing this way, rather than
    /// at once, keeps the kernel from answering unread input with a reset that could destroy the
    /// response or close frame the peer has not read yet.
    Linger,
}

/// State of an open WebSocket.
#[derive(Debug)]
pub(super) struct Ws {
    pub reader: Reader,
    /// The message being assembled; pooled, unallocated between messages.
    pub msg: Vec<u8>,
    /// The peer's compression context, when it keeps one between messages.
    pub inflater: Option<Box<Inflater>>,
    /// Window bits for what the server sends, when permessage-deflate was negotiated.
    pub send_deflate: Option<u8>,
    pub route: Route,
    /// Topics this connection is subscribed to (unallocated when none).
    pub topics: Vec<TopicId>,
    /// A close frame has gone out; nothing else may follow it.
    pub close_sent: bool,
}

/// A connection: its slab entry is all an idle connection costs in user space.
#[derive(Debug)]
pub(super) struct Conn {
    pub stream: TcpStream,
    /// Distinguishes this connection from earlier users of the same slab slot.
    pub generation: u32,
    /// Tick of this connection's live timer-wheel entry; 0 when none is armed.
    pub timer_at: u32,
    /// Tick the current phase began (or the close frame was sent).
    pub since: u32,
    /// Tick of the last read that returned bytes.
    pub last_rx: u32,
    /// Tick of the last keep-alive ping sent (or of the open).
    pub last_ping: u32,
    /// A write failed: the connection is removed at the end of the current event.
    pub dead: bool,
    /// Reading stopped because too much output is queued; resumes when it drains.
    pub paused: bool,
    /// The write side was shut (Linger).
    pub write_shut: bool,
    /// The peer shut its write side; the connection closes once its output drains.
    pub peer_closed: bool,
    pub phase: Phase,
    /// Received bytes not consumed yet (part of a request head, frame header or control frame).
    pub inbuf: Vec<u8>,
    /// Output the socket has not taken yet; `None` when everything went out.
    pub out: Option<Box<Outbox>>,
}

/// The per-connection cost is this struct; keep it from creeping (see docs/BENCHMARKS.md).
const _: () = assert!(
    std::mem::size_of::<Conn>() <= 192,
    "Conn grew past 192 bytes"
);

impl Conn {
    pub fn new(stream: TcpStream, generation: u32, now: u32) -> Conn {
        Conn {
            stream,
            generation,
            timer_at: 0,
            since: now,
            last_rx: now,
            last_ping: now,
            dead: false,
            paused: false,
            write_shut: false,
            peer_closed: false,
            phase: Phase::Handshake,
            inbuf: Vec::new(),
            out: None,
        }
    }

    /// Bytes queued for the socket.
    pub fn queued(&self) -> usize {
        self.out.as_ref().map_or(0, |o| o.queued())
    }
}
