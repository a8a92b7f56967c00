//! Control frames: ping gets a pong with the same payload; the close handshake (RFC 6455 5.5.1,
//! 7.4) from the client's side and the server's (shutdown); close frames the server must
//! refuse; and a client that half-closes after its close frame still gets all it is owed.

use std::io::Write;
use std::net::Shutdown;
use std::thread;

use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::util::raw::{BINARY, CLOSE, PING, TEXT, masked};
use crate::util::{self, binary_payload};

#[test]
fn ping_gets_a_pong_with_the_same_payload() {
    let server = util::start_default();
    let addr = server.local_addr();
    // The independent client first.
    let mut ws = util::ws_connect(addr, "/echo");
    let payload = b"tungstenite ping \x00\xff".to_vec();
    ws.send(Message::Ping(payload.clone().into())).unwrap();
    match util::read_msg(&mut ws).unwrap() {
        Message::Pong(p) => assert_eq!(p.as_ref(), &payload[..]),
        other => panic!("expected a pong, got {}", util::describe(&other)),
    }
    // Then the edges of a control payload: empty, one byte, the 125-byte maximum.
    let (mut raw, _) = util::raw_handshake(addr, &[]);
    for len in [0, 1, 125] {
        let payload = binary_payload(len, len as u64);
        raw.send_frame(true, PING, &payload);
        raw.expect_pong(&payload);
    }
}

#[test]
fn client_close_1000_is_answered_with_1000_then_the_connection_closes() {
    let server = util::start_default();
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    ws.send_text("before close");
    ws.expect_text("before close");
    ws.send_close(1000, "bye now");
    ws.expect_close(1000);
    ws.expect_eof();
}

#[test]
fn close_handshake_seen_by_tungstenite() {
    let server = util::start_default();
    let mut ws = util::ws_connect(server.local_addr(), "/echo");
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .unwrap();
    match util::read_msg(&mut ws) {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the server's close 1000, got {other:?}"),
    }
    // tungstenite reports the end of a completed close handshake as ConnectionClosed.
    match util::read_msg(&mut ws) {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
}

#[test]
fn close_without_a_code_is_answered_with_an_empty_close() {
    let server = util::start_default();
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    ws.send_frame(true, CLOSE, b"");
    let f = ws.read_frame();
    assert_eq!((f.fin, f.opcode), (true, CLOSE));
    assert_eq!(
        f.close_code(),
        None,
        "no code was received, so none is echoed"
    );
    ws.expect_eof();
}

#[test]
fn application_close_codes_are_echoed() {
    let server = util::start_default();
    for code in [1001, 1003, 1011, 3000, 4999] {
        let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
        ws.send_close(code, "app reason");
        ws.expect_close_for(code, "a sendable code is echoed");
        ws.expect_eof();
    }
}

#[test]
fn invalid_close_codes_are_answered_with_1002() {
    let server = util::start_default();
    // 1005 and 1006 must never be on the wire, 1004/1015 are reserved, 1016-2999 are reserved
    // for future RFCs, and the rest is out of range (RFC 6455 7.4).
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
        ws.send_close(code, "");
        ws.expect_close_for(1002, &format!("close code {code}"));
        ws.expect_eof();
    }
}

#[test]
fn malformed_close_payloads_are_refused() {
    let server = util::start_default();
    let addr = server.local_addr();
    // A one-byte payload cannot hold a code (RFC 6455 5.5.1).
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    ws.send_frame(true, CLOSE, &[0x03]);
    ws.expect_close(1002);
    ws.expect_eof();
    // The reason must be UTF-8.
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    ws.send_frame(true, CLOSE, &[0x03, 0xe8, b'o', 0xff, b'k']);
    ws.expect_close(1007);
    ws.expect_eof();
}

#[test]
fn nothing_is_echoed_after_the_close_frame() {
    let server = util::start_default();
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    let mut wire = masked(CLOSE, [9, 9, 9, 9], &1000u16.to_be_bytes());
    wire.extend(masked(TEXT, [1, 1, 1, 1], b"after close"));
    ws.send_raw(&wire);
    ws.expect_close(1000);
    ws.expect_eof();
}

#[test]
fn server_shutdown_says_going_away_1001() {
    let server = util::start_default();
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    ws.send_text("still here");
    ws.expect_text("still here");
    drop(server);
    ws.expect_close(1001);
    ws.expect_eof();
}

#[test]
fn client_that_half_closes_after_its_close_frame_still_gets_every_echo() {
    // The client sends large messages and a close frame, then shuts its write side (a client
    // with nothing more to say may), and only then starts reading, as RFC 6455 7.1.1 allows:
    // it must still receive every echo and the server's close frame. max_queued is raised so
    // the server reads all of it, EOF included, while most of the 16 MiB of echoes is still
    // queued in the server (far more than the socket buffers hold).
    const COUNT: u64 = 16;
    let server = util::start(util::Config {
        max_message: 2 << 20,
        max_queued: 64 << 20,
        ..util::config()
    });
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    let mut writer = ws.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        for i in 0..COUNT {
            let payload = binary_payload(1 << 20, i);
            let frame = masked(BINARY, [7, 7, 7, i as u8], &payload);
            writer.write_all(&frame).unwrap();
        }
        let close = masked(CLOSE, [1, 2, 3, 4], &1000u16.to_be_bytes());
        writer.write_all(&close).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    sender.join().unwrap();
    for i in 0..COUNT {
        ws.expect_message(BINARY, &binary_payload(1 << 20, i));
    }
    ws.expect_close(1000);
    ws.expect_eof();
}
