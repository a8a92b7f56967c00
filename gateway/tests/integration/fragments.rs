//! Fragmented messages (RFC 6455 5.4): reassembled and echoed as one message, with control
//! frames answered between the fragments, UTF-8 characters split across fragments, and frames
//! that reach the server a byte at a time.

use std::thread;
use std::time::Duration;

use crate::util::raw::{BINARY, CONTINUATION, PING, PONG, TEXT, encode_frame, masked};
use crate::util::{self, Rng, binary_payload};

#[test]
fn fragmented_text_with_a_ping_between_fragments() {
    let server = util::start_default();
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    ws.send_frame(false, TEXT, "Hello, ".as_bytes());
    ws.send_frame(true, PING, b"mid-message ping");
    // The pong must come while the message is still open: the server may not hold control
    // frames back until the message ends (RFC 6455 5.4).
    ws.expect_pong(b"mid-message ping");
    ws.send_frame(false, CONTINUATION, "wörld € ".as_bytes());
    ws.send_frame(true, CONTINUATION, "😀!".as_bytes());
    ws.expect_text("Hello, wörld € 😀!");
}

#[test]
fn fragmented_binary_with_empty_fragments_pings_and_unsolicited_pongs() {
    let server = util::start_default();
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    // Under the default 64 KiB read limit.
    let payload = binary_payload(60_000, 3);
    let mut rng = Rng::new(11);
    let mut rest = &payload[..];
    let mut pings = Vec::new();
    // An empty first fragment, then pieces of every size class, some empty, with a ping and
    // an unsolicited pong (which must be ignored) after each.
    ws.send_frame(false, BINARY, b"");
    while !rest.is_empty() {
        let n = match rng.next_u64() % 4 {
            0 => 0,
            1 => (rng.next_u64() % 126) as usize,
            2 => 126 + (rng.next_u64() % 2000) as usize,
            _ => 20_000,
        }
        .min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        ws.send_frame(rest.is_empty(), CONTINUATION, piece);
        if !rest.is_empty() {
            let ping = format!("ping {}", pings.len()).into_bytes();
            ws.send_frame(true, PING, &ping);
            ws.send_frame(true, PONG, b"unsolicited");
            pings.push(ping);
        }
    }
    for ping in &pings {
        ws.expect_pong(ping);
    }
    ws.expect_message(BINARY, &payload);
}

#[test]
fn utf8_characters_split_across_fragments_are_accepted() {
    let server = util::start_default();
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    // "a€b😀": the 3-byte euro sign and the 4-byte emoji are cut inside the character.
    let text = "a€b😀";
    let bytes = text.as_bytes();
    ws.send_frame(false, TEXT, &bytes[..2]);
    ws.send_frame(false, CONTINUATION, &bytes[2..3]);
    ws.send_frame(false, CONTINUATION, &bytes[3..6]);
    ws.send_frame(false, CONTINUATION, &bytes[6..7]);
    ws.send_frame(true, CONTINUATION, &bytes[7..]);
    ws.expect_text(text);
    // One byte per fragment.
    let text = "ж水😀é";
    for (i, b) in text.as_bytes().iter().enumerate() {
        let opcode = if i == 0 { TEXT } else { CONTINUATION };
        ws.send_frame(i + 1 == text.len(), opcode, &[*b]);
    }
    ws.expect_text(text);
}

#[test]
fn frames_arriving_one_byte_at_a_time_are_reassembled() {
    // Every header form, a ping and a fragment boundary, each byte in its own TCP segment, so
    // the server sees partial headers, partial mask keys and partial control frames. (The
    // 64 KiB payload of the 64-bit-length frame goes in one piece after its header.)
    let server = util::start_default();
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    let mut rng = Rng::new(5);
    let small = binary_payload(125, 1);
    let medium = binary_payload(300, 2);
    let mut wire = Vec::new();
    wire.extend(masked(BINARY, rng.mask_key(), &small));
    wire.extend(encode_frame(
        false,
        0,
        TEXT,
        Some(rng.mask_key()),
        "fragmented ".as_bytes(),
    ));
    wire.extend(masked(PING, rng.mask_key(), b"byte by byte"));
    wire.extend(masked(CONTINUATION, rng.mask_key(), "échos".as_bytes()));
    wire.extend(masked(BINARY, rng.mask_key(), &medium));
    let large = binary_payload(65536, 3);
    let large_frame = masked(BINARY, rng.mask_key(), &large);
    let (large_header, large_payload) = large_frame.split_at(14);
    wire.extend_from_slice(large_header);
    for b in &wire {
        ws.send_raw(&[*b]);
        // Nagle is off; a pause now and then makes sure the bytes are not coalesced in the
        // socket buffer before the server reads them.
        if rng.next_u64().is_multiple_of(8) {
            thread::sleep(Duration::from_millis(1));
        }
    }
    ws.send_raw(large_payload);
    ws.expect_message(BINARY, &small);
    ws.expect_pong(b"byte by byte");
    ws.expect_text("fragmented échos");
    ws.expect_message(BINARY, &medium);
    ws.expect_message(BINARY, &large);
}
