//! The opening handshake as clients really send it (RFC 6455 4.1, 4.2): the accept key, header
//! names and tokens in any case, `Connection` lists as browsers send them, a query string on
//! the endpoint, and subprotocol selection.

use crate::util::raw::upgrade_request;
use crate::util::{self, raw_connect};

#[test]
fn accept_key_matches_the_rfc_example() {
    let server = util::start_default();
    let addr = server.local_addr();
    let mut ws = raw_connect(addr);
    // RFC 6455 1.3: this key must be answered with exactly this accept value.
    ws.send_raw(upgrade_request(addr, "/echo", "dGhlIHNhbXBsZSBub25jZQ==", &[]).as_bytes());
    let resp = ws.read_response_head();
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(
        resp.header("upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert_eq!(
        resp.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("upgrade")
    );
}

#[test]
fn browser_style_requests_are_accepted() {
    let server = util::start_default();
    let addr = server.local_addr();
    let key = tungstenite::handshake::client::generate_key();
    // Firefox sends "keep-alive, Upgrade"; header names and the Upgrade token may be in any
    // case; the endpoint may carry a query string.
    let request = format!(
        "GET /echo?session=abc&x=1 HTTP/1.1\r\nhost: {addr}\r\nuser-agent: test\r\n\
         upgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-key: {key}\r\n\
         sec-websocket-version: 13\r\norigin: http://{addr}\r\n\
         sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    let mut ws = raw_connect(addr);
    ws.send_raw(request.as_bytes());
    let resp = ws.read_response_head();
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(tungstenite::handshake::derive_accept_key(key.as_bytes()).as_str())
    );
    ws.send_text("short");
    ws.expect_text("short");
}

#[test]
fn subprotocol_is_one_the_client_offered_and_the_server_speaks() {
    let server = util::start(util::Config {
        subprotocols: vec!["chat.v2".to_owned(), "chat.v1".to_owned()],
        ..util::config()
    });
    let addr = server.local_addr();
    let cases: [(Option<&str>, Option<&str>); 5] = [
        (Some("chat.v1"), Some("chat.v1")),
        (Some("chat.v2"), Some("chat.v2")),
        // Among protocols both sides speak, the client's order wins (see proto::handshake).
        (Some("chat.v1, chat.v2"), Some("chat.v1")),
        // No common protocol: accepted without one (RFC 6455 4.2.2 leaves the choice to the
        // client, which may then close).
        (Some("mqtt, stomp"), None),
        (None, None),
    ];
    for (offer, expected) in cases {
        let extra: Vec<(&str, &str)> = offer
            .map(|o| ("Sec-WebSocket-Protocol", o))
            .into_iter()
            .collect();
        let (mut ws, resp) = util::raw_handshake(addr, &extra);
        assert_eq!(
            resp.header("sec-websocket-protocol"),
            expected,
            "offer {offer:?}"
        );
        ws.send_text("hi");
        ws.expect_text("hi");
    }
}

#[test]
fn handshake_sent_a_byte_at_a_time_completes() {
    let server = util::start_default();
    let addr = server.local_addr();
    let key = tungstenite::handshake::client::generate_key();
    let mut ws = raw_connect(addr);
    for b in upgrade_request(addr, "/echo", &key, &[]).bytes() {
        ws.send_raw(&[b]);
    }
    let resp = ws.read_response_head();
    assert_eq!(resp.status, 101, "{resp:?}");
    ws.send_text("assembled");
    ws.expect_text("assembled");
}
