//! HTTP-level refusals (DESIGN.md section 5): each bad request gets its status, the connection
//! is closed cleanly after the response, and the refusal is counted in `/metrics`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::util::{self, RawWs, Response, http_request, metric};

/// Header lines replacing the defaults of [`upgrade_with`]; a `None` value leaves the header out.
type HeaderEdits<'a> = &'a [(&'a str, Option<&'a str>)];

/// An upgrade request for `/echo` with some of its header lines replaced or removed.
fn upgrade_with(addr: SocketAddr, method: &str, headers: HeaderEdits<'_>) -> Vec<u8> {
    let mut fields: Vec<(String, String)> = [
        ("Host", addr.to_string()),
        ("Upgrade", "websocket".to_owned()),
        ("Connection", "Upgrade".to_owned()),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
        ("Sec-WebSocket-Version", "13".to_owned()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    for (name, value) in headers {
        fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            fields.push(((*name).to_owned(), (*v).to_owned()));
        }
    }
    let mut req = format!("{method} /echo HTTP/1.1\r\n");
    for (n, v) in fields {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

fn assert_status(resp: &Response, status: u16, what: &str) {
    assert_eq!(resp.status, status, "{what}: {resp:?}");
    assert_eq!(resp.header("connection"), Some("close"), "{what}");
}

#[test]
fn malformed_http_is_answered_400() {
    let server = util::start_default();
    let addr = server.local_addr();
    let cases: [(&str, &[u8]); 4] = [
        ("not HTTP at all", b"HELLO THERE\r\n\r\n"),
        (
            "a header line without a colon",
            b"GET /echo HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        ),
        ("a bad version", b"GET /echo HTTP/7.7\r\nHost: x\r\n\r\n"),
        (
            "a TLS ClientHello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        ),
    ];
    for (what, req) in cases {
        assert_status(&http_request(addr, req), 400, what);
    }
    assert_eq!(
        metric(addr, "gateway_http_refused_400_total"),
        cases.len() as u64
    );
}

#[test]
fn upgrade_with_a_bad_key_or_no_host_is_answered_400() {
    let server = util::start_default();
    let addr = server.local_addr();
    let cases: [(&str, HeaderEdits<'_>); 4] = [
        ("no key", &[("Sec-WebSocket-Key", None)]),
        (
            "key not base64",
            &[("Sec-WebSocket-Key", Some("not base64!"))],
        ),
        (
            "key of 15 bytes",
            &[("Sec-WebSocket-Key", Some("AAAAAAAAAAAAAAAAAAAA"))],
        ),
        ("no Host", &[("Host", None)]),
    ];
    for (what, headers) in cases {
        assert_status(
            &http_request(addr, &upgrade_with(addr, "GET", headers)),
            400,
            what,
        );
    }
    assert_eq!(
        metric(addr, "gateway_http_refused_400_total"),
        cases.len() as u64
    );
}

#[test]
fn wrong_websocket_version_is_answered_426_with_version_13() {
    let server = util::start_default();
    let addr = server.local_addr();
    for version in [Some("8"), Some("14"), None] {
        let req = upgrade_with(addr, "GET", &[("Sec-WebSocket-Version", version)]);
        let resp = http_request(addr, &req);
        assert_status(&resp, 426, &format!("version {version:?}"));
        assert_eq!(resp.header("sec-websocket-version"), Some("13"));
    }
    assert_eq!(metric(addr, "gateway_http_refused_426_total"), 3);
}

#[test]
fn echo_without_upgrade_is_answered_426() {
    let server = util::start_default();
    let addr = server.local_addr();
    let resp = util::http_get(addr, "/echo");
    assert_status(&resp, 426, "GET /echo");
    assert_eq!(resp.header("upgrade"), Some("websocket"));
    assert_eq!(resp.header("sec-websocket-version"), Some("13"));
    assert_eq!(metric(addr, "gateway_http_refused_426_total"), 1);
}

#[test]
fn upgrade_with_post_is_answered_405() {
    let server = util::start_default();
    let addr = server.local_addr();
    let resp = http_request(addr, &upgrade_with(addr, "POST", &[]));
    assert_status(&resp, 405, "POST upgrade");
    assert_eq!(resp.header("allow"), Some("GET"));
    assert_eq!(metric(addr, "gateway_http_refused_405_total"), 1);
}

#[test]
fn oversized_request_head_is_answered_431() {
    let server = util::start_default();
    let addr = server.local_addr();
    let too_many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /echo HTTP/1.1\r\nHost: x\r\n{too_many}\r\n").into_bytes();
    // A head over MAX_HEAD_LEN (8 KiB) is refused however it is cut into segments: the limit
    // must not depend on how much of it the first read happens to see.
    let long = upgrade_with(addr, "GET", &[("X-Padding", Some(&"x".repeat(9000)))]);
    let cases: [(&str, &[u8], usize); 3] = [
        ("100 header lines", &many, many.len()),
        ("9 KB head, first 8.5 KB then the rest", &long, 8500),
        ("9 KB head in one write", &long, long.len()),
    ];
    for (what, req, first) in cases {
        let mut conn = util::raw_connect(addr);
        conn.send_raw(&req[..first]);
        if first < req.len() {
            // Let the server read the first part on its own.
            std::thread::sleep(Duration::from_millis(100));
            conn.send_raw(&req[first..]);
        }
        let resp = conn.read_response_head();
        assert_status(&resp, 431, what);
        conn.expect_eof();
    }
    assert_eq!(metric(addr, "gateway_http_refused_431_total"), 3);
}

#[test]
fn refused_origin_is_answered_403_and_allowed_origin_101() {
    let server = util::start(util::Config {
        allowed_origins: vec!["https://good.example".to_owned()],
        ..util::config()
    });
    let addr = server.local_addr();
    let req = upgrade_with(addr, "GET", &[("Origin", Some("https://evil.example"))]);
    assert_status(&http_request(addr, &req), 403, "evil origin");
    // Origin is matched exactly, so a look-alike is refused too.
    let req = upgrade_with(
        addr,
        "GET",
        &[("Origin", Some("https://good.example.evil"))],
    );
    assert_status(&http_request(addr, &req), 403, "look-alike origin");

    let (mut ws, _) = util::raw_handshake(addr, &[("Origin", "https://good.example")]);
    ws.send_text("allowed");
    ws.expect_text("allowed");
    // Non-browser clients send no Origin, and are allowed.
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    ws.send_text("no origin");
    ws.expect_text("no origin");
    assert_eq!(metric(addr, "gateway_http_refused_403_total"), 2);
}

/// `GET path` read by its `Content-Length`, without waiting for the connection to end.
fn get_head_and_body(addr: SocketAddr, path: &str) -> Response {
    let mut conn = util::raw_connect(addr);
    conn.send_raw(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    conn.read_response_head()
}

#[test]
fn over_max_conns_is_answered_503() {
    let server = util::start(util::Config {
        max_conns: 2,
        ..util::config()
    });
    let addr = server.local_addr();
    let (mut a, _) = util::raw_handshake(addr, &[]);
    let (mut b, _) = util::raw_handshake(addr, &[]);

    // A third upgrade and a plain request are both refused while two are held.
    let (_, resp) = util::try_raw_handshake(addr, "/echo", &[]);
    assert_eq!(resp.status, 503, "third connection: {resp:?}");
    let resp = get_head_and_body(addr, "/healthz");
    assert_eq!(resp.status, 503, "plain request at the limit: {resp:?}");
    // The held connections are untouched.
    a.send_text("a");
    a.expect_text("a");
    b.send_text("b");
    b.expect_text("b");

    // Closing one frees a slot, once the server has seen the close.
    a.send_close(1000, "");
    a.expect_close(1000);
    drop(a);
    let mut c: RawWs = util::eventually("a freed slot", Duration::from_secs(5), || {
        let (ws, resp) = util::try_raw_handshake(addr, "/echo", &[]);
        (resp.status == 101).then_some(ws)
    });
    c.send_text("c");
    c.expect_text("c");

    drop((b, c));
    let metrics = util::eventually("/metrics below the limit", Duration::from_secs(5), || {
        let resp = get_head_and_body(addr, "/metrics");
        (resp.status == 200).then_some(resp)
    });
    let refused: u64 = metrics
        .body_text()
        .lines()
        .find_map(|l| l.strip_prefix("gateway_refused_max_conns_total "))
        .expect("gateway_refused_max_conns_total in /metrics")
        .parse()
        .unwrap();
    assert!(refused >= 2, "503s counted: {refused}");
}

#[test]
fn the_503_ends_with_an_orderly_close_not_a_reset() {
    // A client's request is often in the socket before the server accepts it. Dropping the
    // socket with that request unread makes the kernel send a reset, which the client may see
    // instead of (or right after) the 503: conn.rs's Linger phase exists to avoid exactly
    // this for every other answer. Whether the request arrives first is a race, so try often.
    let server = util::start(util::Config {
        max_conns: 1,
        ..util::config()
    });
    let addr = server.local_addr();
    let (_held, _) = util::raw_handshake(addr, &[]);
    for attempt in 0..50 {
        let mut stream = util::tcp_connect(addr);
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut raw = Vec::new();
        if let Err(e) = stream.read_to_end(&mut raw) {
            panic!(
                "attempt {attempt}: after {:?} the connection ended with \"{e}\" instead of an orderly close",
                String::from_utf8_lossy(&raw)
            );
        }
        assert!(
            raw.starts_with(b"HTTP/1.1 503 "),
            "attempt {attempt}: {raw:?}"
        );
    }
}

#[test]
fn over_max_conns_per_ip_is_answered_503_until_one_closes() {
    let server = util::start(util::Config {
        max_conns_per_ip: 2,
        ..util::config()
    });
    let addr = server.local_addr();
    let (a, _) = util::raw_handshake(addr, &[]);
    let (mut b, _) = util::raw_handshake(addr, &[]);
    let (third, resp) = util::try_raw_handshake(addr, "/echo", &[]);
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.header("retry-after"), Some("1"));
    drop(third);
    assert_eq!(server.stats().total("refused_per_ip_total"), 1);
    // The refused one did not count; once one closes, a new client gets in.
    drop(a);
    util::eventually("a slot frees up", Duration::from_secs(5), || {
        let (ws, resp) = util::try_raw_handshake(addr, "/echo", &[]);
        (resp.status == 101).then_some(ws)
    });
    b.send_text("still here");
    b.expect_text("still here");
}
