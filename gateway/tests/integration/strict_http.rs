//! HTTP strictness (issue 9, finding 5): request heads whose framing two readers could read
//! differently are refused, so no bytes after them run as a smuggled request. Two different
//! `Content-Length` headers, a length that is not plain digits and an HTTP/1.1 request without
//! `Host` are answered 400; a publish without `Content-Length` 411; every status line carries
//! its reason phrase.

use std::net::SocketAddr;

use crate::util::{self, http_request, metric};

/// Every status line in `raw` (a connection's whole output).
fn status_lines(raw: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(raw)
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .map(str::to_owned)
        .collect()
}

/// Sends `request` and reads everything the gateway answers until it closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = util::tcp_connect(addr);
    stream.write_all(request).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    raw
}

#[test]
fn two_content_lengths_do_not_smuggle_a_second_request() {
    let server = util::start_default();
    let addr = server.local_addr();
    let smuggled = format!(
        "POST /publish/smuggled HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    );
    let mut req = format!(
        "POST /publish/front HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    )
    .into_bytes();
    req.extend_from_slice(smuggled.as_bytes());
    let raw = exchange(addr, &req);
    assert_eq!(
        status_lines(&raw),
        ["HTTP/1.1 400 Bad Request"],
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(
        server.hub().find("smuggled"),
        None,
        "a request was smuggled"
    );
    assert_eq!(server.hub().find("front"), None);
}

#[test]
fn malformed_framing_is_refused() {
    let server = util::start_default();
    let addr = server.local_addr();
    let cases: [(&str, String, u16, &str); 5] = [
        (
            "Content-Length with a sign",
            format!("POST /publish/a HTTP/1.1\r\nHost: {addr}\r\nContent-Length: +5\r\n\r\nhello"),
            400,
            "Bad Request",
        ),
        (
            "Content-Length list",
            format!(
                "POST /publish/a HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5, 5\r\n\r\nhello"
            ),
            400,
            "Bad Request",
        ),
        (
            "HTTP/1.1 without Host",
            "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
            400,
            "Bad Request",
        ),
        (
            "two Host headers",
            "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned(),
            400,
            "Bad Request",
        ),
        (
            "publish without Content-Length",
            format!("POST /publish/a HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
            411,
            "Length Required",
        ),
    ];
    for (what, req, status, reason) in &cases {
        let raw = exchange(addr, req.as_bytes());
        assert_eq!(
            status_lines(&raw),
            [format!("HTTP/1.1 {status} {reason}")],
            "{what}: {}",
            String::from_utf8_lossy(&raw)
        );
    }
    assert_eq!(server.hub().find("a"), None, "nothing was published");
    assert_eq!(metric(addr, "gateway_http_refused_400_total"), 4);
    assert_eq!(metric(addr, "gateway_http_refused_411_total"), 1);
    // HTTP/1.0 needs no Host.
    let ok = http_request(addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(ok.status, 200);
}
