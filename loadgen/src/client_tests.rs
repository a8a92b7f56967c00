//! Tests of the client connection over real sockets on 127.0.0.1: against a gateway started in
//! this process, and against a scripted server for what a gateway does not do on demand
//! (pinging, closing first with a code).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use gateway::proto::frame::write_frame;
use gateway::proto::handshake::accept_key;
use gateway::proto::{MessageKind, OpCode};
use gateway::server::{Config as ServerConfig, Server, ServerHandle};

use crate::single::Single;
use crate::tls::Trust;
use crate::url::{Endpoint, parse_ws};

const T: Duration = Duration::from_secs(5);

fn gateway() -> ServerHandle {
    Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        max_message: 1 << 20,
        ..Default::default()
    })
    .expect("gateway starts")
}

fn echo_url(gw: &ServerHandle) -> Endpoint {
    parse_ws(&format!("ws://{}/echo", gw.local_addr())).unwrap()
}

#[test]
fn echoes_and_closes_cleanly() {
    let gw = gateway();
    let mut c = Single::open(&echo_url(&gw), false, T, true).unwrap();
    c.send(MessageKind::Text, b"hello", T).unwrap();
    assert_eq!(c.recv(T).unwrap(), (MessageKind::Text, b"hello".to_vec()));
    let big = vec![7u8; 300_000];
    c.send(MessageKind::Binary, &big, T).unwrap();
    assert_eq!(c.recv(T).unwrap(), (MessageKind::Binary, big));
    c.close(T).unwrap();
}

/// A TLS gateway with a fresh self-signed certificate for 127.0.0.1; its files stay in a
/// directory of this process's own, and its DER is returned to be trusted.
fn tls_gateway(tag: &str) -> (ServerHandle, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("loadgen-tls-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let files = gateway::server::tls::TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, cert.cert.pem()).unwrap();
    std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
    let gw = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        max_message: 1 << 20,
        tls: Some(files),
        ..Default::default()
    })
    .expect("TLS gateway starts");
    let _ = std::fs::remove_dir_all(&dir);
    (gw, cert.cert.der().to_vec())
}

#[test]
fn wss_echoes_and_closes_cleanly() {
    let (gw, der) = tls_gateway("echo");
    let mut url = parse_ws(&format!("wss://{}/echo", gw.local_addr())).unwrap();
    for trust in [Trust::Insecure, Trust::Ca(vec![der])] {
        url.tls = Some(trust);
        let mut c = Single::open(&url, false, T, true).unwrap();
        c.send(MessageKind::Text, b"hello", T).unwrap();
        assert_eq!(c.recv(T).unwrap(), (MessageKind::Text, b"hello".to_vec()));
        // Many TLS records each way, more than the socket buffers hold at once.
        let big = vec![7u8; 300_000];
        c.send(MessageKind::Binary, &big, T).unwrap();
        assert_eq!(c.recv(T).unwrap(), (MessageKind::Binary, big));
        c.close(T).unwrap();
    }
    assert_eq!(gw.stats().total("tls_handshakes_total"), 2);
}

#[test]
fn wss_with_an_untrusted_certificate_fails() {
    let (gw, _) = tls_gateway("untrusted");
    let (_, other) = tls_gateway("other");
    let mut url = parse_ws(&format!("wss://{}/echo", gw.local_addr())).unwrap();
    url.tls = Some(Trust::Ca(vec![other]));
    let err = Single::open(&url, false, T, false).unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn deflate_offer_is_agreed_and_compressed_echoes_read() {
    let gw = gateway();
    let mut c = Single::open(&echo_url(&gw), true, T, true).unwrap();
    let text = "compress me ".repeat(1000);
    for _ in 0..3 {
        c.send(MessageKind::Text, text.as_bytes(), T).unwrap();
        assert_eq!(c.recv(T).unwrap().1, text.as_bytes());
    }
    c.close(T).unwrap();
}

#[test]
fn refusals_have_causes() {
    let gw = gateway();
    let mut missing = echo_url(&gw);
    missing.path = "/nowhere".into();
    let err = Single::open(&missing, false, T, false).unwrap_err();
    assert_eq!(err, "handshake: HTTP 404");

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = parse_ws(&format!("ws://127.0.0.1:{port}/echo")).unwrap();
    assert_eq!(
        Single::open(&gone, false, T, false).unwrap_err(),
        "connect: refused"
    );
}

/// A server that accepts the upgrade, pings, sends one message, then closes with 1001, and
/// returns everything the client sent after the upgrade.
fn scripted_server() -> (Endpoint, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = parse_ws(&format!("ws://{}/x", l.local_addr().unwrap())).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(head).unwrap();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(key.as_bytes())
        )
        .into_bytes();
        write_frame(&mut out, true, OpCode::Ping, false, None, b"p");
        write_frame(&mut out, true, OpCode::Text, false, None, b"m");
        write_frame(
            &mut out,
            true,
            OpCode::Close,
            false,
            None,
            &1001u16.to_be_bytes(),
        );
        s.write_all(&out).unwrap();
        let mut got = Vec::new();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    (url, h)
}

#[test]
fn pings_are_answered_and_a_server_close_is_echoed() {
    let (url, server) = scripted_server();
    let mut c = Single::open(&url, false, T, true).unwrap();
    assert_eq!(c.recv(T).unwrap(), (MessageKind::Text, b"m".to_vec()));
    let err = loop {
        if let Err(e) = c.pump() {
            break e;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(err, "closed by the server with code 1001");
    drop(c);
    let sent = server.join().unwrap();
    // A masked pong with payload "p", then a masked close with code 1001.
    let mut reader = gateway::proto::Reader::new(gateway::proto::Role::Server, 1024, None);
    let (mut msg, mut inflater) = (Vec::new(), None);
    let mut rest = sent;
    let mut events = Vec::new();
    loop {
        let step = reader.read(&mut rest, &mut msg, &mut inflater).unwrap();
        if step.consumed == 0 && step.event.is_none() {
            break;
        }
        let consumed = step.consumed;
        if let Some(ev) = step.event {
            events.push(format!("{ev:?}"));
        }
        rest.drain(..consumed);
    }
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].contains("Pong"), "{events:?}");
    assert!(events[1].contains("1001"), "{events:?}");
}
