//! Many connections on one gateway: 5,000 idle WebSockets on two workers, every one of which
//! must still echo. Handshakes are written by hand over plain `TcpStream`s, in batches, so
//! opening them costs little more than the TCP connects. While they idle, the keep-alive timer
//! pings each of them, so the timer wheel is exercised at the same scale.

use std::thread;
use std::time::{Duration, Instant};

use crate::util::raw::{PING, TEXT, upgrade_request};
use crate::util::{self, RawWs, metric, raw_connect, text_payload};

const CONNS: usize = 5000;
/// Handshakes sent before their answers are read.
const BATCH: usize = 250;

#[test]
fn five_thousand_idle_connections_all_echo() {
    // 5,000 client sockets and 5,000 server sockets in this one process.
    util::raise_nofile_limit();
    let server = util::start(util::Config {
        workers: 2,
        ping_interval: Duration::from_millis(300),
        // Long enough that nobody is dropped for not answering the pings.
        pong_timeout: Duration::from_secs(60),
        ..util::config()
    });
    let addr = server.local_addr();
    let started = Instant::now();

    let mut conns: Vec<RawWs> = Vec::with_capacity(CONNS);
    while conns.len() < CONNS {
        let n = BATCH.min(CONNS - conns.len());
        let batch: Vec<(RawWs, String)> = (0..n)
            .map(|_| {
                let mut ws = raw_connect(addr);
                let key = tungstenite::handshake::client::generate_key();
                ws.send_raw(upgrade_request(addr, "/echo", &key, &[]).as_bytes());
                (ws, key)
            })
            .collect();
        for (mut ws, key) in batch {
            let head = ws.read_response_head();
            assert_eq!(head.status, 101, "connection {}: {head:?}", conns.len());
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            assert_eq!(head.header("sec-websocket-accept"), Some(accept.as_str()));
            conns.push(ws);
        }
    }
    let opened = started.elapsed();
    // All open at once (the /metrics request itself is one more).
    assert!(metric(addr, "gateway_open_connections") >= CONNS as u64);

    // Idle long enough for every connection to be pinged at least once.
    thread::sleep(Duration::from_secs(1));

    // Every connection, idle since its handshake, echoes its own message. All are sent before
    // any is read, so the workers have thousands of ready sockets at once.
    let messages: Vec<String> = (0..CONNS)
        .map(|i| format!("conn {i}: {}", text_payload(16 + i % 48, i as u64)))
        .collect();
    for (ws, msg) in conns.iter_mut().zip(&messages) {
        ws.send_text(msg);
    }
    for (i, (ws, msg)) in conns.iter_mut().zip(&messages).enumerate() {
        let mut pings = 0;
        let echo = loop {
            let f = ws.read_frame();
            if f.opcode != PING {
                break f;
            }
            pings += 1;
        };
        assert_eq!(echo.opcode, TEXT, "connection {i}: {echo:?}");
        assert!(echo.payload == msg.as_bytes(), "connection {i}: wrong echo");
        assert!(
            pings >= 1,
            "connection {i} was idle for a second and never pinged"
        );
    }
    assert_eq!(metric(addr, "gateway_ws_opened_total"), CONNS as u64);
    eprintln!(
        "{CONNS} connections opened in {opened:?}, all echoed after {:?}",
        started.elapsed()
    );
}
