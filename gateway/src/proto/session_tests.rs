//! The in-memory harness: a server [`Session`] and a client [`Session`] wired together without
//! sockets, driven by a fake clock, and the behaviours of the close handshake, keep-alive,
//! fragmentation, compression and protocol violations on it.

use super::*;
use crate::proto::deflate::{Compressor, DeflateConfig, Deflater};
use crate::proto::frame::write_frame;

/// Something one side read, owned so a test can compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    /// The session failed the connection with this close code.
    Failed(u16),
}

/// One end: its session, what it has written that the other end has not read, and what it read.
struct End<M: Masking> {
    session: Session<M>,
    /// The message buffer the driver lends to the session.
    msg: Vec<u8>,
    /// Bytes on the wire toward the other end.
    wire: Vec<u8>,
    /// Bytes received and not consumed yet (an incomplete frame).
    pending: Vec<u8>,
    got: Vec<Got>,
}

impl<M: Masking> End<M> {
    fn new(masks: M, deflate: Option<DeflateParams>) -> End<M> {
        End {
            session: Session::new(masks, 1 << 16, deflate, 0),
            msg: Vec::new(),
            wire: Vec::new(),
            pending: Vec::new(),
            got: Vec::new(),
        }
    }

    /// Feeds `bytes` in pieces of at most `split`, the way a socket might deliver them.
    fn receive(&mut self, bytes: &[u8], split: usize, now: Tick) {
        for chunk in bytes.chunks(split.max(1)) {
            self.pending.extend_from_slice(chunk);
            let mut input = std::mem::take(&mut self.pending);
            let mut pos = 0;
            loop {
                let step = self.session.handle_input(
                    &mut input[pos..],
                    &mut self.msg,
                    now,
                    &mut self.wire,
                );
                match step {
                    Err(e) => {
                        self.got.push(Got::Failed(e.close_code().0));
                        pos = input.len();
                        break;
                    }
                    Ok(step) => {
                        pos += step.consumed;
                        let got = match step.event {
                            None if step.consumed == 0 => break,
                            None => continue,
                            Some(Event::Message(MessageKind::Text)) => {
                                Got::Text(String::from_utf8(std::mem::take(&mut self.msg)).unwrap())
                            }
                            Some(Event::Message(MessageKind::Binary)) => {
                                Got::Binary(std::mem::take(&mut self.msg))
                            }
                            Some(Event::Ping(p)) => Got::Ping(p.to_vec()),
                            Some(Event::Pong(p)) => Got::Pong(p.to_vec()),
                            Some(Event::Close(f)) => {
                                Got::Close(f.code.map(|c| c.0), f.reason.to_string())
                            }
                        };
                        self.got.push(got);
                    }
                }
            }
            input.drain(..pos);
            self.pending = input;
        }
    }
}

/// A server and a client joined by two in-memory wires.
struct Pair {
    server: End<Unmasked>,
    client: End<Rng>,
    /// Bytes per delivery: 1 splits every frame byte by byte.
    split: usize,
}

impl Pair {
    fn new() -> Pair {
        Self::with_deflate(None)
    }

    fn with_deflate(deflate: Option<DeflateParams>) -> Pair {
        Pair {
            server: End::new(Unmasked, deflate),
            client: End::new(Rng::new(7), deflate),
            split: usize::MAX,
        }
    }

    /// Moves bytes both ways until neither side has anything left to say.
    fn pump(&mut self, now: Tick) {
        while !self.server.wire.is_empty() || !self.client.wire.is_empty() {
            let to_client = std::mem::take(&mut self.server.wire);
            self.client.receive(&to_client, self.split, now);
            let to_server = std::mem::take(&mut self.client.wire);
            self.server.receive(&to_server, self.split, now);
        }
    }
}

const T: Timeouts = Timeouts {
    ping: 10,
    pong: 25,
    close_grace: 5,
};

#[test]
fn messages_both_ways_and_split_anywhere() {
    for split in [usize::MAX, 1, 3] {
        let mut p = Pair::new();
        p.split = split;
        assert!(
            p.client
                .session
                .send(MessageKind::Text, b"hello", &mut p.client.wire)
        );
        let h = p
            .server
            .session
            .data_header(MessageKind::Binary, false, 3)
            .unwrap();
        p.server.wire.extend_from_slice(h.as_bytes());
        p.server.wire.extend_from_slice(&[1, 2, 3]);
        p.pump(0);
        assert_eq!(p.server.got, [Got::Text("hello".into())], "split {split}");
        assert_eq!(p.client.got, [Got::Binary(vec![1, 2, 3])], "split {split}");
    }
}

#[test]
fn client_closes_first_and_the_server_echoes_its_code() {
    let mut p = Pair::new();
    assert!(
        p.client
            .session
            .close(CloseCode(4001), "bye", 3, &mut p.client.wire)
    );
    assert_eq!(p.client.session.state(), SessionState::CloseSent);
    p.pump(4);
    assert_eq!(p.server.got, [Got::Close(Some(4001), "bye".into())]);
    assert_eq!(p.client.got, [Got::Close(Some(4001), String::new())]);
    assert_eq!(p.server.session.state(), SessionState::Closed);
    assert_eq!(p.client.session.state(), SessionState::Closed);
}

#[test]
fn server_closes_first_and_delivers_until_the_answer() {
    let mut p = Pair::new();
    assert!(
        p.server
            .session
            .close(CloseCode::GOING_AWAY, "restart", 0, &mut p.server.wire)
    );
    // The client's message crossing our close is still delivered; its pings are not answered.
    p.client
        .session
        .send(MessageKind::Text, b"late", &mut p.client.wire);
    p.client.session.ping(b"p", 0, &mut p.client.wire);
    let to_server = std::mem::take(&mut p.client.wire);
    p.server.receive(&to_server, usize::MAX, 0);
    assert_eq!(
        p.server.got,
        [Got::Text("late".into()), Got::Ping(b"p".to_vec())]
    );
    assert!(
        p.server.wire.starts_with(&[0x88]),
        "only the close frame is on the wire"
    );
    p.pump(1);
    assert_eq!(p.client.got, [Got::Close(Some(1001), "restart".into())]);
    assert_eq!(
        p.server.got.last(),
        Some(&Got::Close(Some(1001), String::new()))
    );
    assert_eq!(p.server.session.state(), SessionState::Closed);
    assert_eq!(p.client.session.state(), SessionState::Closed);
}

#[test]
fn an_empty_close_is_answered_with_an_empty_close() {
    let mut p = Pair::new();
    write_frame(
        &mut p.client.wire,
        true,
        OpCode::Close,
        false,
        Some([1, 2, 3, 4]),
        b"",
    );
    p.pump(0);
    assert_eq!(p.server.got, [Got::Close(None, String::new())]);
    assert_eq!(p.client.got, [Got::Close(None, String::new())]);
}

#[test]
fn nothing_is_sent_after_a_close_frame() {
    let mut p = Pair::new();
    let s = &mut p.server.session;
    assert!(s.close(CloseCode::NORMAL, "", 0, &mut p.server.wire));
    let len = p.server.wire.len();
    assert!(!s.close(CloseCode::NORMAL, "again", 0, &mut p.server.wire));
    assert!(!s.send(MessageKind::Text, b"x", &mut p.server.wire));
    assert!(!s.ping(b"", 0, &mut p.server.wire));
    assert!(s.data_header(MessageKind::Text, false, 1).is_none());
    assert_eq!(p.server.wire.len(), len);
    // The peer's close completes the handshake; later input is ignored.
    p.pump(0);
    assert_eq!(p.server.session.state(), SessionState::Closed);
    p.client.wire.clear();
    write_frame(
        &mut p.client.wire,
        true,
        OpCode::Text,
        false,
        Some([9; 4]),
        b"ignored",
    );
    let n = p.server.got.len();
    p.pump(0);
    assert_eq!(p.server.got.len(), n);
    assert!(p.server.wire.is_empty());
}

#[test]
fn pings_are_answered_with_their_payload() {
    let mut p = Pair::new();
    assert!(p.client.session.ping(b"abc", 0, &mut p.client.wire));
    p.server.session.ping(b"xyz", 0, &mut p.server.wire);
    p.pump(0);
    assert_eq!(
        p.server.got,
        [Got::Ping(b"abc".to_vec()), Got::Pong(b"xyz".to_vec())]
    );
    assert_eq!(
        p.client.got,
        [Got::Ping(b"xyz".to_vec()), Got::Pong(b"abc".to_vec())]
    );
}

#[test]
fn keep_alive_pings_a_quiet_peer_and_drops_a_silent_one() {
    let mut p = Pair::new();
    assert_eq!(p.server.session.deadline(&T), 10);
    let s = &mut p.server.session;
    assert_eq!(s.handle_timeout(9, &T, &mut p.server.wire), Timeout::NotDue);
    assert_eq!(
        s.handle_timeout(10, &T, &mut p.server.wire),
        Timeout::Pinged
    );
    // The client answers at 12: the peer is alive, the next ping is due 10 ticks later.
    p.pump(12);
    assert_eq!(p.client.got, [Got::Ping(vec![])]);
    assert_eq!(p.server.got, [Got::Pong(vec![])]);
    assert_eq!(p.server.session.deadline(&T), 22);
    // Now the client goes silent: pinged at 22, given up on 25 ticks after it last spoke.
    let s = &mut p.server.session;
    assert_eq!(
        s.handle_timeout(22, &T, &mut p.server.wire),
        Timeout::Pinged
    );
    assert_eq!(s.deadline(&T), 32);
    assert_eq!(
        s.handle_timeout(32, &T, &mut p.server.wire),
        Timeout::Pinged
    );
    assert_eq!(s.deadline(&T), 37);
    assert_eq!(
        s.handle_timeout(36, &T, &mut p.server.wire),
        Timeout::NotDue
    );
    assert_eq!(
        s.handle_timeout(37, &T, &mut p.server.wire),
        Timeout::PeerSilent
    );
    assert_eq!(s.state(), SessionState::Closed);
}

#[test]
fn traffic_postpones_the_ping() {
    let mut p = Pair::new();
    p.client
        .session
        .send(MessageKind::Text, b"hi", &mut p.client.wire);
    p.pump(8);
    assert_eq!(p.server.session.deadline(&T), 18);
}

#[test]
fn a_close_that_is_never_answered_times_out() {
    let mut p = Pair::new();
    let s = &mut p.server.session;
    s.close(CloseCode::NORMAL, "", 100, &mut p.server.wire);
    assert_eq!(s.deadline(&T), 105);
    assert_eq!(
        s.handle_timeout(104, &T, &mut p.server.wire),
        Timeout::NotDue
    );
    assert_eq!(
        s.handle_timeout(105, &T, &mut p.server.wire),
        Timeout::CloseTimedOut
    );
    assert_eq!(s.state(), SessionState::Closed);
}

#[test]
fn fragmented_messages_with_a_ping_between_fragments() {
    let mut p = Pair::new();
    p.split = 2;
    let m = Some([5, 6, 7, 8]);
    let w = &mut p.client.wire;
    write_frame(w, false, OpCode::Text, false, m, "héllo, ".as_bytes());
    write_frame(w, true, OpCode::Ping, false, m, b"mid");
    write_frame(w, false, OpCode::Continuation, false, m, b"wor");
    write_frame(w, true, OpCode::Continuation, false, m, b"ld");
    p.pump(0);
    assert_eq!(
        p.server.got,
        [Got::Ping(b"mid".to_vec()), Got::Text("héllo, world".into())]
    );
    assert_eq!(p.client.got, [Got::Pong(b"mid".to_vec())]);
}

fn deflate_params() -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    }
}

#[test]
fn compressed_messages_both_ways() {
    let mut p = Pair::with_deflate(Some(deflate_params()));
    p.split = 5;
    let text = "compress me, compress me, compress me, compress me, compress me!";
    // Client to server: two messages on one context (client context takeover).
    let mut d = Deflater::new(15, false, 6);
    for _ in 0..2 {
        let mut z = Vec::new();
        d.compress(text.as_bytes(), &mut z);
        write_frame(
            &mut p.client.wire,
            true,
            OpCode::Text,
            true,
            Some([1, 3, 5, 7]),
            &z,
        );
    }
    // Server to client, through the shared compressor.
    let mut c = Compressor::new(&DeflateConfig::default());
    let (rsv1, body) = c.encode(p.server.session.send_deflate(), text.as_bytes());
    assert!(rsv1 && body.len() < text.len());
    let h = p
        .server
        .session
        .data_header(MessageKind::Text, rsv1, body.len())
        .unwrap();
    p.server.wire.extend_from_slice(h.as_bytes());
    p.server.wire.extend_from_slice(body);
    p.pump(0);
    assert_eq!(
        p.server.got,
        [Got::Text(text.into()), Got::Text(text.into())]
    );
    assert_eq!(p.client.got, [Got::Text(text.into())]);
}

#[test]
fn the_compressor_sends_short_and_incompressible_bodies_as_they_are() {
    let mut c = Compressor::new(&DeflateConfig::default());
    assert_eq!(c.encode(Some(15), b"short"), (false, &b"short"[..]));
    assert_eq!(c.encode(None, &[b'a'; 500]), (false, &[b'a'; 500][..]));
    let noise: Vec<u8> = {
        let mut r = Rng::new(3);
        (0..600).map(|_| r.next_u64() as u8).collect()
    };
    assert_eq!(c.encode(Some(15), &noise), (false, &noise[..]));
    assert!(c.encode(Some(15), &[b'a'; 500]).0);
}

/// A violation fails the connection with the code it calls for, and the peer sees that code.
#[test]
fn protocol_violations_close_with_their_codes() {
    let unmasked = |w: &mut Vec<u8>| write_frame(w, true, OpCode::Text, false, None, b"x");
    let bad_utf8 =
        |w: &mut Vec<u8>| write_frame(w, true, OpCode::Text, false, Some([1; 4]), &[0xff]);
    let too_big = |w: &mut Vec<u8>| {
        write_frame(
            w,
            true,
            OpCode::Binary,
            false,
            Some([1; 4]),
            &vec![0; (1 << 16) + 1],
        )
    };
    let rsv1_without_deflate =
        |w: &mut Vec<u8>| write_frame(w, true, OpCode::Text, true, Some([1; 4]), b"x");
    let stray_continuation =
        |w: &mut Vec<u8>| write_frame(w, true, OpCode::Continuation, false, Some([1; 4]), b"x");
    type WriteFrame<'a> = &'a dyn Fn(&mut Vec<u8>);
    let cases: [(&str, WriteFrame, u16); 5] = [
        ("unmasked", &unmasked, 1002),
        ("bad utf-8", &bad_utf8, 1007),
        ("too big", &too_big, 1009),
        ("rsv1", &rsv1_without_deflate, 1002),
        ("continuation", &stray_continuation, 1002),
    ];
    for (name, write, code) in cases {
        let mut p = Pair::new();
        write(&mut p.client.wire);
        p.pump(0);
        assert_eq!(p.server.got, [Got::Failed(code)], "{name}");
        assert_eq!(p.server.session.state(), SessionState::Closed, "{name}");
        match p.client.got.as_slice() {
            [Got::Close(Some(c), reason)] => {
                assert_eq!(*c, code, "{name}");
                assert!(!reason.is_empty(), "{name}: the reason names the rule");
            }
            other => panic!("{name}: client got {other:?}"),
        }
    }
}

#[test]
fn a_masked_server_frame_fails_the_client() {
    let mut p = Pair::new();
    write_frame(
        &mut p.server.wire,
        true,
        OpCode::Text,
        false,
        Some([1; 4]),
        b"x",
    );
    p.pump(0);
    assert_eq!(p.client.got, [Got::Failed(1002)]);
    assert_eq!(
        p.server.got,
        [Got::Close(
            Some(1002),
            "server frames must not be masked".into()
        )]
    );
}

#[test]
fn a_message_spanning_reads_keeps_the_session_in_message() {
    let mut p = Pair::new();
    write_frame(
        &mut p.client.wire,
        false,
        OpCode::Binary,
        false,
        Some([3; 4]),
        &[1; 10],
    );
    p.pump(0);
    assert!(
        p.server.session.in_message(),
        "the driver must keep the buffer"
    );
    write_frame(
        &mut p.client.wire,
        true,
        OpCode::Continuation,
        false,
        Some([3; 4]),
        &[2],
    );
    p.pump(0);
    assert!(!p.server.session.in_message());
    let mut want = vec![1; 10];
    want.push(2);
    assert_eq!(p.server.got, [Got::Binary(want)]);
}
