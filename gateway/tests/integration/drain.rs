//! The graceful drain: listeners close, every WebSocket gets close 1001 at its own moment
//! within `--drain`, close handshakes finish, and the server stops; the binary does this on
//! SIGTERM and exits 0.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{self, raw};

#[test]
fn a_drain_spreads_the_closes_refuses_new_clients_and_stops() {
    let server = util::start(util::Config {
        workers: 2,
        drain: Duration::from_secs(1),
        close_grace: Duration::from_secs(1),
        ..util::config()
    });
    let addr = server.local_addr();
    let mut clients: Vec<_> = (0..20).map(|_| raw::raw_handshake(addr, &[]).0).collect();
    let start = Instant::now();
    server.drain();
    // Each client reads its close (1001), answers it, and notes when it came.
    let (tx, rx) = mpsc::channel();
    for mut ws in clients.drain(..) {
        let tx = tx.clone();
        thread::spawn(move || {
            let reason = ws.expect_close(1001);
            let _ = tx.send((start.elapsed(), reason));
            ws.send_close(1001, "");
        });
    }
    drop(tx);
    let mut seen: Vec<(Duration, String)> = rx.iter().collect();
    seen.sort();
    assert_eq!(seen.len(), 20, "every WebSocket was closed with 1001");
    assert!(seen.iter().all(|(_, r)| r == "server draining"), "{seen:?}");
    let (first, last) = (seen[0].0, seen[19].0);
    assert!(
        last < Duration::from_millis(1800),
        "all closed within the window: {last:?}"
    );
    assert!(
        last - first > Duration::from_millis(200),
        "closes spread over the window, not one wave: {first:?}..{last:?}"
    );
    // New connections are refused once the listeners are gone.
    util::eventually("connections refused", Duration::from_secs(2), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .is_err()
            .then_some(())
    });
    // And the server stops by itself.
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        server.join();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the workers stop after the drain");
}

#[test]
fn sigterm_drains_and_exits_0() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--drain",
            "300ms",
            "--workers",
            "1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway binary");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().expect("a first line").unwrap();
    let addr: SocketAddr = first
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    let (mut ws, _) = raw::raw_handshake(addr, &[]);
    ws.send_text("before");
    ws.expect_text("before");
    // SAFETY: kill(2) with a child's pid and a valid signal number; no memory is involved.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    assert_eq!(ws.expect_close(1001), "server draining");
    ws.send_close(1001, "");
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let rest: Vec<String> = lines.map_while(Result::ok).collect();
            panic!("the gateway did not exit after its drain: {rest:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
}
