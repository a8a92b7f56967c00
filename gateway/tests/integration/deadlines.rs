//! Deadlines (DESIGN.md sections 3 and 5): a client that never finishes its handshake is
//! dropped at the handshake timeout; a silent WebSocket is pinged after the ping interval and
//! dropped at the pong timeout; a client that answers pings stays; a closing connection is
//! released at the close grace. Short deadlines (a few hundred milliseconds) keep the tests
//! fast.
//!
//! Each deadline is checked from both sides: not before it (each client's clock starts before
//! it connects, so the server's own start is later still), and not more than a second after.
//! `gateway::server::timer` promises deadlines fire late, never early. Clients start at
//! staggered offsets within a 50 ms timer tick, each on its own thread timing its own events:
//! a deadline counted from the start of a tick rather than from the event itself would fire
//! early for all but one phase.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::raw::{PING, PONG, TEXT};
use crate::util::{self, Frame, RawWs, Timings, metric};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(300);
const PING_INTERVAL: Duration = Duration::from_millis(200);
const PONG_TIMEOUT: Duration = Duration::from_millis(500);
/// How late a deadline may fire on a loaded test machine.
const SLACK: Duration = Duration::from_secs(1);
/// Start offsets of the clients, spread over one timer tick.
const STAGGER_MS: [u64; 5] = [0, 10, 20, 30, 40];

/// Waits until the server closes `stream`; returns whether it ended with a reset rather than
/// an orderly EOF. Any bytes received first fail the test: a timed-out client gets no answer.
fn wait_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => false,
        Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("the connection was not closed: {e}"),
    }
}

/// How a client fails to finish its handshake.
#[derive(Debug, Clone, Copy)]
enum Unfinished {
    /// Connects and says nothing.
    Silent,
    /// Sends half a request head.
    Half,
    /// Trickles a never-ending head a byte every 20 ms (slowloris); every byte must not push
    /// the deadline back.
    Trickle,
}

/// Opens a connection that never finishes its handshake; returns when the server dropped it
/// (measured from just before connecting) and whether that was a reset.
fn unfinished_handshake(addr: std::net::SocketAddr, how: Unfinished) -> (Duration, bool) {
    let start = Instant::now();
    let mut stream = util::tcp_connect(addr);
    let trickler = match how {
        Unfinished::Silent => None,
        Unfinished::Half => {
            stream
                .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                .unwrap();
            None
        }
        Unfinished::Trickle => {
            let mut writer = stream.try_clone().unwrap();
            Some(thread::spawn(move || {
                let mut head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
                head.extend_from_slice(&[b'y'; 200]);
                for b in head {
                    // Stops once the server has closed the connection.
                    if writer.write_all(&[b]).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }))
        }
    };
    let reset = wait_closed(&mut stream);
    let elapsed = start.elapsed();
    if let Some(t) = trickler {
        t.join().unwrap();
    }
    (elapsed, reset)
}

#[test]
fn unfinished_handshakes_are_dropped_at_the_handshake_timeout() {
    let server = util::start(util::Config {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        ..util::config()
    });
    let addr = server.local_addr();
    let mut clients = Vec::new();
    for how in [Unfinished::Silent, Unfinished::Half, Unfinished::Trickle] {
        for offset in STAGGER_MS {
            clients.push(thread::spawn(move || {
                thread::sleep(Duration::from_millis(offset));
                (how, offset, unfinished_handshake(addr, how))
            }));
        }
    }
    let mut timings = Timings::default();
    for client in clients {
        let (how, offset, (elapsed, reset)) = client.join().unwrap();
        timings.check(
            &format!("{how:?} client at +{offset} ms dropped (reset: {reset})"),
            elapsed,
            HANDSHAKE_TIMEOUT,
            HANDSHAKE_TIMEOUT + SLACK,
        );
    }
    assert_eq!(
        metric(addr, "gateway_handshake_timeouts_total"),
        3 * STAGGER_MS.len() as u64
    );
    timings.assert_all();
}

#[test]
fn an_open_websocket_outlives_the_handshake_timeout() {
    let server = util::start(util::Config {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        ..util::config()
    });
    let (mut ws, _) = util::raw_handshake(server.local_addr(), &[]);
    // Past the handshake deadline (plus a few ticks): the deadline died with the handshake.
    thread::sleep(HANDSHAKE_TIMEOUT * 2);
    ws.send_text("still open");
    ws.expect_text("still open");
    assert_eq!(
        metric(server.local_addr(), "gateway_handshake_timeouts_total"),
        0
    );
}

#[test]
fn silent_client_is_pinged_then_dropped_at_the_pong_timeout() {
    let server = util::start(util::Config {
        ping_interval: PING_INTERVAL,
        pong_timeout: PONG_TIMEOUT,
        ..util::config()
    });
    let addr = server.local_addr();
    let clients: Vec<_> = STAGGER_MS
        .into_iter()
        .map(|offset| {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(offset));
                let start = Instant::now();
                let (mut ws, _) = util::raw_handshake(addr, &[]);
                let ping = ws.read_frame();
                let pinged_at = start.elapsed();
                assert_eq!(
                    (ping.fin, ping.opcode),
                    (true, PING),
                    "expected a ping: {ping:?}"
                );
                // Not answering: more pings may come, then the server closes.
                let mut pings = 1;
                while let Some(f) = ws.try_read_frame() {
                    assert_eq!(f.opcode, PING, "only pings before the drop: {f:?}");
                    pings += 1;
                }
                (offset, pinged_at, start.elapsed(), pings)
            })
        })
        .collect();
    let mut timings = Timings::default();
    let mut pings_seen = 0;
    for client in clients {
        let (offset, pinged_at, dropped_at, pings) = client.join().unwrap();
        pings_seen += pings;
        timings.check(
            &format!("client at +{offset} ms: first ping"),
            pinged_at,
            PING_INTERVAL,
            PONG_TIMEOUT,
        );
        timings.check(
            &format!("client at +{offset} ms: dropped"),
            dropped_at,
            PONG_TIMEOUT,
            PONG_TIMEOUT + SLACK,
        );
    }
    assert_eq!(
        metric(addr, "gateway_pong_timeouts_total"),
        STAGGER_MS.len() as u64
    );
    assert!(metric(addr, "gateway_pings_sent_total") >= pings_seen);
    timings.assert_all();
}

#[test]
fn client_answering_pings_stays_connected_past_the_pong_timeout() {
    let server = util::start(util::Config {
        ping_interval: PING_INTERVAL,
        pong_timeout: PONG_TIMEOUT,
        ..util::config()
    });
    let addr = server.local_addr();
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < PONG_TIMEOUT * 3 {
        let f = ws.read_frame();
        answer_ping(&mut ws, &f);
        pings += 1;
    }
    assert!(pings >= 3, "{pings} pings in {:?}", PONG_TIMEOUT * 3);
    ws.send_text("still here");
    // A ping may be on its way in front of the echo.
    loop {
        let f = ws.read_frame();
        if f.opcode == PING {
            answer_ping(&mut ws, &f);
            continue;
        }
        assert_eq!((f.opcode, f.payload.as_slice()), (TEXT, &b"still here"[..]));
        break;
    }
    assert_eq!(metric(addr, "gateway_pong_timeouts_total"), 0);
}

fn answer_ping(ws: &mut RawWs, f: &Frame) {
    assert_eq!((f.fin, f.opcode), (true, PING), "expected a ping: {f:?}");
    ws.send_frame(true, PONG, &f.payload);
}

#[test]
fn closing_connection_that_never_goes_away_is_released_at_the_close_grace() {
    const GRACE: Duration = Duration::from_millis(300);
    let server = util::start(util::Config {
        close_grace: GRACE,
        ..util::config()
    });
    let addr = server.local_addr();
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    // The server fails the connection and shuts its side; the client never closes its own.
    ws.send_frame(true, 0x3, b"reserved opcode");
    ws.expect_close(1002);
    ws.expect_eof();
    // Only the HTTP request reading /metrics is left open once the grace has run out.
    let open = util::eventually("slot released", GRACE + SLACK, || {
        let open = metric(addr, "gateway_open_connections");
        (open == 1).then_some(open)
    });
    assert_eq!(open, 1);
    assert_eq!(metric(addr, "gateway_close_grace_timeouts_total"), 1);
    drop(ws);
}

#[test]
fn a_completed_close_handshake_closes_at_once_without_waiting_for_the_client() {
    // RFC 6455 7.1.1: after both Close frames the server closes the TCP connection first. The
    // client here answers nothing more and keeps its side open: the slot must be free long
    // before the close grace (which only a connection whose peer never answered waits out).
    const GRACE: Duration = Duration::from_secs(30);
    let server = util::start(util::Config {
        close_grace: GRACE,
        ..util::config()
    });
    let addr = server.local_addr();
    let (mut ws, _) = util::raw_handshake(addr, &[]);
    ws.send_text("last words");
    ws.expect_text("last words");
    ws.send_close(1000, "done");
    ws.expect_close(1000);
    // A FIN (end of stream), not a reset: the close frame above was read in full before it.
    ws.expect_eof();
    // Only the HTTP request reading /metrics is left open.
    util::eventually("slot released", SLACK, || {
        (metric(addr, "gateway_open_connections") == 1).then_some(())
    });
    assert_eq!(metric(addr, "gateway_close_grace_timeouts_total"), 0);
    drop(ws);
}
