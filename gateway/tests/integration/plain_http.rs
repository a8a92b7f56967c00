//! Plain HTTP on the WebSocket port: `/healthz`, `/metrics`, `/`, unknown paths (also when
//! asked for as a WebSocket), other methods. Each answer is one response, then a clean close.

use std::io::{Read, Write};

use crate::util::{self, http_get, http_request, metric};

#[test]
fn healthz_is_200_ok() {
    let server = util::start_default();
    let addr = server.local_addr();
    for path in ["/healthz", "/healthz?probe=1"] {
        let resp = http_get(addr, path);
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.body_text().trim_end(), "ok", "{path}");
        assert!(
            resp.header("content-type")
                .unwrap()
                .starts_with("text/plain")
        );
    }
}

#[test]
fn unknown_path_is_404() {
    let server = util::start_default();
    let addr = server.local_addr();
    for path in ["/nope", "/echo/", "/healthz/extra", "/ECHO"] {
        let resp = http_get(addr, path);
        assert_eq!(resp.status, 404, "{path}: {resp:?}");
    }
    assert_eq!(metric(addr, "gateway_http_refused_404_total"), 4);
}

#[test]
fn websocket_upgrade_to_an_unknown_path_is_404() {
    let server = util::start_default();
    let addr = server.local_addr();
    for path in ["/nope", "/healthz", "/ws/unknown"] {
        let (mut ws, resp) = util::try_raw_handshake(addr, path, &[]);
        assert_eq!(resp.status, 404, "upgrade to {path}: {resp:?}");
        ws.expect_eof();
    }
    assert_eq!(metric(addr, "gateway_http_refused_404_total"), 3);
}

#[test]
fn metrics_is_prometheus_text_with_every_counter() {
    let server = util::start_default();
    let addr = server.local_addr();
    let resp = http_get(addr, "/metrics");
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{resp:?}"
    );
    let text = resp.body_text();
    for name in [
        "gateway_open_connections",
        "gateway_http_refused_400_total",
        "gateway_http_refused_426_total",
        "gateway_refused_max_conns_total",
        "gateway_close_1002_total",
        "gateway_close_1007_total",
        "gateway_close_1009_total",
        "gateway_handshake_timeouts_total",
        "gateway_pong_timeouts_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} has no TYPE line"
        );
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} has no sample"
        );
    }
    // The request asking for the page is itself an open connection.
    assert!(metric(addr, "gateway_open_connections") >= 1);
    // Counters move: the two requests above were answered.
    assert!(metric(addr, "gateway_http_requests_total") >= 2);
}

#[test]
fn index_page_is_html() {
    let server = util::start_default();
    let resp = http_get(server.local_addr(), "/");
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(resp.body_text().contains("/echo"));
}

/// Publishes one message to each of `topics` over one kept-alive connection (pipelined).
fn publish_many(addr: std::net::SocketAddr, topics: &[String]) {
    let mut stream = util::tcp_connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let mut reqs = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let close = if i + 1 == topics.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        reqs.extend_from_slice(
            format!("POST /publish/{t} HTTP/1.1\r\nHost: x\r\n{close}Content-Length: 1\r\n\r\nx")
                .as_bytes(),
        );
    }
    let sender = std::thread::spawn(move || writer.write_all(&reqs).unwrap());
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    sender.join().unwrap();
    let ok = raw.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert_eq!(ok, topics.len(), "every publish answered 200");
}

/// `GET /` lists at most 100 topics, the most followed first, with the total and a prefix
/// filter, however many topics there are (issue 9, finding 6).
#[test]
fn index_page_is_bounded_whatever_the_number_of_topics() {
    // One connection publishes to all the topics: let it create them all at once.
    let server = util::start(gateway::server::Config {
        topic_burst: 100_000,
        ..util::config()
    });
    let addr = server.local_addr();
    let topics: Vec<String> = (0..20_000).map(|i| format!("t/{i}")).collect();
    publish_many(addr, &topics);
    let _follower = util::ws_connect(addr, "/ws/chat/zzz");
    util::wait_subscribers(&server, "chat/zzz", 1);
    let start = std::time::Instant::now();
    let resp = http_get(addr, "/");
    let took = start.elapsed();
    assert_eq!(resp.status, 200);
    let page = resp.body_text();
    eprintln!("GET / with 20,001 topics: {} bytes in {took:?}", page.len());
    assert!(page.len() < 64 * 1024, "index page of {} bytes", page.len());
    assert!(page.contains("20001 topics"), "the total is shown");
    let first_row = page.find("<td><code>").expect("a topic row");
    assert!(
        page[first_row..].starts_with("<td><code>chat/zzz</code>"),
        "the most followed topic comes first"
    );
    let resp = http_get(addr, "/?prefix=t%2F1999");
    let page = resp.body_text();
    assert!(page.contains("11 match"), "t/1999 and t/19990..t/19999");
    assert!(page.contains("<code>t/19995</code>") && !page.contains("<code>t/1998</code>"));
}

#[test]
fn head_has_the_headers_of_get_and_no_body() {
    let server = util::start_default();
    let addr = server.local_addr();
    let mut stream = util::tcp_connect(addr);
    stream
        .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 3"),
        "{head}"
    );
    assert_eq!(body, "", "HEAD must not carry a body");
}

#[test]
fn other_methods_are_405() {
    let server = util::start_default();
    let addr = server.local_addr();
    let resp = http_request(
        addr,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(resp.status, 405, "{resp:?}");
    assert_eq!(resp.header("allow"), Some("GET, HEAD"));
    assert_eq!(metric(addr, "gateway_http_refused_405_total"), 1);
}

#[test]
fn metrics_count_every_websocket_and_message_once() {
    let server = util::start_default();
    let addr = server.local_addr();
    // Four WebSockets ending four ways: close handshake, protocol error, TCP drop, and the
    // server's own shutdown is left out (it would stop /metrics too).
    let (mut normal, _) = util::raw_handshake(addr, &[]);
    normal.send_text("one");
    normal.expect_text("one");
    normal.send_close(1000, "");
    normal.expect_close(1000);
    let (mut failed, _) = util::raw_handshake(addr, &[]);
    failed.send_text("two");
    failed.expect_text("two");
    failed.send_frame(true, 0x3, b"");
    failed.expect_close(1002);
    let (mut dropped, _) = util::raw_handshake(addr, &[]);
    dropped.send_text("three");
    dropped.expect_text("three");
    drop((normal, failed, dropped));
    // Once the server has seen every close, only the /metrics request itself is open.
    util::eventually(
        "every connection closed",
        std::time::Duration::from_secs(5),
        || (metric(addr, "gateway_open_connections") == 1).then_some(()),
    );
    assert_eq!(metric(addr, "gateway_ws_opened_total"), 3);
    assert_eq!(metric(addr, "gateway_ws_closed_total"), 3);
    // Close and ping frames are not messages; the reserved-opcode frame never became one.
    assert_eq!(metric(addr, "gateway_messages_in_total"), 3);
    assert_eq!(metric(addr, "gateway_messages_out_total"), 3);
    assert_eq!(metric(addr, "gateway_close_1002_total"), 1);
}
