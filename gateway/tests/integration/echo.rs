//! `/echo` returns every message, text or binary, byte for byte: at each payload-length form
//! (7-bit, 16-bit and 64-bit lengths and their edges), pipelined, straddling the server's read
//! buffer, and under backpressure.

use std::io::Write;
use std::thread;

use tungstenite::Message;

use crate::util::raw::{BINARY, TEXT, masked, upgrade_request};
use crate::util::{self, Rng, assert_echo, binary_payload, text_payload};

/// The payload lengths at the edges of the three length encodings (RFC 6455 5.2), and 1 MiB.
const LENGTHS: [usize; 6] = [0, 125, 126, 65535, 65536, 1 << 20];

#[test]
fn text_and_binary_echo_at_every_length_form() {
    let server = util::start(util::Config {
        max_message: 2 << 20,
        ..util::config()
    });
    let mut ws = util::ws_connect(server.local_addr(), "/echo");
    for (i, len) in LENGTHS.into_iter().enumerate() {
        let text = text_payload(len, i as u64);
        assert_eq!(text.len(), len);
        assert_echo(&mut ws, Message::text(text));
        assert_echo(
            &mut ws,
            Message::binary(binary_payload(len, 100 + i as u64)),
        );
    }
}

#[test]
fn many_small_messages_pipelined_in_one_write_all_come_back_in_order() {
    // ~300 KiB of frames of varied length in one write: frames straddle the server's 64 KiB
    // read buffer, so partial headers and payloads are carried over between reads.
    let server = util::start_default();
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    let mut rng = Rng::new(42);
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..2000u64 {
        let len = (rng.next_u64() % 300) as usize;
        let (opcode, payload) = if i % 2 == 0 {
            (TEXT, text_payload(len, i).into_bytes())
        } else {
            (BINARY, binary_payload(len, i))
        };
        wire.extend(masked(opcode, rng.mask_key(), &payload));
        expected.push((opcode, payload));
    }
    let mut writer = ws.stream.try_clone().unwrap();
    // Written from another thread: the echoes flow back while the request is still going out.
    let sender = thread::spawn(move || writer.write_all(&wire).expect("send the frames"));
    for (opcode, payload) in &expected {
        ws.expect_message(*opcode, payload);
    }
    sender.join().unwrap();
}

#[test]
fn frames_sent_with_the_handshake_in_one_write_are_not_lost() {
    let server = util::start_default();
    let addr = server.local_addr();
    let mut ws = util::raw_connect(addr);
    let key = tungstenite::handshake::client::generate_key();
    let mut wire = upgrade_request(addr, "/echo", &key, &[]).into_bytes();
    wire.extend(masked(TEXT, [1, 2, 3, 4], "first ✓".as_bytes()));
    wire.extend(masked(BINARY, [5, 6, 7, 8], &[0, 255, 1, 254]));
    ws.send_raw(&wire);
    assert_eq!(ws.read_response_head().status, 101);
    ws.expect_text("first ✓");
    ws.expect_message(BINARY, &[0, 255, 1, 254]);
}

#[test]
fn large_messages_pipelined_faster_than_read_all_echo_under_backpressure() {
    // 24 x 1 MiB sent back to back by one thread while another reads: the server's output
    // queue passes max_queued (1 MiB), so it must stop reading this client and resume once its
    // queue drains. A server that never resumes makes the reader time out.
    const COUNT: u64 = 24;
    let server = util::start(util::Config {
        max_message: 2 << 20,
        ..util::config()
    });
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    let mut writer = ws.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut rng = Rng::new(9);
        for i in 0..COUNT {
            let frame = masked(BINARY, rng.mask_key(), &binary_payload(1 << 20, i));
            writer.write_all(&frame).expect("send a 1 MiB message");
        }
    });
    for i in 0..COUNT {
        ws.expect_message(BINARY, &binary_payload(1 << 20, i));
    }
    sender.join().unwrap();
}

/// With `--steer-by-cpu` (a BPF program picks the worker by the receiving CPU) every
/// connection is still accepted by some worker and echoes.
#[test]
fn connections_steered_by_cpu_all_echo() {
    let server = util::start(util::Config {
        steer_by_cpu: true,
        ..util::config()
    });
    let addr = server.local_addr();
    let mut clients: Vec<_> = (0..64).map(|_| util::ws_connect(addr, "/echo")).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_echo(ws, Message::text(format!("client {i}")));
    }
    assert_eq!(util::metric(addr, "gateway_accepted_total"), 64 + 1);
}
