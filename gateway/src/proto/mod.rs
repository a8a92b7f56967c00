//! The sans-I/O WebSocket protocol core (RFC 6455, RFC 7692).
//!
//! Bytes go in, events and bytes come out. Nothing in this module touches a socket, a clock or a
//! thread, so it can be unit-tested and fuzzed alone; the event loop in `server` and the client
//! in `loadgen` drive it. Both roles are served: the server reads masked frames and sends
//! unmasked ones, the client the other way round.
//!
//! - [`frame`]: header parse/encode for every payload-length form.
//! - [`mask`]: word-at-a-time masking.
//! - [`utf8`]: incremental, fail-fast UTF-8 validation.
//! - [`close`]: close codes and payloads.
//! - [`reader`]: the streaming reader that turns bytes into messages and control frames.
//! - [`handshake`]: the opening handshake for both roles, and plain HTTP answers.
//! - [`deflate`]: permessage-deflate negotiation and codec, and the shared [`Compressor`].
//! - [`session`]: one open connection's state machine for either role: close handshake, owed
//!   pongs, keep-alive deadlines (time passed in).
//! - [`rng`]: masking and handshake keys for the client role.

pub mod close;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod reader;
pub mod rng;
pub mod session;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use deflate::{Compressor, DeflateConfig, DeflateParams, Deflater, Inflater};
pub use error::ProtocolError;
pub use frame::{FrameHeader, HeaderBuf, OpCode};
pub use reader::{Event, MessageKind, Reader, Step};
pub use rng::Rng;
pub use session::{
    ClientSession, Masking, ServerSession, Session, SessionState, Tick, Timeout, Timeouts, Unmasked,
};

/// Which end of the connection this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads masked frames, writes unmasked ones.
    Server,
    /// Reads unmasked frames, writes masked ones.
    Client,
}
