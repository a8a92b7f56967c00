//! The streaming frame reader: bytes in, messages and control frames out.
//!
//! The reader keeps a few dozen bytes of state per connection. Data frame payloads are consumed
//! as they arrive: unmasked in place, checked (UTF-8 of text fails fast, the size limit is
//! checked before bytes are kept), decompressed if the message is compressed, and appended to a
//! message buffer that the caller lends. Frame headers and control frames are only consumed
//! whole: a partial one consumes nothing and the caller keeps the bytes for the next call.

use super::Role;
use super::close::{CloseFrame, parse_close_payload};
use super::deflate::Inflater;
use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;

/// Frames a message may have beyond one per payload byte. A message made of endless empty
/// continuation frames never grows past the size limit, so without a bound on its frames it
/// would keep its connection (and the worker's CPU) busy forever; a flood of them is closed
/// (1008) after this many. One frame per payload byte is always allowed on top, so no
/// fragmentation that carries data is refused: Autobahn's busiest cases (9.3.1 and 9.4.1, 4 MiB
/// in 64-byte fragments, 65,536 frames; 6.x, text one byte per frame) stay far inside it, and
/// the work a message can cost stays proportional to its bytes, which the size limit bounds.
/// The credit is kept in 16 bits (the reader must stay small: it lives in every connection's
/// slab entry), so it saturates at 65,535 frames: that many empty frames after a long run of
/// data, at most.
pub const FREE_FRAMES: u16 = 1024;

/// Text or binary: the kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

impl MessageKind {
    pub fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// Something the peer said.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "pings owe a pong and closes owe a close"]
pub enum Event<'a> {
    /// A whole message is in the caller's message buffer (decompressed and validated).
    Message(MessageKind),
    /// The caller owes a pong with this payload.
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The caller owes a close frame (unless it sent one already), then the TCP close.
    Close(CloseFrame<'a>),
}

/// One call's progress: bytes consumed from the input and at most one event.
///
/// `consumed == 0` with no event means "need more bytes": keep the input and call again when
/// more has arrived.
#[derive(Debug, PartialEq, Eq)]
pub struct Step<'a> {
    pub consumed: usize,
    pub event: Option<Event<'a>>,
}

/// Per-connection reader state.
#[derive(Debug, Clone)]
pub struct Reader {
    role: Role,
    /// Receiving side of permessage-deflate: (window bits, no context takeover), if negotiated.
    inflate: Option<(u8, bool)>,
    /// Largest message, in bytes (at most 4 GiB).
    max_message: u32,
    /// Payload bytes of the current data frame still to come.
    frame_left: u64,
    frame_mask: Option<[u8; 4]>,
    /// Payload bytes of the current data frame already seen, modulo 256 (the mask offset is
    /// this modulo 4).
    frame_seen: u8,
    frame_fin: bool,
    in_frame: bool,
    /// The message in progress: its kind and whether it is compressed.
    message: Option<(MessageKind, bool)>,
    /// Further data frames the message in progress may have: [`FREE_FRAMES`] at its start,
    /// less one per frame, plus one per payload byte.
    frames_left: u16,
    utf8: Utf8Validator,
}

impl Reader {
    /// A reader for the given role. `inflate` is the receiving side of the negotiated deflate
    /// parameters (see [`super::DeflateParams::receiving`]).
    pub fn new(role: Role, max_message: usize, inflate: Option<(u8, bool)>) -> Reader {
        Reader {
            role,
            inflate,
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            frame_left: 0,
            frame_mask: None,
            frame_seen: 0,
            frame_fin: false,
            in_frame: false,
            message: None,
            frames_left: FREE_FRAMES,
            utf8: Utf8Validator::default(),
        }
    }

    /// Which end this reader serves.
    pub fn role(&self) -> Role {
        self.role
    }

    /// True between messages: the message buffer may be given back.
    pub fn is_between_messages(&self) -> bool {
        self.message.is_none()
    }

    /// Reads from `input`. `message` collects the payload of the message in progress; after an
    /// [`Event::Message`] the caller takes it and clears it. `inflater` is created here on the
    /// first compressed message and dropped after each message when no context is kept.
    pub fn read<'a>(
        &mut self,
        input: &'a mut [u8],
        message: &mut Vec<u8>,
        inflater: &mut Option<Box<Inflater>>,
    ) -> Result<Step<'a>, ProtocolError> {
        if self.in_frame {
            return self.read_payload(input, message, inflater);
        }
        let Some((h, header_len)) = FrameHeader::parse(input)? else {
            return Ok(Step {
                consumed: 0,
                event: None,
            });
        };
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }
        if h.rsv2 || h.rsv3 {
            return Err(ProtocolError::ReservedBits);
        }
        if h.rsv1 && (self.inflate.is_none() || !matches!(h.opcode, OpCode::Text | OpCode::Binary))
        {
            return Err(ProtocolError::ReservedBits);
        }

        if h.opcode.is_control() {
            return Self::control_frame(&h, header_len, input);
        }

        match (h.opcode, self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(_)) => {}
            (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            (op, None) => {
                let kind = if op == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                self.message = Some((kind, h.rsv1));
                self.frames_left = FREE_FRAMES;
                self.utf8.reset();
            }
        }
        if self.frames_left == 0 {
            return Err(ProtocolError::TooManyFrames);
        }
        let credit = u16::try_from(h.payload_len).unwrap_or(u16::MAX);
        self.frames_left = (self.frames_left - 1).saturating_add(credit);
        let compressed = self.message.is_some_and(|(_, c)| c);
        // Limits are checked before any byte is kept: uncompressed sizes are known up front.
        if !compressed
            && (message.len() as u64).saturating_add(h.payload_len) > u64::from(self.max_message)
        {
            return Err(ProtocolError::MessageTooBig {
                limit: self.max_message as usize,
            });
        }
        self.in_frame = true;
        self.frame_left = h.payload_len;
        self.frame_mask = h.mask;
        self.frame_seen = 0;
        self.frame_fin = h.fin;
        if h.payload_len == 0 {
            self.in_frame = false;
            if h.fin {
                self.finish_message(message, inflater)?;
                return Ok(Step {
                    consumed: header_len,
                    event: Some(Event::Message(self.take_kind())),
                });
            }
        }
        Ok(Step {
            consumed: header_len,
            event: None,
        })
    }

    /// A control frame, taken only whole: the event it is (a close is validated here).
    fn control_frame<'a>(
        h: &FrameHeader,
        header_len: usize,
        input: &'a mut [u8],
    ) -> Result<Step<'a>, ProtocolError> {
        let end = header_len + h.payload_len as usize;
        if input.len() < end {
            return Ok(Step {
                consumed: 0,
                event: None,
            });
        }
        let payload = &mut input[header_len..end];
        if let Some(key) = h.mask {
            apply_mask(payload, key, 0);
        }
        let payload: &'a [u8] = payload;
        let event = match h.opcode {
            OpCode::Ping => Event::Ping(payload),
            OpCode::Pong => Event::Pong(payload),
            _ => Event::Close(parse_close_payload(payload)?),
        };
        Ok(Step {
            consumed: end,
            event: Some(event),
        })
    }

    fn read_payload<'a>(
        &mut self,
        input: &'a mut [u8],
        message: &mut Vec<u8>,
        inflater: &mut Option<Box<Inflater>>,
    ) -> Result<Step<'a>, ProtocolError> {
        let n = (self.frame_left.min(input.len() as u64)) as usize;
        if n == 0 {
            return Ok(Step {
                consumed: 0,
                event: None,
            });
        }
        let chunk = &mut input[..n];
        if let Some(key) = self.frame_mask {
            apply_mask(chunk, key, (self.frame_seen & 3) as usize);
        }
        self.frame_seen = self.frame_seen.wrapping_add(n as u8);
        self.frame_left -= n as u64;
        let (kind, compressed) = self.message.expect("a data frame belongs to a message");
        if compressed {
            let start = message.len();
            let inf = self.inflater(inflater);
            inf.inflate(chunk, message, self.max_message as usize)?;
            if kind == MessageKind::Text {
                self.utf8
                    .feed(&message[start..])
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        } else {
            if kind == MessageKind::Text {
                self.utf8
                    .feed(chunk)
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            message.extend_from_slice(chunk);
        }
        if self.frame_left > 0 {
            return Ok(Step {
                consumed: n,
                event: None,
            });
        }
        self.in_frame = false;
        if !self.frame_fin {
            return Ok(Step {
                consumed: n,
                event: None,
            });
        }
        self.finish_message(message, inflater)?;
        Ok(Step {
            consumed: n,
            event: Some(Event::Message(self.take_kind())),
        })
    }

    fn inflater<'i>(&self, slot: &'i mut Option<Box<Inflater>>) -> &'i mut Inflater {
        let (bits, no_ctx) = self
            .inflate
            .expect("compressed messages only when deflate is negotiated");
        slot.get_or_insert_with(|| Box::new(Inflater::new(bits, no_ctx)))
    }

    fn finish_message(
        &mut self,
        message: &mut Vec<u8>,
        inflater: &mut Option<Box<Inflater>>,
    ) -> Result<(), ProtocolError> {
        let (kind, compressed) = self.message.expect("a message is in progress");
        if compressed {
            let start = message.len();
            let inf = self.inflater(inflater);
            inf.finish(message, self.max_message as usize)?;
            if !inf.keeps_context() {
                *inflater = None;
            }
            if kind == MessageKind::Text {
                self.utf8
                    .feed(&message[start..])
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        }
        if kind == MessageKind::Text && !self.utf8.is_complete() {
            return Err(ProtocolError::InvalidUtf8);
        }
        Ok(())
    }

    fn take_kind(&mut self) -> MessageKind {
        self.message.take().expect("a message is in progress").0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::close::CloseCode;
    use crate::proto::deflate::Deflater;
    use crate::proto::frame::write_frame;

    const KEY: Option<[u8; 4]> = Some([0xa1, 0xb2, 0xc3, 0xd4]);

    /// Feeds `wire` to a server reader in pieces of `split` bytes, keeping unconsumed bytes the
    /// way the event loop does, and returns what came out.
    fn drive(reader: &mut Reader, wire: &[u8], split: usize) -> Result<Vec<String>, ProtocolError> {
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut msg = Vec::new();
        let mut inflater = None;
        for piece in wire.chunks(split.max(1)) {
            pending.extend_from_slice(piece);
            let mut pos = 0;
            loop {
                let step = reader.read(&mut pending[pos..], &mut msg, &mut inflater)?;
                pos += step.consumed;
                match step.event {
                    Some(Event::Message(kind)) => {
                        out.push(format!("{kind:?}:{}", String::from_utf8_lossy(&msg)));
                        msg.clear();
                    }
                    Some(Event::Ping(p)) => {
                        out.push(format!("ping:{}", String::from_utf8_lossy(p)))
                    }
                    Some(Event::Pong(p)) => {
                        out.push(format!("pong:{}", String::from_utf8_lossy(p)))
                    }
                    Some(Event::Close(c)) => {
                        out.push(format!("close:{:?}:{}", c.code.map(|c| c.0), c.reason))
                    }
                    None if step.consumed == 0 => break,
                    None => {}
                }
            }
            pending.drain(..pos);
        }
        Ok(out)
    }

    fn server() -> Reader {
        Reader::new(Role::Server, 1 << 20, None)
    }

    #[test]
    fn fragmented_message_with_interleaved_control_frames_in_every_split() {
        let mut wire = Vec::new();
        write_frame(&mut wire, false, OpCode::Text, false, KEY, b"Hel");
        write_frame(&mut wire, true, OpCode::Ping, false, KEY, b"p1");
        write_frame(&mut wire, false, OpCode::Continuation, false, KEY, b"");
        write_frame(
            &mut wire,
            true,
            OpCode::Continuation,
            false,
            KEY,
            "lo κόσμε".as_bytes(),
        );
        write_frame(&mut wire, true, OpCode::Binary, false, KEY, &[]);
        write_frame(
            &mut wire,
            true,
            OpCode::Close,
            false,
            KEY,
            &[0x03, 0xe8, b'b', b'y', b'e'],
        );
        for split in 1..=wire.len() {
            let got = drive(&mut server(), &wire, split).unwrap();
            assert_eq!(
                got,
                [
                    "ping:p1",
                    "Text:Hello κόσμε",
                    "Binary:",
                    "close:Some(1000):bye"
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn role_and_sequence_violations() {
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (
                {
                    let mut w = Vec::new();
                    write_frame(&mut w, true, OpCode::Text, false, None, b"x");
                    w
                },
                ProtocolError::UnmaskedClientFrame,
            ),
            (
                {
                    let mut w = Vec::new();
                    write_frame(&mut w, true, OpCode::Continuation, false, KEY, b"x");
                    w
                },
                ProtocolError::UnexpectedContinuation,
            ),
            (
                {
                    let mut w = Vec::new();
                    write_frame(&mut w, false, OpCode::Text, false, KEY, b"x");
                    write_frame(&mut w, true, OpCode::Text, false, KEY, b"y");
                    w
                },
                ProtocolError::ExpectedContinuation,
            ),
            (
                {
                    let mut w = Vec::new();
                    write_frame(&mut w, true, OpCode::Text, true, KEY, b"x");
                    w
                },
                ProtocolError::ReservedBits,
            ),
            (
                vec![0x81 | 0x20, 0x80, 0, 0, 0, 0],
                ProtocolError::ReservedBits,
            ),
            (
                vec![0x83, 0x80, 0, 0, 0, 0],
                ProtocolError::ReservedOpcode(3),
            ),
        ];
        for (wire, err) in cases {
            assert_eq!(drive(&mut server(), &wire, 1000), Err(err));
        }
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_ends() {
        let mut wire = Vec::new();
        let mut payload = b"valid ".to_vec();
        payload.extend_from_slice(b"\xed\xa0\x80");
        payload.extend_from_slice(&[b'a'; 100]);
        write_frame(&mut wire, true, OpCode::Text, false, KEY, &payload);
        // Only the header and the first 9 payload bytes: already rejected.
        let head = 2 + 4 + 9;
        assert_eq!(
            drive(&mut server(), &wire[..head], 3),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn size_limit_is_checked_from_the_header() {
        let mut reader = Reader::new(Role::Server, 100, None);
        let header = crate::proto::frame::HeaderBuf::new(OpCode::Binary, false, KEY, 101);
        assert_eq!(
            drive(&mut reader, header.as_bytes(), 100),
            Err(ProtocolError::MessageTooBig { limit: 100 })
        );
        // Across fragments too.
        let mut wire = Vec::new();
        write_frame(&mut wire, false, OpCode::Binary, false, KEY, &[0; 60]);
        write_frame(&mut wire, true, OpCode::Continuation, false, KEY, &[0; 41]);
        let mut reader = Reader::new(Role::Server, 100, None);
        assert_eq!(
            drive(&mut reader, &wire, 7),
            Err(ProtocolError::MessageTooBig { limit: 100 })
        );
    }

    #[test]
    fn endless_empty_fragments_are_refused_but_fragments_with_data_are_not() {
        let mut wire = Vec::new();
        write_frame(&mut wire, false, OpCode::Binary, false, KEY, b"");
        for _ in 0..FREE_FRAMES - 2 {
            write_frame(&mut wire, false, OpCode::Continuation, false, KEY, b"");
        }
        // FREE_FRAMES frames in all: accepted.
        let mut ok = wire.clone();
        write_frame(&mut ok, true, OpCode::Continuation, false, KEY, b"x");
        assert_eq!(drive(&mut server(), &ok, 4096).unwrap(), ["Binary:x"]);
        // One more: refused.
        write_frame(&mut wire, false, OpCode::Continuation, false, KEY, b"");
        write_frame(&mut wire, true, OpCode::Continuation, false, KEY, b"x");
        assert_eq!(
            drive(&mut server(), &wire, 4096),
            Err(ProtocolError::TooManyFrames)
        );
        assert_eq!(ProtocolError::TooManyFrames.close_code(), CloseCode::POLICY);
        // One byte per frame, far past the free frames: every frame carries data.
        let mut wire = Vec::new();
        write_frame(&mut wire, false, OpCode::Text, false, KEY, b"a");
        for _ in 0..3 * FREE_FRAMES {
            write_frame(&mut wire, false, OpCode::Continuation, false, KEY, b"b");
        }
        write_frame(&mut wire, true, OpCode::Continuation, false, KEY, b"");
        let text = format!("Text:a{}", "b".repeat(3 * FREE_FRAMES as usize));
        assert_eq!(drive(&mut server(), &wire, 999).unwrap(), [text]);
    }

    #[test]
    fn compressed_messages_with_context_takeover() {
        let mut d = Deflater::new(15, false, 6);
        let mut wire = Vec::new();
        for text in ["hello hello hello", "hello hello hello again", ""] {
            let mut c = Vec::new();
            d.compress(text.as_bytes(), &mut c);
            // Split the compressed payload over two frames; RSV1 only on the first.
            let (a, b) = c.split_at(c.len() / 2);
            write_frame(&mut wire, false, OpCode::Text, true, KEY, a);
            write_frame(&mut wire, true, OpCode::Continuation, false, KEY, b);
        }
        for split in [1, 5, 1000] {
            let mut reader = Reader::new(Role::Server, 1 << 20, Some((15, false)));
            let got = drive(&mut reader, &wire, split).unwrap();
            assert_eq!(
                got,
                [
                    "Text:hello hello hello",
                    "Text:hello hello hello again",
                    "Text:"
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn client_role_reads_unmasked_frames() {
        let mut wire = Vec::new();
        write_frame(&mut wire, true, OpCode::Binary, false, None, b"abc");
        let mut reader = Reader::new(Role::Client, 100, None);
        assert_eq!(drive(&mut reader, &wire, 2).unwrap(), ["Binary:abc"]);
        let mut masked = Vec::new();
        write_frame(&mut masked, true, OpCode::Binary, false, KEY, b"abc");
        assert_eq!(
            drive(&mut Reader::new(Role::Client, 100, None), &masked, 2),
            Err(ProtocolError::MaskedServerFrame)
        );
    }

    #[test]
    fn bad_close_frames() {
        let mut wire = Vec::new();
        write_frame(
            &mut wire,
            true,
            OpCode::Close,
            false,
            KEY,
            &1005u16.to_be_bytes(),
        );
        assert_eq!(
            drive(&mut server(), &wire, 100),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            ProtocolError::InvalidCloseCode(1005).close_code(),
            CloseCode::PROTOCOL_ERROR
        );
    }
}
