//! One WebSocket connection after its handshake, for either role: the per-connection state
//! machine, sans-I/O.
//!
//! The driver (the server's worker, the load generator's client) owns the socket and the clock.
//! It hands the session what arrived ([`Session::handle_input`]) and the time whenever it is
//! due ([`Session::handle_timeout`]), and writes out the bytes the session appends to the output
//! buffer it lends. The session owns everything RFC 6455 asks of a connection:
//!
//! - the close handshake: [`SessionState::Open`] -> `CloseSent` -> `Closed`, or `Open` ->
//!   `Closed` when the peer closes first (its status code is echoed at once, RFC 6455 5.5.1);
//!   nothing is sent after a close frame;
//! - owed answers: a ping is answered with a pong in the same call that reads it;
//! - failing the connection: a protocol violation sends the close code it calls for (1002,
//!   1007, 1009) and ends the session;
//! - keep-alive: a ping after `ping` ticks without traffic, and the deadline after which a
//!   silent peer, or a peer that never answers our close, is given up on.
//!
//! Time is a [`Tick`] in whatever unit the driver chooses (the server uses 50 ms ticks), passed
//! in as an argument; the session never reads a clock, so a test drives it with a fake one.
//!
//! The message being assembled is the driver's buffer, lent to each [`Session::handle_input`]
//! call: the server keeps one per worker and parks it only for a connection whose message spans
//! reads, so an idle session holds no buffer and costs a few dozen bytes. The role is a type
//! parameter: a [`ServerSession`] masks nothing and stores no generator; a [`ClientSession`]
//! masks every frame with its own [`Rng`].

use super::Role;
use super::close::{CloseCode, encode_close_payload};
use super::deflate::{DeflateParams, Inflater};
use super::error::ProtocolError;
use super::frame::{HeaderBuf, OpCode, write_frame};
use super::reader::{Event, MessageKind, Reader, Step};
use super::rng::Rng;

/// A point in time, in the driver's unit.
pub type Tick = u32;

/// Where the session is in the close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Data flows both ways.
    Open,
    /// Our close frame is out; the peer's is awaited. Messages still arriving are delivered,
    /// pings are not answered (nothing may follow a close frame).
    CloseSent,
    /// Both close frames were exchanged, or the connection failed: nothing more is read or
    /// sent. The driver ends the transport (a server at once, a client once the server has).
    Closed,
}

/// Keep-alive and closing deadlines, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Silence (nothing received, no ping sent) after which a ping is sent.
    pub ping: Tick,
    /// Silence after which the peer is considered gone.
    pub pong: Tick,
    /// How long the peer may take to answer our close frame.
    pub close_grace: Tick,
}

/// What [`Session::handle_timeout`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Nothing was due yet.
    NotDue,
    /// A keep-alive ping was written.
    Pinged,
    /// Nothing arrived for `pong` ticks: the session is closed; drop the transport.
    PeerSilent,
    /// The close handshake did not finish within `close_grace`: drop the transport.
    CloseTimedOut,
}

/// How one end masks what it sends: the role, as a type.
pub trait Masking: std::fmt::Debug {
    const ROLE: Role;
    /// The key for the next frame; `None` for a server, which does not mask.
    fn next_mask(&mut self) -> Option<[u8; 4]>;
}

/// The server role: frames go out unmasked, and nothing is stored for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unmasked;

impl Masking for Unmasked {
    const ROLE: Role = Role::Server;
    fn next_mask(&mut self) -> Option<[u8; 4]> {
        None
    }
}

/// The client role: a fresh key from the generator for every frame.
impl Masking for Rng {
    const ROLE: Role = Role::Client;
    fn next_mask(&mut self) -> Option<[u8; 4]> {
        Some(self.mask())
    }
}

/// A server's session.
pub type ServerSession = Session<Unmasked>;
/// A client's session.
pub type ClientSession = Session<Rng>;

/// The state of one open WebSocket connection.
#[derive(Debug)]
pub struct Session<M: Masking> {
    reader: Reader,
    /// The peer's compression context, when it keeps one between messages.
    inflater: Option<Box<Inflater>>,
    /// Last time bytes arrived.
    last_rx: Tick,
    /// While open: the last keep-alive ping (or the open). Once a close frame went out (or the
    /// session closed): when that happened.
    mark: Tick,
    /// Window bits of what this side sends compressed, when permessage-deflate was agreed.
    send_deflate: Option<u8>,
    state: SessionState,
    masks: M,
}

impl<M: Masking> Session<M> {
    /// A session that opened at `now`. `deflate` is what the handshake agreed; `masks` is
    /// [`Unmasked`] for a server, a seeded [`Rng`] for a client.
    pub fn new(masks: M, max_message: usize, deflate: Option<DeflateParams>, now: Tick) -> Self {
        let role = M::ROLE;
        Session {
            reader: Reader::new(role, max_message, deflate.map(|d| d.receiving(role))),
            inflater: None,
            last_rx: now,
            mark: now,
            send_deflate: deflate.map(|d| d.sending(role).0),
            state: SessionState::Open,
            masks,
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Whether data may still be sent (no close frame has gone out).
    pub fn is_open(&self) -> bool {
        self.state == SessionState::Open
    }

    /// Whether a message is partly read: the driver must keep its message buffer for the
    /// next [`Session::handle_input`].
    pub fn in_message(&self) -> bool {
        !self.reader.is_between_messages()
    }

    /// The window of what this side sends compressed, if permessage-deflate was agreed.
    pub fn send_deflate(&self) -> Option<u8> {
        self.send_deflate
    }

    /// Reads from `input`: at most one event per call, like [`Reader::read`], but with the
    /// obligations already met: a ping's pong and the answer to a close are appended to `out`.
    /// `msg` collects the message in progress: after an [`Event::Message`] it holds the whole
    /// message, which the driver takes (and clears) before the next call. `consumed == 0` with
    /// no event means more bytes are needed. On a protocol violation the close frame it calls
    /// for is appended to `out`, the session is `Closed`, and the error is returned (to count).
    pub fn handle_input<'a>(
        &mut self,
        input: &'a mut [u8],
        msg: &mut Vec<u8>,
        now: Tick,
        out: &mut Vec<u8>,
    ) -> Result<Step<'a>, ProtocolError> {
        if self.state == SessionState::Closed {
            return Ok(Step {
                consumed: input.len(),
                event: None,
            });
        }
        if !input.is_empty() {
            self.last_rx = now;
        }
        let step = match self.reader.read(input, msg, &mut self.inflater) {
            Ok(step) => step,
            Err(e) => {
                self.close(e.close_code(), &e.to_string(), now, out);
                self.state = SessionState::Closed;
                return Err(e);
            }
        };
        match &step.event {
            Some(Event::Ping(payload)) if self.state == SessionState::Open => {
                self.write(OpCode::Pong, payload, out);
            }
            Some(Event::Close(frame)) => {
                if self.state == SessionState::Open {
                    // Echo the status code (RFC 6455 5.5.1); no code, an empty close.
                    let mut payload = [0u8; 125];
                    let n = frame
                        .code
                        .map_or(0, |code| encode_close_payload(&mut payload, code, ""));
                    self.write(OpCode::Close, &payload[..n], out);
                }
                self.state = SessionState::Closed;
                self.mark = now;
            }
            _ => {}
        }
        Ok(step)
    }

    /// The header of a data frame of `len` bytes whose payload the caller writes after it
    /// (server role only: a client's payload must be masked, see [`Session::send`]). `None`
    /// once a close frame has gone out.
    pub fn data_header(
        &self,
        kind: MessageKind,
        compressed: bool,
        len: usize,
    ) -> Option<HeaderBuf> {
        debug_assert_eq!(M::ROLE, Role::Server, "clients mask: use send()");
        self.is_open()
            .then(|| HeaderBuf::new(kind.opcode(), compressed, None, len))
    }

    /// Appends a whole data message (masked in the client role) to `out`; false, and nothing
    /// written, once a close frame has gone out.
    pub fn send(&mut self, kind: MessageKind, payload: &[u8], out: &mut Vec<u8>) -> bool {
        self.send_message(kind, false, payload, out)
    }

    /// Like [`Session::send`], with `compressed` saying whether `payload` is a permessage-deflate
    /// body (RSV1 set; only when [`Session::send_deflate`] is `Some`).
    pub fn send_message(
        &mut self,
        kind: MessageKind,
        compressed: bool,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        debug_assert!(!compressed || self.send_deflate.is_some());
        if !self.is_open() {
            return false;
        }
        let mask = self.masks.next_mask();
        write_frame(out, true, kind.opcode(), compressed, mask, payload);
        true
    }

    /// Appends a ping; false once a close frame has gone out.
    pub fn ping(&mut self, payload: &[u8], now: Tick, out: &mut Vec<u8>) -> bool {
        if !self.is_open() {
            return false;
        }
        self.write(OpCode::Ping, &payload[..payload.len().min(125)], out);
        self.mark = now;
        true
    }

    /// Starts the close handshake: appends a close frame (the reason cut to fit) and stops
    /// sending. False, and nothing written, if a close frame went out already.
    pub fn close(&mut self, code: CloseCode, reason: &str, now: Tick, out: &mut Vec<u8>) -> bool {
        if !self.is_open() {
            return false;
        }
        let mut payload = [0u8; 125];
        let n = encode_close_payload(&mut payload, code, reason);
        self.write(OpCode::Close, &payload[..n], out);
        self.state = SessionState::CloseSent;
        self.mark = now;
        true
    }

    fn write(&mut self, opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
        let mask = self.masks.next_mask();
        write_frame(out, true, opcode, false, mask, payload);
    }

    /// When the session next needs [`Session::handle_timeout`].
    pub fn deadline(&self, t: &Timeouts) -> Tick {
        match self.state {
            SessionState::Open => self
                .last_rx
                .saturating_add(t.pong)
                .min(self.last_rx.max(self.mark).saturating_add(t.ping)),
            SessionState::CloseSent | SessionState::Closed => {
                self.mark.saturating_add(t.close_grace)
            }
        }
    }

    /// Acts on the time: sends a keep-alive ping, or says the peer is gone or the close
    /// handshake timed out (the session is then `Closed`; the driver drops the transport).
    pub fn handle_timeout(&mut self, now: Tick, t: &Timeouts, out: &mut Vec<u8>) -> Timeout {
        if now < self.deadline(t) {
            return Timeout::NotDue;
        }
        match self.state {
            SessionState::Open if now >= self.last_rx.saturating_add(t.pong) => {
                self.state = SessionState::Closed;
                self.mark = now;
                Timeout::PeerSilent
            }
            SessionState::Open => {
                self.ping(&[], now, out);
                Timeout::Pinged
            }
            SessionState::CloseSent | SessionState::Closed => {
                self.state = SessionState::Closed;
                Timeout::CloseTimedOut
            }
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
