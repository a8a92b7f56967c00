//! The opening handshake (RFC 6455 section 4) for both roles: the request head, the decision
//! and the 101 answer. Other HTTP answers are written by `crate::http`.
//!
//! HTTP parsing is httparse's; this module adds the WebSocket rules on top. Nothing here reads a
//! socket: the caller lends the request bytes and the header storage, and gets back either a
//! decision or `Ok(None)` ("the head is not complete yet").

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use core::fmt;
use sha1::{Digest, Sha1};

use super::deflate::{self, DeflateConfig, DeflateParams};

/// The GUID every accept key is derived with (RFC 6455 1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The largest request head accepted; a longer one is answered 431.
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// The most header lines accepted; more is answered 431.
pub const MAX_HEADERS: usize = 48;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    B64.encode(sha.finalize())
}

/// Why a request head was refused; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not parseable as HTTP/1.x (400).
    Malformed(&'static str),
    /// The head is longer than [`MAX_HEAD_LEN`] or has more than [`MAX_HEADERS`] lines (431).
    HeadTooLarge,
    /// An upgrade with a method other than GET (405).
    MethodNotAllowed,
    /// A WebSocket endpoint asked for without `Upgrade: websocket` (426).
    UpgradeRequired,
    /// `Sec-WebSocket-Version` other than 13 (426, with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// A required header is missing or wrong (400); names the header.
    BadHeader(&'static str),
    /// The origin policy refused the request's `Origin` (403).
    OriginRefused,
}

impl HandshakeError {
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::Malformed(_) | HandshakeError::BadHeader(_) => 400,
            HandshakeError::HeadTooLarge => 431,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UpgradeRequired | HandshakeError::UnsupportedVersion => 426,
            HandshakeError::OriginRefused => 403,
        }
    }

    /// Headers the refusal must carry (RFC 6455 4.2.2: a version refusal names the version
    /// the server speaks).
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            HandshakeError::UpgradeRequired => {
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
            }
            HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
            HandshakeError::MethodNotAllowed => &[("Allow", "GET")],
            _ => &[],
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed(what) => write!(f, "malformed HTTP request: {what}"),
            HandshakeError::HeadTooLarge => write!(
                f,
                "request head over {MAX_HEAD_LEN} bytes or {MAX_HEADERS} headers"
            ),
            HandshakeError::MethodNotAllowed => f.write_str("a WebSocket upgrade must use GET"),
            HandshakeError::UpgradeRequired => {
                f.write_str("this is a WebSocket endpoint: send Upgrade: websocket")
            }
            HandshakeError::UnsupportedVersion => {
                f.write_str("only Sec-WebSocket-Version 13 is supported")
            }
            HandshakeError::BadHeader(h) => write!(f, "missing or invalid {h} header"),
            HandshakeError::OriginRefused => f.write_str("origin not allowed"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A parsed HTTP request head, borrowing the input bytes and the caller's header storage.
#[derive(Debug)]
pub struct Request<'h, 'b> {
    pub method: &'b str,
    /// The request target as sent: path and optional query.
    pub target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: &'h [httparse::Header<'b>],
    /// Length of the head including the blank line; a body starts here.
    pub head_len: usize,
}

impl<'h, 'b> Request<'h, 'b> {
    /// Parses a request head; `Ok(None)` means more bytes are needed.
    pub fn parse(
        buf: &'b [u8],
        storage: &'h mut [httparse::Header<'b>],
    ) -> Result<Option<Self>, HandshakeError> {
        let mut req = httparse::Request::new(storage);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) if head_len > MAX_HEAD_LEN => {
                Err(HandshakeError::HeadTooLarge)
            }
            Ok(httparse::Status::Complete(head_len)) => Ok(Some(Request {
                method: req.method.unwrap_or(""),
                target: req.path.unwrap_or(""),
                version: req.version.unwrap_or(1),
                headers: req.headers,
                head_len,
            })),
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_LEN => {
                Err(HandshakeError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::HeadTooLarge),
            Err(e) => Err(HandshakeError::Malformed(http_error_text(e))),
        }
    }

    /// The path part of the target.
    pub fn path(&self) -> &'b str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// The query string, without `?`.
    pub fn query(&self) -> Option<&'b str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&'b str> {
        self.header_values(name).next()
    }

    /// Every value of a header (headers may repeat), as text; values that are not UTF-8 are skipped.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b str> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| core::str::from_utf8(h.value).ok())
            .map(str::trim)
    }

    /// Whether any value of a comma-separated header lists `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the client asks for a WebSocket upgrade at all.
    pub fn is_upgrade(&self) -> bool {
        self.has_token("Upgrade", "websocket")
    }

    /// Request body length from `Content-Length`: `None` if absent. Every value must be plain
    /// digits (no sign, no list) and all of them the same: two different lengths are how a
    /// request is smuggled past one reader of it into another (RFC 9112 6.3).
    pub fn content_length(&self) -> Result<Option<usize>, HandshakeError> {
        let bad = HandshakeError::BadHeader("Content-Length");
        let mut len = None;
        for h in self
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("Content-Length"))
        {
            let v = h.value.trim_ascii();
            if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                return Err(bad);
            }
            let n = v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
            if len.is_some_and(|l| l != n) {
                return Err(bad);
            }
            len = Some(n);
        }
        Ok(len)
    }

    /// The checks every request passes before it is routed: an HTTP/1.1 request names exactly
    /// one `Host` (RFC 9112 3.2), and its `Content-Length`, if any, is one well-formed number.
    pub fn check_framing(&self) -> Result<(), HandshakeError> {
        let hosts = self
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("Host"))
            .count();
        if hosts > 1 || (self.version >= 1 && hosts == 0) {
            return Err(HandshakeError::BadHeader("Host"));
        }
        self.content_length().map(|_| ())
    }
}

fn http_error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

/// What the server accepts in a handshake.
#[derive(Clone, Copy)]
pub struct ServerPolicy<'a> {
    /// Subprotocols the endpoint speaks, in the server's order of preference.
    pub subprotocols: &'a [String],
    /// Decides on the `Origin` header when present; `None` accepts every origin.
    pub origin: Option<&'a (dyn Fn(&str) -> bool + Send + Sync)>,
    pub deflate: DeflateConfig,
}

impl fmt::Debug for ServerPolicy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerPolicy")
            .field("subprotocols", &self.subprotocols)
            .field("origin_policy", &self.origin.is_some())
            .field("deflate", &self.deflate)
            .finish()
    }
}

/// An accepted upgrade: what goes in the 101 response and what the connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub accept: String,
    pub protocol: Option<String>,
    pub deflate: Option<DeflateParams>,
}

impl Accepted {
    /// The `101 Switching Protocols` response.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
        out.extend_from_slice(self.accept.as_bytes());
        if let Some(p) = &self.protocol {
            out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
            out.extend_from_slice(p.as_bytes());
        }
        if let Some(d) = &self.deflate {
            out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
            out.extend_from_slice(d.to_header().as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// Server side: checks a request that asks for an upgrade (RFC 6455 4.2.1) and decides.
pub fn accept(
    req: &Request<'_, '_>,
    policy: &ServerPolicy<'_>,
) -> Result<Accepted, HandshakeError> {
    if !req.is_upgrade() {
        return Err(HandshakeError::UpgradeRequired);
    }
    if req.method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if req.version < 1 {
        return Err(HandshakeError::Malformed("WebSocket needs HTTP/1.1"));
    }
    if req.header("Host").is_none() {
        return Err(HandshakeError::BadHeader("Host"));
    }
    if !req.has_token("Connection", "upgrade") {
        return Err(HandshakeError::BadHeader("Connection"));
    }
    if req.header("Sec-WebSocket-Version") != Some("13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = req
        .header("Sec-WebSocket-Key")
        .ok_or(HandshakeError::BadHeader("Sec-WebSocket-Key"))?;
    match B64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::BadHeader("Sec-WebSocket-Key")),
    }
    if let (Some(check), Some(origin)) = (policy.origin, req.header("Origin"))
        && !check(origin)
    {
        return Err(HandshakeError::OriginRefused);
    }
    let offered: Vec<&str> = req
        .header_values("Sec-WebSocket-Protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let protocol = offered
        .iter()
        .find(|o| policy.subprotocols.iter().any(|p| p == *o))
        .map(|p| (*p).to_owned());
    let deflate = deflate::negotiate(
        req.header_values("Sec-WebSocket-Extensions"),
        &policy.deflate,
    );
    Ok(Accepted {
        accept: accept_key(key.as_bytes()),
        protocol,
        deflate,
    })
}

/// Client side: a `Sec-WebSocket-Key` from 16 caller-supplied random bytes.
pub fn client_key(random: [u8; 16]) -> String {
    B64.encode(random)
}

/// Client side: writes the upgrade request.
pub fn write_client_request(
    out: &mut Vec<u8>,
    host: &str,
    target: &str,
    key: &str,
    extra: &[(&str, &str)],
) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Client side: what the server agreed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccepted {
    pub protocol: Option<String>,
    pub deflate: Option<DeflateParams>,
    /// Length of the response head; frames may follow right after it.
    pub head_len: usize,
}

/// Client side: why the server's answer is not a valid upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHandshakeError {
    Malformed,
    /// The server answered with another status (e.g. 404, 503).
    Status(u16),
    BadAccept,
    BadExtension,
}

impl fmt::Display for ClientHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientHandshakeError::Malformed => f.write_str("malformed HTTP response"),
            ClientHandshakeError::Status(s) => write!(f, "server answered HTTP {s} instead of 101"),
            ClientHandshakeError::BadAccept => f.write_str("wrong Sec-WebSocket-Accept"),
            ClientHandshakeError::BadExtension => {
                f.write_str("server agreed to an extension that was not offered")
            }
        }
    }
}

impl std::error::Error for ClientHandshakeError {}

/// Client side: checks the server's response head; `Ok(None)` means more bytes are needed.
pub fn parse_client_response(
    buf: &[u8],
    key: &str,
) -> Result<Option<ClientAccepted>, ClientHandshakeError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_LEN => return Ok(None),
        _ => return Err(ClientHandshakeError::Malformed),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(ClientHandshakeError::Status(code));
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| core::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if header("Sec-WebSocket-Accept") != Some(accept_key(key.as_bytes()).as_str()) {
        return Err(ClientHandshakeError::BadAccept);
    }
    let deflate = match header("Sec-WebSocket-Extensions") {
        None => None,
        Some(v) => Some(deflate::parse_response(v).ok_or(ClientHandshakeError::BadExtension)?),
    };
    Ok(Some(ClientAccepted {
        protocol: header("Sec-WebSocket-Protocol").map(str::to_owned),
        deflate,
        head_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "GET /echo?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n";

    fn policy() -> ServerPolicy<'static> {
        ServerPolicy {
            subprotocols: &[],
            origin: None,
            deflate: DeflateConfig::default(),
        }
    }

    fn decide(raw: &str, policy: &ServerPolicy<'_>) -> Result<Accepted, HandshakeError> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let req = Request::parse(raw.as_bytes(), &mut storage)?.expect("complete head");
        accept(&req, policy)
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accepts_a_valid_request_and_picks_a_subprotocol() {
        let protos = vec!["superchat".to_string(), "chat".to_string()];
        let p = ServerPolicy {
            subprotocols: &protos,
            ..policy()
        };
        let a = decide(REQ, &p).unwrap();
        assert_eq!(a.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        // The client's order wins among protocols the server speaks.
        assert_eq!(a.protocol.as_deref(), Some("chat"));
        let mut out = Vec::new();
        a.write_response(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat\r\n"));
    }

    #[test]
    fn refusals_map_to_statuses() {
        let table: &[(&str, &str, u16)] = &[
            ("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 426),
            ("Upgrade: WebSocket", "Upgrade: h2c", 426),
            ("GET", "POST", 405),
            (
                "Connection: keep-alive, Upgrade",
                "Connection: keep-alive",
                400,
            ),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==", 400),
            ("Host: example.com\r\n", "", 400),
        ];
        for (from, to, status) in table {
            let raw = REQ.replacen(from, to, 1);
            assert_eq!(
                decide(&raw, &policy()).map_err(|e| e.status()),
                Err(*status),
                "{from} -> {to}"
            );
        }
        let refuse = |o: &str| o == "https://good.example";
        let p = ServerPolicy {
            origin: Some(&refuse),
            ..policy()
        };
        assert_eq!(decide(REQ, &p), Err(HandshakeError::OriginRefused));
    }

    #[test]
    fn partial_and_oversized_heads() {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(
            Request::parse(&REQ.as_bytes()[..40], &mut storage)
                .unwrap()
                .is_none()
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_LEN + 10, b'a');
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert_eq!(
            Request::parse(&big, &mut storage).unwrap_err(),
            HandshakeError::HeadTooLarge
        );
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert_eq!(
            Request::parse(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", &mut storage)
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn client_side_roundtrip() {
        let key = client_key([7; 16]);
        let mut req = Vec::new();
        write_client_request(
            &mut req,
            "localhost",
            "/echo",
            &key,
            &[("Sec-WebSocket-Extensions", deflate::client_offer())],
        );
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let parsed = Request::parse(&req, &mut storage).unwrap().unwrap();
        let accepted = accept(&parsed, &policy()).unwrap();
        let mut resp = Vec::new();
        accepted.write_response(&mut resp);
        let head_len = resp.len();
        resp.extend_from_slice(b"\x81\x00");
        let c = parse_client_response(&resp, &key).unwrap().unwrap();
        assert_eq!(c.head_len, head_len);
        assert!(c.deflate.unwrap().server_no_context_takeover);
        assert_eq!(
            parse_client_response(&resp, &client_key([8; 16])),
            Err(ClientHandshakeError::BadAccept)
        );
    }
}
