//! Writing HTTP/1.1 responses: status lines with their reason phrases, headers, body. Every
//! answer the gateway gives other than the 101 of an upgrade is written here.

use std::io::Write as _;

use crate::proto::handshake::HandshakeError;

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const HTML: &str = "text/html; charset=utf-8";
pub const JSON: &str = "application/json";

/// Standard reason phrases for the statuses the gateway sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// One response, ready to be written.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    pub status: u16,
    pub headers: &'a [(&'a str, &'a str)],
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// The connection stays open for another request.
    pub keep_alive: bool,
}

impl<'a> Response<'a> {
    /// A response that closes the connection.
    pub fn new(status: u16, content_type: &'a str, body: &'a [u8]) -> Response<'a> {
        Response {
            status,
            headers: &[],
            content_type,
            body,
            keep_alive: false,
        }
    }

    pub fn headers(self, headers: &'a [(&'a str, &'a str)]) -> Response<'a> {
        Response { headers, ..self }
    }

    /// Appends the whole response (head and body) to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        self.write_head(out);
        out.extend_from_slice(self.body);
    }

    /// Appends the head only (the answer to `HEAD`), with the body's `Content-Length`.
    pub fn write_head(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len(),
            if self.keep_alive {
                "keep-alive"
            } else {
                "close"
            }
        );
        for (name, value) in self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The plain-text body of a bare status: its reason phrase in lower case.
pub fn status_text(status: u16) -> String {
    format!("{}\n", reason_phrase(status).to_ascii_lowercase())
}

/// Appends the answer to a refused handshake (the connection is closed after it).
pub fn write_refusal(e: &HandshakeError, out: &mut Vec<u8>) {
    let body = format!("{e}\n");
    Response::new(e.status(), TEXT, body.as_bytes())
        .headers(e.headers())
        .write(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every status the gateway sends (grep `Response::new`, `respond_status`, `refused(`,
    /// `HandshakeError::status` and the canned 503s) has its reason phrase.
    #[test]
    fn every_status_sent_has_its_reason_phrase() {
        let sent = [101, 200, 400, 401, 403, 404, 405, 411, 413, 426, 431, 503];
        for status in sent {
            assert_ne!(reason_phrase(status), "Unknown", "{status}");
        }
        assert_eq!(reason_phrase(411), "Length Required");
    }

    #[test]
    fn responses_carry_length_connection_and_headers() {
        let mut out = Vec::new();
        Response::new(404, TEXT, b"not found\n")
            .headers(&[("X-A", "1")])
            .write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 10\r\nConnection: close\r\nX-A: 1\r\n\r\nnot found\n"
        );
        let mut out = Vec::new();
        write_refusal(&HandshakeError::UnsupportedVersion, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        assert_eq!(status_text(503), "service unavailable\n");
    }
}
