//! The origin rule over real sockets: same-origin by default on every WebSocket path, the allow
//! list and `*`, and publishes that rely on the loopback trust refused from other sites' pages.

use std::net::SocketAddr;

use crate::util::{self, http_request, metric};

/// Status of an upgrade to `path` with the given `Origin` (if any), `Host` being the gateway.
fn upgrade(addr: SocketAddr, path: &str, origin: Option<&str>) -> u16 {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(o) = origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    req.push_str("\r\n");
    let mut conn = util::raw_connect(addr);
    conn.send_raw(req.as_bytes());
    conn.read_response_head().status
}

/// Status of `POST /publish/chat/o` with extra header lines.
fn publish(addr: SocketAddr, headers: &str) -> u16 {
    let req = format!(
        "POST /publish/chat/o HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 2\r\nConnection: close\r\n\r\nhi"
    );
    http_request(addr, req.as_bytes()).status
}

#[test]
fn websockets_are_same_origin_by_default() {
    let server = util::start_default();
    let addr = server.local_addr();
    let own = format!("http://{addr}");
    let other_port = format!("http://127.0.0.1:{}", addr.port().wrapping_add(1).max(1));
    for path in ["/echo", "/ws", "/ws/chat/lobby"] {
        assert_eq!(upgrade(addr, path, None), 101, "{path}: no Origin");
        assert_eq!(upgrade(addr, path, Some(&own)), 101, "{path}: own origin");
        assert_eq!(
            upgrade(addr, path, Some("https://evil.example")),
            403,
            "{path}"
        );
        assert_eq!(upgrade(addr, path, Some("null")), 403, "{path}: null");
        assert_eq!(
            upgrade(addr, path, Some(&other_port)),
            403,
            "{path}: other port"
        );
    }
    assert_eq!(metric(addr, "gateway_http_refused_403_total"), 9);
    // A refused upgrade created no room.
    assert!(
        server.hub().find("chat/lobby").is_some(),
        "accepted upgrades did"
    );
}

#[test]
fn allow_list_and_wildcard() {
    let server = util::start(util::Config {
        allowed_origins: vec!["https://app.example".to_owned()],
        ..util::config()
    });
    let addr = server.local_addr();
    assert_eq!(upgrade(addr, "/ws", Some("https://app.example")), 101);
    assert_eq!(upgrade(addr, "/ws", Some(&format!("http://{addr}"))), 101);
    assert_eq!(upgrade(addr, "/ws", Some("https://evil.example")), 403);
    let any = util::start(util::Config {
        allowed_origins: vec!["*".to_owned()],
        ..util::config()
    });
    assert_eq!(
        upgrade(any.local_addr(), "/ws", Some("https://evil.example")),
        101
    );
}

#[test]
fn other_sites_pages_cannot_borrow_the_loopback_trust_to_publish() {
    let server = util::start(util::Config {
        allowed_origins: vec!["*".to_owned()],
        ..util::config()
    });
    let addr = server.local_addr();
    assert_eq!(publish(addr, ""), 200, "a backend on loopback");
    assert_eq!(publish(addr, &format!("Origin: http://{addr}\r\n")), 200);
    assert_eq!(
        publish(addr, "Sec-Fetch-Site: cross-site\r\n"),
        403,
        "even with *"
    );
    let strict = util::start_default();
    let a = strict.local_addr();
    assert_eq!(publish(a, "Origin: https://evil.example\r\n"), 403);
    assert_eq!(publish(a, "Sec-Fetch-Site: same-origin\r\n"), 200);
    // With a token, the token decides.
    let tokened = util::start(util::Config {
        publish_token: Some("s3cret".to_owned()),
        ..util::config()
    });
    let t = tokened.local_addr();
    let bearer = "Authorization: Bearer s3cret\r\nSec-Fetch-Site: cross-site\r\n";
    assert_eq!(publish(t, bearer), 200);
    assert_eq!(publish(t, "Sec-Fetch-Site: cross-site\r\n"), 403);
}
