//! Protocol violations after the handshake (DESIGN.md section 5): each fails the connection
//! with a close frame carrying the right code (1002 protocol error, 1007 invalid UTF-8, 1009
//! too big), the server then closes the TCP connection, and the failure is counted.

use crate::util::raw::{BINARY, CONTINUATION, PING, TEXT, encode_frame, encode_header_only};
use crate::util::{self, metric};

#[test]
fn protocol_violations_close_with_1002() {
    let server = util::start_default();
    let addr = server.local_addr();
    let key = Some([0x11, 0x22, 0x33, 0x44]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unmasked client frame",
            encode_frame(true, 0, TEXT, None, b"no mask"),
        ),
        ("reserved opcode 0x3", encode_frame(true, 0, 0x3, key, b"x")),
        ("reserved opcode 0x7", encode_frame(true, 0, 0x7, key, b"")),
        (
            "reserved control opcode 0xb",
            encode_frame(true, 0, 0xb, key, b""),
        ),
        (
            "reserved control opcode 0xf",
            encode_frame(true, 0, 0xf, key, b""),
        ),
        (
            "RSV1 without permessage-deflate",
            encode_frame(true, 0b100, TEXT, key, b"x"),
        ),
        ("RSV2", encode_frame(true, 0b010, BINARY, key, b"x")),
        ("RSV3", encode_frame(true, 0b001, BINARY, key, b"x")),
        (
            "continuation with no message",
            encode_frame(true, 0, CONTINUATION, key, b"x"),
        ),
        ("new message inside a fragmented one", {
            let mut w = encode_frame(false, 0, TEXT, key, b"first half");
            w.extend(encode_frame(true, 0, TEXT, key, b"not a continuation"));
            w
        }),
        ("fragmented ping", encode_frame(false, 0, PING, key, b"x")),
        (
            "ping over 125 bytes",
            encode_frame(true, 0, PING, key, &[7; 126]),
        ),
        ("64-bit length with the top bit set", {
            let mut w = vec![0x82, 0xff];
            w.extend_from_slice(&(1u64 << 63).to_be_bytes());
            w.extend_from_slice(&[1, 2, 3, 4]);
            w
        }),
    ];
    for (what, wire) in &cases {
        let (mut ws, _) = util::raw_handshake(addr, &[]);
        ws.send_raw(wire);
        let reason = ws.expect_close_for(1002, what);
        assert!(
            !reason.is_empty(),
            "{what}: the close reason should name the rule"
        );
        ws.expect_eof();
    }
    assert_eq!(metric(addr, "gateway_close_1002_total"), cases.len() as u64);
}

#[test]
fn invalid_utf8_text_closes_with_1007() {
    let server = util::start_default();
    let addr = server.local_addr();
    let cases: [(&str, &[u8]); 6] = [
        ("bad continuation byte", b"ok \xc3\x28"),
        ("overlong encoding of '/'", b"\xc0\xaf"),
        ("UTF-16 surrogate", b"\xed\xa0\x80"),
        ("above U+10FFFF", b"\xf4\x90\x80\x80"),
        ("stray continuation byte", b"abc\x80"),
        (
            "truncated at the end of the message",
            b"ends inside \xe2\x82",
        ),
    ];
    for (what, payload) in cases {
        let (mut ws, _) = util::raw_handshake(addr, &[]);
        ws.send_frame(true, TEXT, payload);
        ws.expect_close_for(1007, what);
        ws.expect_eof();
    }
    assert_eq!(metric(addr, "gateway_close_1007_total"), cases.len() as u64);
}

#[test]
fn invalid_utf8_split_across_fragments_closes_with_1007() {
    let server = util::start_default();
    let addr = server.local_addr();
    // "\xe2\x82" starts a valid 3-byte character; the next fragment breaks it.
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    ws.send_frame(false, TEXT, b"euro sign starts \xe2\x82");
    ws.send_frame(true, CONTINUATION, b"( but is broken");
    ws.expect_close(1007);
    ws.expect_eof();
    // Fail fast: invalid bytes in the first fragment are refused before the message ends.
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    ws.send_frame(false, TEXT, b"\xc3\x28 and more to come");
    ws.expect_close(1007);
    ws.expect_eof();
    assert_eq!(metric(addr, "gateway_close_1007_total"), 2);
}

#[test]
fn message_over_the_read_limit_closes_with_1009() {
    let server = util::start(util::Config {
        max_message: 1000,
        ..util::config()
    });
    let addr = server.local_addr();

    // At the limit exactly: echoed.
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    let at_limit = util::binary_payload(1000, 1);
    ws.send_frame(true, BINARY, &at_limit);
    ws.expect_message(BINARY, &at_limit);
    // One byte over: refused.
    ws.send_frame(true, BINARY, &util::binary_payload(1001, 2));
    ws.expect_close(1009);
    ws.expect_eof();

    // Only the header of a 1 MB frame is sent: the answer must come from the header alone,
    // without the server waiting for (or buffering) the payload. Otherwise the read times out.
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    ws.send_raw(&encode_header_only(BINARY, 1_000_000, [1, 2, 3, 4]));
    ws.expect_close(1009);
    ws.expect_eof();

    // Fragments that are each under the limit but together over it.
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    ws.send_frame(false, TEXT, &[b'a'; 600]);
    ws.send_raw(&encode_header_only(CONTINUATION, 600, [5, 6, 7, 8]));
    ws.expect_close(1009);
    ws.expect_eof();

    assert_eq!(metric(addr, "gateway_close_1009_total"), 3);
}
