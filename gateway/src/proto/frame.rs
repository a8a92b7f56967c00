//! Frame headers (RFC 6455 section 5.2): parsing and encoding for every payload-length form.
//!
//! Parsing is pure: it looks at a byte slice, returns `Ok(None)` when more bytes are needed and
//! consumes nothing until the whole header is there. Encoding writes into a stack array, so a
//! frame goes out as `[header, payload]` without copying the payload.

use super::error::ProtocolError;
use super::mask::apply_mask;

/// The longest header: 2 bytes + 8 bytes of extended length + 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;
/// Control frames carry at most this many payload bytes (RFC 6455 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes; the reserved values are rejected while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xa,
}

impl OpCode {
    /// Decodes the low nibble of the first header byte.
    pub fn from_u8(v: u8) -> Result<OpCode, ProtocolError> {
        Ok(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub rsv1: bool,
    pub rsv2: bool,
    pub rsv3: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`.
    ///
    /// Returns the header and its encoded length, or `Ok(None)` if `buf` holds only part of it.
    /// Checks what the header alone can tell: reserved opcodes, control frame shape, and the
    /// 64-bit length's top bit. Role rules (masking) and RSV rules belong to the reader.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + ext + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return Ok(None);
        }
        let payload_len = match ext {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
            _ => {
                let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(ProtocolError::PayloadLengthOverflow);
                }
                len
            }
        };
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooLong);
            }
        }
        let mask = masked.then(|| {
            let at = 2 + ext;
            [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
        });
        let header = FrameHeader {
            fin,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, header_len)))
    }

    /// Encodes the header into `out` using the shortest length form; returns the bytes written.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7)
            | (u8::from(self.rsv1) << 6)
            | (u8::from(self.rsv2) << 5)
            | (u8::from(self.rsv3) << 4)
            | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = if self.payload_len < 126 {
            out[1] = mask_bit | self.payload_len as u8;
            2
        } else if self.payload_len <= u64::from(u16::MAX) {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            4
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            10
        };
        if let Some(key) = self.mask {
            out[n..n + 4].copy_from_slice(&key);
            n += 4;
        }
        n
    }
}

/// An encoded header held on the stack.
#[derive(Debug, Clone, Copy)]
pub struct HeaderBuf {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl HeaderBuf {
    /// Encodes the header of a single (FIN) frame.
    pub fn new(opcode: OpCode, rsv1: bool, mask: Option<[u8; 4]>, payload_len: usize) -> HeaderBuf {
        Self::frame(true, opcode, rsv1, mask, payload_len)
    }

    /// Encodes a header with an explicit FIN bit (for fragmented sends).
    pub fn frame(
        fin: bool,
        opcode: OpCode,
        rsv1: bool,
        mask: Option<[u8; 4]>,
        payload_len: usize,
    ) -> HeaderBuf {
        let header = FrameHeader {
            fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask,
            payload_len: payload_len as u64,
        };
        let mut bytes = [0u8; MAX_HEADER_LEN];
        let len = header.encode(&mut bytes) as u8;
        HeaderBuf { bytes, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Appends a whole frame to `out`, masking the payload copy when `mask` is given (client side).
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    rsv1: bool,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let header = HeaderBuf::frame(fin, opcode, rsv1, mask, payload.len());
    out.reserve(header.as_bytes().len() + payload.len());
    out.extend_from_slice(header.as_bytes());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_length_form() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 20, (1 << 63) - 1] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let h = FrameHeader {
                    fin: len % 2 == 0,
                    rsv1: true,
                    rsv2: false,
                    rsv3: false,
                    opcode: OpCode::Binary,
                    mask,
                    payload_len: len,
                };
                let mut buf = [0u8; MAX_HEADER_LEN];
                let n = h.encode(&mut buf);
                let expected =
                    2 + if len < 126 {
                        0
                    } else if len < 65536 {
                        2
                    } else {
                        8
                    } + if mask.is_some() { 4 } else { 0 };
                assert_eq!(n, expected);
                assert_eq!(FrameHeader::parse(&buf[..n]), Ok(Some((h, n))));
                // Every strict prefix asks for more bytes and consumes nothing.
                for cut in 0..n {
                    assert_eq!(
                        FrameHeader::parse(&buf[..cut]),
                        Ok(None),
                        "len {len} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_what_the_header_alone_forbids() {
        assert_eq!(
            FrameHeader::parse(&[0x83, 0x00]),
            Err(ProtocolError::ReservedOpcode(3))
        );
        assert_eq!(
            FrameHeader::parse(&[0x8b, 0x00]),
            Err(ProtocolError::ReservedOpcode(0xb))
        );
        assert_eq!(
            FrameHeader::parse(&[0x09, 0x00]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            FrameHeader::parse(&[0x89, 0x7e, 0x00, 0x7e]),
            Err(ProtocolError::ControlFrameTooLong)
        );
        let mut big = [0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            FrameHeader::parse(&big),
            Err(ProtocolError::PayloadLengthOverflow)
        );
        big[2] = 0x7f;
        assert!(FrameHeader::parse(&big).unwrap().is_some());
    }

    #[test]
    fn rfc_examples() {
        // RFC 6455 5.7: unmasked "Hello" and a 256-byte binary header.
        let mut out = Vec::new();
        write_frame(&mut out, true, OpCode::Text, false, None, b"Hello");
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        let h = HeaderBuf::new(OpCode::Binary, false, None, 256);
        assert_eq!(h.as_bytes(), [0x82, 0x7e, 0x01, 0x00]);
        let mut masked = Vec::new();
        write_frame(
            &mut masked,
            true,
            OpCode::Text,
            false,
            Some([0x37, 0xfa, 0x21, 0x3d]),
            b"Hello",
        );
        assert_eq!(
            masked,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
    }
}
