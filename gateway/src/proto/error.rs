//! Protocol errors: each names the rule the peer broke and maps to exactly one close code.

use core::fmt;

use super::close::CloseCode;

/// A violation by the peer that fails the WebSocket connection (RFC 6455 section 7.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A client sent a frame without a mask (RFC 6455 5.1).
    UnmaskedClientFrame,
    /// A server sent a masked frame (RFC 6455 5.1).
    MaskedServerFrame,
    /// Opcodes 3-7 and 11-15 are reserved (RFC 6455 5.2).
    ReservedOpcode(u8),
    /// RSV2/RSV3 set, or RSV1 set without permessage-deflate or on a frame it may not mark.
    ReservedBits,
    /// A control frame with FIN clear (RFC 6455 5.5).
    FragmentedControlFrame,
    /// A control frame payload over 125 bytes (RFC 6455 5.5).
    ControlFrameTooLong,
    /// The most significant bit of a 64-bit payload length is set (RFC 6455 5.2).
    PayloadLengthOverflow,
    /// A continuation frame with no message in progress (RFC 6455 5.4).
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is still in progress (RFC 6455 5.4).
    ExpectedContinuation,
    /// A close frame with a one-byte payload (RFC 6455 5.5.1).
    CloseFrameOneByte,
    /// A close code that may not be sent on the wire (RFC 6455 7.4).
    InvalidCloseCode(u16),
    /// Text (or a close reason) that is not UTF-8 (RFC 6455 8.1).
    InvalidUtf8,
    /// A message longer than the configured read limit.
    MessageTooBig { limit: usize },
    /// A compressed message that is not a valid raw DEFLATE stream (RFC 7692 7.2.2).
    BadCompressedData,
    /// A message of more frames than [`super::reader::FREE_FRAMES`] plus one per payload byte
    /// (endless empty fragments): refused by policy (1008).
    TooManyFrames,
}

impl ProtocolError {
    /// The close code sent to the peer for this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::BadCompressedData => {
                CloseCode::INVALID_DATA
            }
            ProtocolError::MessageTooBig { .. } => CloseCode::TOO_BIG,
            ProtocolError::TooManyFrames => CloseCode::POLICY,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnmaskedClientFrame => f.write_str("client frames must be masked"),
            ProtocolError::MaskedServerFrame => f.write_str("server frames must not be masked"),
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::ReservedBits => f.write_str("reserved bits set"),
            ProtocolError::FragmentedControlFrame => {
                f.write_str("control frames must not be fragmented")
            }
            ProtocolError::ControlFrameTooLong => {
                f.write_str("control frame payload over 125 bytes")
            }
            ProtocolError::PayloadLengthOverflow => {
                f.write_str("64-bit payload length has its top bit set")
            }
            ProtocolError::UnexpectedContinuation => {
                f.write_str("continuation frame without a message to continue")
            }
            ProtocolError::ExpectedContinuation => {
                f.write_str("new message before the fragmented one ended")
            }
            ProtocolError::CloseFrameOneByte => f.write_str("close frame payload of one byte"),
            ProtocolError::InvalidCloseCode(c) => write!(f, "close code {c} may not be sent"),
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8 in text"),
            ProtocolError::MessageTooBig { limit } => {
                write!(f, "message over the {limit}-byte limit")
            }
            ProtocolError::BadCompressedData => f.write_str("invalid permessage-deflate data"),
            ProtocolError::TooManyFrames => {
                f.write_str("message of too many frames for its size (empty fragments)")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}
