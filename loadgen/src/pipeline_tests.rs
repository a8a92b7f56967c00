//! Tests of the pipelined HTTP publisher against scripted servers on 127.0.0.1: requests go
//! out without waiting for answers, answers are matched in order, 503s are refusals, the window
//! bounds what is in flight, and a closed connection is counted and replaced.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use super::*;
use crate::payload::parse_fanout;

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\r\n{\"topic\":\"chat/t\",\"seq\":1,\"subscribers\":3}  ";
const BUSY: &str =
    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}";
const FULL: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
const DENIED: &str = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
const OK_CLOSE: &str =
    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 18\r\n\r\n{\"subscribers\":1}\n";

/// Reads requests until at least `min` are complete; returns their bodies (`None`: the
/// client closed first).
fn requests(s: &mut TcpStream, buf: &mut Vec<u8>, min: usize) -> Option<Vec<Vec<u8>>> {
    let mut bodies = Vec::new();
    loop {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(head)) = req.parse(buf) else {
                break;
            };
            assert_eq!(req.method, Some("POST"));
            assert_eq!(req.path, Some("/publish/chat/t"));
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("Content-Length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .expect("Content-Length");
            if buf.len() < head + len {
                break;
            }
            bodies.push(buf[head..head + len].to_vec());
            buf.drain(..head + len);
        }
        if bodies.len() >= min {
            return Some(bodies);
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A server that runs `script` on each connection it accepts, in turn (with the connection's
/// number), and returns what the scripts returned.
fn serve<F>(conns: usize, mut script: F) -> (Endpoint, JoinHandle<Vec<u64>>)
where
    F: FnMut(usize, &mut TcpStream) -> u64 + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        (0..conns)
            .map(|i| {
                let (mut s, _) = l.accept().unwrap();
                script(i, &mut s)
            })
            .collect()
    });
    let target = Endpoint {
        addr,
        host: addr.to_string(),
        path: "/publish/chat/t".into(),
        tls: None,
    };
    (target, h)
}

fn run(target: &Endpoint, flags: &[&str]) -> Published {
    let publish_url = format!("http://{}{}", target.host, target.path);
    let mut argv = vec![
        "loadgen",
        "--url",
        "ws://127.0.0.1:1/ws/chat/t",
        "--timeout",
        "3s",
    ];
    argv.extend_from_slice(&["--publish-url", &publish_url]);
    argv.extend_from_slice(flags);
    let cfg = crate::args::parse(argv).unwrap_or_else(|e| panic!("{}", e.line()));
    crate::publisher::publish(&cfg, &AtomicBool::new(false))
}

#[test]
fn requests_are_pipelined_and_answers_matched_in_order() {
    let (target, server) = serve(1, |_, s| {
        let mut buf = Vec::new();
        // Nothing is answered until five requests are in: a publisher that waited for each
        // answer would stall here until its timeout.
        let first = requests(s, &mut buf, 5).unwrap();
        for (i, b) in first.iter().enumerate() {
            assert_eq!(parse_fanout(b).unwrap().seq, i as u64);
        }
        let answers = [OK, BUSY, OK, FULL, DENIED];
        let mut text: String = answers[..first.len().min(5)].concat();
        text.extend(std::iter::repeat_n(OK, first.len().saturating_sub(5)));
        s.write_all(text.as_bytes()).unwrap();
        let mut seen = first.len() as u64;
        while let Some(more) = requests(s, &mut buf, 1) {
            for b in &more {
                assert_eq!(parse_fanout(b).unwrap().seq, seen);
                seen += 1;
                s.write_all(OK.as_bytes()).unwrap();
            }
        }
        seen
    });
    let p = run(
        &target,
        &[
            "--scenario",
            "fanout",
            "--rate",
            "1000",
            "--duration",
            "10ms",
        ],
    );
    assert_eq!(server.join().unwrap(), [10]);
    let a = p.answers;
    assert_eq!(
        (a.ok, a.busy, a.refused, a.other, a.unanswered),
        (7, 1, 1, 1, 0)
    );
    let accepted: Vec<bool> = [1, 0, 1, 0, 0, 1, 1, 1, 1, 1].map(|x| x == 1).to_vec();
    assert_eq!(p.accepted, accepted);
    assert_eq!(p.failures.0.get("publish: HTTP 401"), Some(&1));
    assert_eq!(p.failures.total(), 1, "503s are refusals, not failures");
    assert_eq!(p.server_subscribers, Some(3));
    assert!(p.max_in_flight >= 5, "{}", p.max_in_flight);
    assert_eq!(p.request_latency.count(), 10);
    assert_eq!(p.last_seq(), Some(9));
}

#[test]
fn the_window_bounds_requests_in_flight() {
    let (target, server) = serve(1, |_, s| {
        let mut buf = Vec::new();
        let mut most = 0;
        while let Some(batch) = requests(s, &mut buf, 3) {
            // Whatever else the publisher wanted to send must wait for these answers.
            std::thread::sleep(Duration::from_millis(50));
            s.set_nonblocking(true).unwrap();
            let mut chunk = [0u8; 4096];
            let extra = s.read(&mut chunk).map_or(0, |n| n);
            s.set_nonblocking(false).unwrap();
            most = most.max(batch.len() as u64 + u64::from(extra > 0));
            buf.extend_from_slice(&chunk[..extra]);
            s.write_all(OK.repeat(batch.len()).as_bytes()).unwrap();
        }
        most
    });
    let p = run(
        &target,
        &[
            "--scenario",
            "fanout",
            "--rate",
            "3000",
            "--duration",
            "3ms",
            "--publish-window",
            "3",
        ],
    );
    assert_eq!(server.join().unwrap(), [3]);
    assert_eq!(p.max_in_flight, 3);
    assert_eq!(p.answers.ok, 9, "{:?}", p.failures);
    assert!(
        p.max_lag_ns >= 40_000_000,
        "a full window delays: {}",
        p.max_lag_ns
    );
}

#[test]
fn a_closed_connection_counts_the_unanswered_and_reconnects() {
    let (target, server) = serve(2, |i, s| {
        let mut buf = Vec::new();
        if i == 0 {
            let got = requests(s, &mut buf, 3).unwrap();
            s.write_all(OK_CLOSE.as_bytes()).unwrap();
            // Close as the gateway does: no reset (which could destroy the answer), a FIN,
            // then what the client still sends is read until it closes too.
            s.shutdown(std::net::Shutdown::Write).unwrap();
            while requests(s, &mut buf, usize::MAX).is_some() {}
            return got.len() as u64;
        }
        let mut seen = 0;
        while let Some(more) = requests(s, &mut buf, 1) {
            seen += more.len() as u64;
            s.write_all(OK.repeat(more.len()).as_bytes()).unwrap();
        }
        seen
    });
    let p = run(
        &target,
        &[
            "--scenario",
            "fanout",
            "--rate",
            "1000",
            "--duration",
            "8ms",
        ],
    );
    let seen = server.join().unwrap();
    let a = p.answers;
    assert_eq!(a.ok + a.unanswered, 8, "{a:?}");
    assert!(a.unanswered >= 2, "{a:?}");
    assert_eq!(a.ok, 1 + seen[1], "{a:?} {seen:?}");
    assert!(seen[1] >= 1, "the next message reconnects: {seen:?}");
    let cause = "publish: the server closed the connection with the request unanswered";
    assert_eq!(p.failures.0.get(cause), Some(&a.unanswered));
    assert_eq!(p.server_subscribers, Some(3));
}

#[test]
fn flood_keeps_the_window_full_and_counts_pushback() {
    let (target, server) = serve(1, |_, s| {
        let mut buf = Vec::new();
        let mut seen = 0u64;
        while let Some(more) = requests(s, &mut buf, 1) {
            let mut text = String::new();
            for _ in &more {
                text.push_str(if seen.is_multiple_of(2) { OK } else { BUSY });
                seen += 1;
            }
            s.write_all(text.as_bytes()).unwrap();
        }
        seen
    });
    let p = run(
        &target,
        &[
            "--scenario",
            "flood",
            "--conns",
            "0",
            "--duration",
            "200ms",
            "--publish-window",
            "16",
        ],
    );
    let seen = server.join().unwrap()[0];
    let a = p.answers;
    assert!(seen > 20, "{seen}");
    assert_eq!(a.ok + a.busy, seen, "{a:?}");
    assert_eq!(a.ok, seen.div_ceil(2));
    assert_eq!((a.refused, a.other, a.unanswered, p.unsent), (0, 0, 0, 0));
    assert_eq!(p.accepted.len() as u64, seen);
    assert!(p.accepted.iter().step_by(2).all(|x| *x));
    assert!(p.max_in_flight <= 16);
    assert!(p.failures.0.is_empty(), "{:?}", p.failures);
}

#[test]
fn an_unreachable_server_is_retried_not_hammered() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let target = Endpoint {
        addr,
        host: addr.to_string(),
        path: "/publish/chat/t".into(),
        tls: None,
    };
    let p = run(
        &target,
        &["--scenario", "flood", "--conns", "0", "--duration", "250ms"],
    );
    let attempts = p.answers.unanswered;
    assert!(
        (1..=4).contains(&attempts),
        "one connect per 100 ms: {attempts}"
    );
    assert_eq!(p.accepted.len() as u64, attempts);
    assert!(
        p.failures
            .0
            .keys()
            .all(|k| k.starts_with("publish: connect:"))
    );
}

#[test]
fn answers_parse_incrementally() {
    let full = format!("{BUSY}{OK}");
    for cut in 0..BUSY.len() {
        assert_eq!(parse_answer(&full.as_bytes()[..cut]), Ok(None), "{cut}");
    }
    let a = parse_answer(full.as_bytes()).unwrap().unwrap();
    assert_eq!(
        (a.status, a.retry_after, a.close, a.len),
        (503, true, false, BUSY.len())
    );
    let a = parse_answer(OK_CLOSE.as_bytes()).unwrap().unwrap();
    assert_eq!((a.status, a.retry_after, a.close), (200, false, true));
    let old = "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert!(parse_answer(old.as_bytes()).unwrap().unwrap().close);
    assert!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    assert!(parse_answer(b"garbage\r\n\r\n").is_err());
}
