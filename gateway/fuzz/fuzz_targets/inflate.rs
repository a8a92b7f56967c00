//! Fuzzes permessage-deflate through the APIs the gateway uses: hostile compressed messages
//! read by a server `Session` (the inflate path of every connection), and the shared
//! `Compressor` whose output every subscriber must be able to inflate.
//!
//! The first input byte picks the client's window (bits 0-2: 8 to 15), whether the client
//! keeps its context (bit 3) and the compression level of the round trip (upper bits). The rest
//! is cut at every 0xA5 byte into message bodies, each sent by a client session as one
//! compressed frame (text and binary alternating) to a server session. Properties: no panic;
//! every message is within the limit and a text is UTF-8; a refusal is a 1007 or 1009 close and
//! nothing is read after it; and whatever the Compressor produces inflates back to its input.
#![no_main]

use gateway::proto::{
    ClientSession, Compressor, DeflateConfig, DeflateParams, Event, Inflater, MessageKind, Rng,
    ServerSession, Unmasked,
};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 16;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let bits = 8 + (flags & 7);
    let params = DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: flags & 8 != 0,
        server_max_window_bits: 15,
        client_max_window_bits: bits,
    };

    // Hostile compressed messages into a server session.
    let mut client = ClientSession::new(Rng::new(7), LIMIT, Some(params), 0);
    let mut server = ServerSession::new(Unmasked, LIMIT, Some(params), 0);
    let mut wire = Vec::new();
    for (i, body) in rest.split(|&b| b == 0xA5).enumerate() {
        let kind = if i % 2 == 0 {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        assert!(client.send_message(kind, true, body, &mut wire));
    }
    let (mut msg, mut out, mut pos) = (Vec::new(), Vec::new(), 0);
    while pos < wire.len() {
        match server.handle_input(&mut wire[pos..], &mut msg, 0, &mut out) {
            Err(e) => {
                let code = e.close_code().0;
                assert!(code == 1007 || code == 1009, "{e}: close {code}");
                let after = server.handle_input(&mut wire[pos..], &mut msg, 0, &mut out);
                assert!(
                    matches!(after, Ok(s) if s.event.is_none()),
                    "read after a refusal"
                );
                break;
            }
            Ok(step) => {
                assert!(
                    step.consumed > 0 || step.event.is_some(),
                    "whole frames were given"
                );
                pos += step.consumed;
                if let Some(Event::Message(kind)) = step.event {
                    assert!(msg.len() <= LIMIT, "message over the limit");
                    if kind == MessageKind::Text {
                        assert!(std::str::from_utf8(&msg).is_ok(), "text that is not UTF-8");
                    }
                    msg.clear();
                }
            }
        }
    }

    // The compressor's output always inflates back.
    let cfg = DeflateConfig {
        level: u32::from(flags >> 4) % 10,
        min_size: 0,
        ..Default::default()
    };
    let mut compressor = Compressor::new(&cfg);
    let (compressed, body) = compressor.encode(Some(bits), rest);
    if compressed {
        assert!(body.len() < rest.len());
        let mut inflater = Inflater::new(bits, true);
        let mut back = Vec::new();
        inflater
            .inflate(body, &mut back, rest.len())
            .expect("our own output inflates");
        inflater
            .finish(&mut back, rest.len())
            .expect("our own output ends cleanly");
        assert_eq!(back, rest);
    } else {
        assert_eq!(body, rest);
    }
});
