//! The delivery pipeline under a publish flood: what waits between the hub and the workers is
//! bounded (`--max-backlog`), publishers are pushed back (503 with `Retry-After`, an `error` on
//! `/ws`, a paused chat client), every subscriber that reads keeps pace and gets every accepted
//! message, and one that does not read is closed with 1008 while the others keep pace.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

use crate::util::{self, metric, raw, wait_subscribers, ws_connect};

const BODY: usize = 4096;
/// A 4 KiB text message on the wire: 4 header bytes (16-bit length form) and the payload.
const FRAME: u64 = 4 + BODY as u64;

/// What one pipelining publisher saw.
#[derive(Debug, Default)]
struct Published {
    accepted: u64,
    busy: u64,
    busy_without_retry_after: u64,
}

/// Publishes 4 KiB bodies to `topic` on one keep-alive connection, `depth` requests in
/// flight, until `stop`; counts 200s and 503s. With `pace`, one burst per `pace` at most.
fn flood(
    addr: SocketAddr,
    topic: &str,
    depth: usize,
    pace: Option<Duration>,
    stop: &AtomicBool,
) -> Published {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = "p".repeat(BODY);
    let request = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {BODY}\r\n\r\n{body}"
    );
    let burst = request.repeat(depth);
    let mut seen = Published::default();
    let mut pending = Vec::new();
    let start = Instant::now();
    let mut bursts = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(pace) = pace {
            let due = start + pace * bursts;
            thread::sleep(due.saturating_duration_since(Instant::now()));
            bursts += 1;
        }
        conn.write_all(burst.as_bytes()).unwrap();
        for _ in 0..depth {
            let resp = read_response(&mut conn, &mut pending);
            match resp.status {
                200 => seen.accepted += 1,
                503 => {
                    seen.busy += 1;
                    if resp.header("retry-after").is_none() {
                        seen.busy_without_retry_after += 1;
                    }
                }
                other => panic!("publish answered {other}: {}", resp.body_text()),
            }
        }
    }
    seen
}

/// Reads one response (head and `Content-Length` body) off a kept-alive connection.
fn read_response(conn: &mut TcpStream, pending: &mut Vec<u8>) -> util::Response {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let mut resp = util::http::parse_head(&pending[..end + 4]);
            let len: usize = resp.header("content-length").unwrap().parse().unwrap();
            if pending.len() >= end + 4 + len {
                resp.body = pending[end + 4..end + 4 + len].to_vec();
                pending.drain(..end + 4 + len);
                return resp;
            }
        }
        let n = conn.read(&mut chunk).expect("a publish answer");
        assert!(n > 0, "the gateway closed a kept-alive publish connection");
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Subscribers that read everything they are sent, from one thread; counts their bytes and
/// notes which were closed by the gateway.
struct Readers {
    received: Arc<Vec<AtomicU64>>,
    closed: Arc<Vec<AtomicBool>>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Readers {
    fn start(addr: SocketAddr, path: &str, n: usize) -> Readers {
        let mut socks = Vec::new();
        for _ in 0..n {
            let (ws, resp) = raw::try_raw_handshake(addr, path, &[]);
            assert_eq!(resp.status, 101);
            let stream = ws.stream;
            stream.set_nonblocking(true).unwrap();
            socks.push(stream);
        }
        let received: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let closed: Arc<Vec<AtomicBool>> =
            Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (r, c, s) = (received.clone(), closed.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while !s.load(Ordering::Relaxed) {
                let mut idle = true;
                for (i, sock) in socks.iter_mut().enumerate() {
                    if c[i].load(Ordering::Relaxed) {
                        continue;
                    }
                    match sock.read(&mut buf) {
                        Ok(0) => c[i].store(true, Ordering::Relaxed),
                        Ok(n) => {
                            r[i].fetch_add(n as u64, Ordering::Relaxed);
                            idle = false;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => panic!("subscriber {i}: {e}"),
                    }
                }
                if idle {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Readers {
            received,
            closed,
            stop,
            thread,
        }
    }

    /// The fewest bytes any subscriber still open has received.
    fn min_open(&self) -> u64 {
        self.received
            .iter()
            .zip(self.closed.iter())
            .filter(|(_, c)| !c.load(Ordering::Relaxed))
            .map(|(r, _)| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(u64::MAX)
    }

    fn closed(&self) -> u64 {
        self.closed
            .iter()
            .filter(|c| c.load(Ordering::Relaxed))
            .count() as u64
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the reader thread");
    }
}

/// Resident memory of this process (gateway and test clients), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_publish_flood_is_pushed_back_and_the_backlog_stays_bounded() {
    const LIMIT: usize = 256 * 1024;
    const SUBSCRIBERS: usize = 30;
    let server = util::start(util::Config {
        workers: 2,
        max_backlog: LIMIT,
        ..util::config()
    });
    let addr = server.local_addr();
    let readers = Readers::start(addr, "/ws/chat/flood", SUBSCRIBERS);
    let mut ws = ws_connect(addr, "/ws");
    let mut chatter = ws_connect(addr, "/ws/chat/other");
    wait_subscribers(&server, "chat/flood", SUBSCRIBERS);
    let rss_before = rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || flood(addr, "chat/flood", 32, None, &stop))
        })
        .collect();
    // While the flood runs: the backlog gauge never passes its bound by more than the
    // messages in flight at once; /ws publishes are answered, some with the busy error; a
    // chat client keeps talking (it is paused, not refused).
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut max_backlog, mut ws_ok, mut ws_busy) = (0, 0, 0);
    let mut chat_sent = 0;
    while Instant::now() < deadline {
        max_backlog = max_backlog.max(metric(addr, "gateway_backlog_bytes"));
        let cmd = json!({"type": "publish", "topic": "chat/flood", "data": "from ws"});
        ws.send(Message::text(cmd.to_string())).unwrap();
        let reply: Value = match util::read_msg(&mut ws).unwrap() {
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("{other:?}"),
        };
        match reply["type"].as_str() {
            Some("published") => ws_ok += 1,
            Some("error") if reply["error"].as_str().unwrap().contains("retry") => ws_busy += 1,
            _ => panic!("unexpected reply {reply}"),
        }
        chatter
            .send(Message::text(format!("chat {chat_sent}")))
            .unwrap();
        chat_sent += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Published> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
    let accepted: u64 = seen.iter().map(|s| s.accepted).sum();
    let busy: u64 = seen.iter().map(|s| s.busy).sum();
    assert!(accepted > 0, "{seen:?}");
    assert!(busy > 0, "a flood this size is pushed back: {seen:?}");
    assert!(
        seen.iter().all(|s| s.busy_without_retry_after == 0),
        "{seen:?}"
    );
    assert!(
        ws_ok + ws_busy > 0 && ws_busy > 0,
        "/ws: {ws_ok} published, {ws_busy} busy"
    );
    // In flight beyond the bound: at most one message per concurrent publisher per worker.
    let slack = 2 * 5 * (BODY as u64 + 256);
    assert!(
        max_backlog <= (2 * LIMIT) as u64 + slack,
        "backlog reached {max_backlog} bytes (limit {LIMIT} per worker)"
    );
    assert!(metric(addr, "gateway_publish_refused_busy_total") >= busy);
    // No silent loss: a flood no reader can follow closes readers as slow consumers (1008),
    // and every reader still open gets every accepted message.
    let want = accepted * FRAME;
    util::eventually(
        "every open subscriber has every message",
        Duration::from_secs(30),
        || (readers.min_open() >= want).then_some(()),
    );
    assert_eq!(
        metric(addr, "gateway_slow_consumers_total"),
        readers.closed()
    );
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 256,
        "the process grew by {grown_mib} MiB during the flood"
    );
    // The chat client was paused (not read) while the hub was congested, and never dropped:
    // all its lines went out, in order.
    assert!(metric(addr, "gateway_publishers_paused_total") > 0);
    let mut got = 0;
    while got < chat_sent {
        match util::read_msg(&mut chatter).unwrap() {
            Message::Text(t) => {
                assert_eq!(t.as_str(), format!("chat {got}"));
                got += 1;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    }
    readers.stop();
}

#[test]
fn a_subscriber_that_stops_reading_is_closed_while_the_others_keep_pace_under_a_flood() {
    // A queue bound of 4 MiB is a second of this stream: room for readers that share one test
    // thread on a busy machine, while the stalled subscriber still passes it within seconds.
    let server = util::start(util::Config {
        workers: 2,
        max_queued: 4 * 1024 * 1024,
        max_backlog: 512 * 1024,
        ..util::config()
    });
    let addr = server.local_addr();
    let (mut stalled, resp) = raw::try_raw_handshake(addr, "/ws/chat/mixed", &[]);
    assert_eq!(resp.status, 101);
    let readers = Readers::start(addr, "/ws/chat/mixed", 20);
    wait_subscribers(&server, "chat/mixed", 21);
    let stop = Arc::new(AtomicBool::new(false));
    // 1,000 messages of 4 KiB a second: 4 MB/s for each reader, which they keep up with.
    let publisher = {
        let stop = stop.clone();
        let pace = Some(Duration::from_millis(10));
        thread::spawn(move || flood(addr, "chat/mixed", 10, pace, &stop))
    };
    util::eventually(
        "the stalled subscriber is closed",
        Duration::from_secs(20),
        || (metric(addr, "gateway_slow_consumers_total") == 1).then_some(()),
    );
    stop.store(true, Ordering::Relaxed);
    let seen = publisher.join().unwrap();
    let want = seen.accepted * FRAME;
    util::eventually(
        "the readers have every message",
        Duration::from_secs(30),
        || (readers.min_open() >= want).then_some(()),
    );
    assert_eq!(readers.closed(), 0, "every reader kept pace");
    assert!(seen.accepted > 0, "{seen:?}");
    assert_eq!(metric(addr, "gateway_slow_consumers_total"), 1);
    let reason = stalled.drain_until_close(1008);
    assert!(reason.contains("slow consumer"), "{reason}");
    readers.stop();
}
