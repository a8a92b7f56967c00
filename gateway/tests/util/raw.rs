//! A hand-written WebSocket client over a plain `TcpStream`.
//!
//! It does what a conforming client library refuses to: fragments messages on demand, sends
//! unmasked frames, reserved opcodes, bad close codes, half a handshake. Frames are encoded and
//! parsed here (not with `gateway::proto`), and every frame from the server is checked to be
//! unmasked, so the gateway's codec is tested against an independent one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::http::{Response, parse_head};
use super::{Rng, tcp_connect};

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xa;

/// A frame as received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv1: bool,
    pub rsv2: bool,
    pub rsv3: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame, if it is one and has a code.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Encodes one frame, masked with `mask` when given (clients must mask; tests of the unmasked
/// rule pass `None`). The first byte's low nibble is `opcode` as is, so reserved opcodes can be
/// sent; `rsv` is the three RSV bits (0b100 is RSV1).
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push((u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (opcode & 0x0f));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    encode_len(&mut out, mask_bit, payload.len() as u64);
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            // The reference masking of RFC 6455 5.3, byte by byte.
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Writes the second header byte and the extended length in the shortest form.
fn encode_len(out: &mut Vec<u8>, mask_bit: u8, len: u64) {
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// A whole (FIN) masked frame without RSV bits: what a conforming client sends.
pub fn masked(opcode: u8, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
    encode_frame(true, 0, opcode, Some(key), payload)
}

/// Only the header of a masked frame announcing `len` payload bytes (for the read-limit test,
/// which must be answered before any payload is sent).
pub fn encode_header_only(opcode: u8, len: u64, mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    encode_len(&mut out, 0x80, len);
    out.extend_from_slice(&mask);
    out
}

/// A raw connection, buffered on the read side so a response head and the frames right after
/// it can be told apart.
#[derive(Debug)]
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    rng: Rng,
    /// Bytes received so far, for failure messages.
    received: usize,
}

/// A TCP connection to the gateway, wrapped but with nothing sent yet.
pub fn raw_connect(addr: SocketAddr) -> RawWs {
    RawWs::new(tcp_connect(addr))
}

/// The text of an upgrade request for `path` with `key` and the extra header lines.
pub fn upgrade_request(addr: SocketAddr, path: &str, key: &str, extra: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Sends an upgrade request for `path` and returns the connection and the response head,
/// whatever its status.
pub fn try_raw_handshake(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> (RawWs, Response) {
    let mut ws = raw_connect(addr);
    let key = tungstenite::handshake::client::generate_key();
    ws.send_raw(upgrade_request(addr, path, &key, extra).as_bytes());
    let head = ws.read_response_head();
    if head.status == 101 {
        let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
        assert_eq!(
            head.header("sec-websocket-accept"),
            Some(expected.as_str()),
            "101 with a wrong Sec-WebSocket-Accept"
        );
    }
    (ws, head)
}

/// Opens a WebSocket on `/echo` by hand, with extra request headers; fails unless 101.
pub fn raw_handshake(addr: SocketAddr, extra: &[(&str, &str)]) -> (RawWs, Response) {
    let (ws, head) = try_raw_handshake(addr, "/echo", extra);
    assert_eq!(head.status, 101, "upgrade refused: {head:?}");
    (ws, head)
}

impl RawWs {
    pub fn new(stream: TcpStream) -> RawWs {
        let seed = stream.local_addr().map_or(7, |a| u64::from(a.port()));
        RawWs {
            stream,
            buf: Vec::new(),
            pos: 0,
            rng: Rng::new(seed),
            received: 0,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the gateway");
    }

    /// Sends one masked frame with a fresh mask key.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let key = self.rng.mask_key();
        self.send_raw(&encode_frame(fin, 0, opcode, Some(key), payload));
    }

    /// Sends one masked frame with the given RSV bits (0b100: RSV1, "compressed").
    pub fn send_frame_rsv(&mut self, fin: bool, rsv: u8, opcode: u8, payload: &[u8]) {
        let key = self.rng.mask_key();
        self.send_raw(&encode_frame(fin, rsv, opcode, Some(key), payload));
    }

    /// Sends a whole (unfragmented) masked text message.
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, TEXT, text.as_bytes());
    }

    /// Sends a masked close frame with a code and reason.
    pub fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send_frame(true, CLOSE, &payload);
    }

    /// Reads into the buffer; returns the bytes read (0 at EOF).
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.received += n;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Buffered bytes not consumed yet.
    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Makes sure `n` bytes are buffered; false on a clean EOF before that.
    fn fill_to(&mut self, n: usize) -> bool {
        while self.pending().len() < n {
            match self.fill() {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) => panic!(
                    "reading from the gateway failed with {} bytes of {n} buffered, {} received \
                     in all: {e}",
                    self.pending().len(),
                    self.received
                ),
            }
        }
        true
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        out
    }

    /// Reads an HTTP response head (and its body when it has a `Content-Length`), leaving any
    /// bytes after it (frames) buffered.
    pub fn read_response_head(&mut self) -> Response {
        let head_len = loop {
            if let Some(i) = find(self.pending(), b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.pending().len() < 64 * 1024,
                "response head never ended"
            );
            match self.fill() {
                Ok(0) => panic!(
                    "connection closed before a complete response head: {:?}",
                    String::from_utf8_lossy(self.pending())
                ),
                Ok(_) => {}
                Err(e) => panic!("reading the response head failed: {e}"),
            }
        };
        let head = self.take(head_len);
        let mut resp = parse_head(&head);
        if resp.status != 101
            && let Some(len) = resp.header("content-length")
        {
            let len: usize = len.parse().expect("numeric Content-Length");
            assert!(
                self.fill_to(len),
                "connection closed inside the response body"
            );
            resp.body = self.take(len);
        }
        resp
    }

    /// Reads the next frame; `None` on a clean EOF at a frame boundary.
    pub fn try_read_frame(&mut self) -> Option<Frame> {
        if !self.fill_to(2) {
            assert!(
                self.pending().is_empty(),
                "EOF inside a frame header: {:?}, {} bytes received in all",
                self.pending(),
                self.received
            );
            return None;
        }
        let (b0, b1) = (self.pending()[0], self.pending()[1]);
        assert_eq!(
            b1 & 0x80,
            0,
            "the server sent a masked frame (RFC 6455 5.1)"
        );
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        assert!(
            self.fill_to(2 + ext),
            "EOF inside a frame header, {} bytes received in all",
            self.received
        );
        let header = self.take(2 + ext);
        let len = match ext {
            0 => u64::from(b1 & 0x7f),
            2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            _ => u64::from_be_bytes(header[2..10].try_into().unwrap()),
        } as usize;
        assert!(
            self.fill_to(len),
            "EOF inside a {len}-byte frame payload, {} of its bytes and {} in all received",
            self.pending().len(),
            self.received
        );
        Some(Frame {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode: b0 & 0x0f,
            payload: self.take(len),
        })
    }

    /// Reads the next frame; an EOF fails the test.
    pub fn read_frame(&mut self) -> Frame {
        self.try_read_frame()
            .expect("the gateway closed the connection where a frame was expected")
    }

    /// Reads the next frame and checks it is one whole unfragmented, uncompressed message of
    /// `opcode` with exactly `payload`.
    pub fn expect_message(&mut self, opcode: u8, payload: &[u8]) {
        let f = self.read_frame();
        assert_eq!(
            (f.fin, f.rsv1, f.rsv2, f.rsv3, f.opcode),
            (true, false, false, false, opcode),
            "frame header (payload {:?})",
            String::from_utf8_lossy(&f.payload[..f.payload.len().min(200)])
        );
        assert!(
            f.payload == payload,
            "payload differs: got {} bytes {:?}..., expected {} bytes {:?}...",
            f.payload.len(),
            &f.payload[..f.payload.len().min(32)],
            payload.len(),
            &payload[..payload.len().min(32)]
        );
    }

    /// Reads the next frame and checks it is the text `text`.
    pub fn expect_text(&mut self, text: &str) {
        self.expect_message(TEXT, text.as_bytes());
    }

    /// Reads the next frame and checks it is a pong carrying `payload`.
    pub fn expect_pong(&mut self, payload: &[u8]) {
        self.expect_message(PONG, payload);
    }

    /// Reads the next frame and checks it is a close frame with `code` and a UTF-8 reason;
    /// returns the reason.
    pub fn expect_close(&mut self, code: u16) -> String {
        self.expect_close_for(code, "close")
    }

    /// [`RawWs::expect_close`], naming the case under test in a failure.
    pub fn expect_close_for(&mut self, code: u16, what: &str) -> String {
        let f = self.read_frame();
        assert!(
            f.fin && f.opcode == CLOSE && f.close_code() == Some(code),
            "{what}: expected close {code}, got {f:?} ({:?})",
            String::from_utf8_lossy(&f.payload)
        );
        String::from_utf8(f.payload[2..].to_vec()).expect("close reason is UTF-8")
    }

    /// Reads and discards data frames until a close frame, which must carry `code`; returns the
    /// reason. For a client that fell behind and is being closed.
    pub fn drain_until_close(&mut self, code: u16) -> String {
        loop {
            let f = self.read_frame();
            if f.opcode == CLOSE {
                assert_eq!(f.close_code(), Some(code), "close frame {f:?}");
                return String::from_utf8(f.payload[2..].to_vec()).expect("close reason is UTF-8");
            }
        }
    }

    /// Checks the server has closed the connection: the next read is a clean EOF, with no
    /// bytes before it.
    pub fn expect_eof(&mut self) {
        if let Some(f) = self.try_read_frame() {
            panic!("expected the connection to close, got {f:?}");
        }
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
