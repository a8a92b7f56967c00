//! One-shot HTTP over a plain `TcpStream`: send a request, read the response to EOF, parse it.
//! Also reads `/metrics`, so tests can check that every refusal was counted.

use std::io::{Read, Write};
use std::net::SocketAddr;

use super::raw::find;
use super::tcp_connect;

/// A parsed HTTP response. Header names are lower-cased.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("response body is UTF-8")
    }
}

/// Parses a response head (status line and headers, through the blank line).
pub fn parse_head(head: &[u8]) -> Response {
    let text = std::str::from_utf8(head).expect("response head is ASCII");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(
        parts.next(),
        Some("HTTP/1.1"),
        "status line {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers = lines
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("header line {l:?}"));
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Response {
        status,
        headers,
        body: Vec::new(),
    }
}

/// Sends `request` as is and reads the whole response, up to the server closing the
/// connection. Checks the body length against `Content-Length`.
pub fn http_request(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = tcp_connect(addr);
    stream.write_all(request).expect("send the request");
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        panic!(
            "reading the response failed after {} bytes ({:?}): {e}",
            raw.len(),
            String::from_utf8_lossy(&raw)
        );
    }
    let head_len = find(&raw, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(&raw)
        )
    }) + 4;
    let mut resp = parse_head(&raw[..head_len]);
    resp.body = raw[head_len..].to_vec();
    if let Some(len) = resp.header("content-length") {
        assert_eq!(
            resp.body.len(),
            len.parse::<usize>().expect("numeric Content-Length"),
            "body length differs from Content-Length"
        );
    }
    resp
}

/// `GET path` with `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str) -> Response {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_request(addr, req.as_bytes())
}

/// The `/metrics` page, checked to be a 200 in Prometheus text format.
pub fn metrics_text(addr: SocketAddr) -> String {
    let resp = http_get(addr, "/metrics");
    assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
    resp.body_text().to_owned()
}

/// One sample from `/metrics`, fetched over HTTP from the running server.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = metrics_text(addr);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().expect("numeric sample"))
        })
        .unwrap_or_else(|| panic!("metric {name} not in /metrics:\n{text}"))
}
