//! A bad client never hurts the others (DESIGN.md section 5). One worker, so every client
//! shares the same event loop as the well-behaved one, which must keep echoing while others
//! send garbage, break the protocol, stall mid-handshake or mid-frame, vanish mid-message, or
//! flood the server without reading its replies.

use std::io::Write;
use std::thread;
use std::time::Duration;

use tungstenite::Message;

use crate::util::raw::{BINARY, TEXT, encode_header_only, masked};
use crate::util::{self, assert_echo, binary_payload, text_payload};

#[test]
fn misbehaving_clients_do_not_disturb_a_good_one() {
    let server = util::start(util::Config {
        workers: 1,
        ..util::config()
    });
    let addr = server.local_addr();
    let mut good = util::ws_connect(addr, "/echo");
    let mut round = 0u64;
    let mut check_good = |when: &str| {
        round += 1;
        let msg = text_payload(100 + round as usize * 37, round);
        good.send(Message::text(msg.clone()))
            .unwrap_or_else(|e| panic!("good client, {when}: {e}"));
        match util::read_msg(&mut good) {
            Ok(Message::Text(t)) => assert!(t.as_str() == msg, "good client, {when}: bad echo"),
            other => panic!("good client, {when}: {other:?}"),
        }
    };
    check_good("at start");

    // Garbage instead of a handshake.
    let mut garbage = util::tcp_connect(addr);
    garbage.write_all(&binary_payload(10_000, 1)).unwrap();
    check_good("after a garbage request");

    // A protocol violation after the handshake.
    let (mut violator, _) = util::raw_handshake(addr, &[]);
    violator.send_raw(&masked(0x3, [1, 2, 3, 4], b"reserved"));
    violator.expect_close(1002);
    check_good("after a protocol violation");

    // Stalled: half a handshake, and half a frame, both left hanging.
    let mut half_handshake = util::tcp_connect(addr);
    half_handshake
        .write_all(b"GET /echo HTTP/1.1\r\nHost:")
        .unwrap();
    let (mut half_frame, _) = util::raw_handshake(addr, &[]);
    half_frame.send_raw(&encode_header_only(BINARY, 60_000, [9, 8, 7, 6]));
    half_frame.send_raw(&[0x55; 1000]);
    check_good("while others stall mid-handshake and mid-frame");

    // Gone in the middle of a message.
    let (mut vanisher, _) = util::raw_handshake(addr, &[]);
    vanisher.send_frame(false, TEXT, b"first fragment of a message that never ends");
    vanisher.send_raw(&encode_header_only(BINARY, 50_000, [1, 1, 1, 1]));
    drop(vanisher);
    check_good("after a client vanished mid-message");

    // A flood of 64 KiB messages from a client that never reads its echoes: the server must
    // stop reading it once its output queue is full (max_queued) rather than stall the loop
    // or grow without bound. The flooder stops when its writes block for a second.
    let (flooder, _) = util::raw_handshake(addr, &[]);
    let mut flood_stream = flooder.stream.try_clone().unwrap();
    flood_stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let flood = thread::spawn(move || {
        let frame = masked(BINARY, [3, 1, 4, 1], &binary_payload(64 * 1024, 7));
        let mut sent = 0usize;
        while sent < 256 << 20 {
            if flood_stream.write_all(&frame).is_err() {
                break;
            }
            sent += frame.len();
        }
        sent
    });
    for i in 0..20 {
        check_good(&format!("during the flood ({i})"));
    }
    let flooded = flood.join().unwrap();
    check_good("after the flooder was throttled");
    assert!(
        flooded < 256 << 20,
        "the server read 256 MiB from a client that never read its echoes"
    );
    drop(flooder);
    check_good("after the flooder left");

    // The good client, and the server as a whole, are fine.
    assert_echo(&mut good, Message::binary(binary_payload(60_000, 3)));
    let resp = util::http_get(addr, "/healthz");
    assert_eq!(resp.status, 200);
    drop((garbage, half_handshake, half_frame));
}
