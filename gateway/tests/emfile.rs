//! Running out of file descriptors (issue 9, finding 4), in its own test binary because it
//! lowers the process's open-file limit, which would break tests running beside it.
//!
//! The test lowers the soft limit to the descriptors in use and fills every free one, so the
//! gateway's `accept` fails with EMFILE while clients wait in the kernel's queue. Accepting is
//! edge-triggered: without a retry, nothing is accepted again until a new connection arrives.
//! The gateway must (1) answer clients still queued after a second of exhaustion with 503, using
//! its reserve descriptor, and (2) serve queued clients soon after descriptors free up.

use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use gateway::server::{Config, Server};
use socket2::{Domain, Socket, Type};

/// The highest descriptor number open in this process.
fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .max()
        .expect("some descriptors are open")
}

/// Opens `/dev/null` until the open-file limit stops it; returns the files.
fn fill_descriptors() -> Vec<File> {
    let mut files = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => files.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return files,
            Err(e) => panic!("filling descriptors: {e}"),
        }
    }
}

/// Connects a socket created beforehand (connecting needs no new descriptor), sends a request,
/// and reads the answer in a thread: (status, time from `since`, the socket, kept open so its
/// descriptor is not freed).
type Answer = (u16, Duration, std::net::TcpStream);
fn queued_client(sock: Socket, addr: SocketAddr, since: Instant) -> JoinHandle<Answer> {
    sock.connect(&addr.into())
        .expect("connect (queued by the kernel)");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = std::net::TcpStream::from(sock);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let elapsed = since.elapsed();
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|t| t.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, elapsed, stream)
    })
}

/// Joins the clients: their (status, time) and their sockets.
fn answers(clients: Vec<JoinHandle<Answer>>) -> (Vec<(u16, Duration)>, Vec<std::net::TcpStream>) {
    clients
        .into_iter()
        .map(|h| {
            let (status, after, stream) = h.join().unwrap();
            ((status, after), stream)
        })
        .unzip()
}

#[test]
fn queued_clients_are_answered_while_descriptors_run_out_and_served_once_they_free_up() {
    gateway::sys::raise_nofile_limit().unwrap();
    let (_, hard) = gateway::sys::nofile_limit().unwrap();
    let server = Server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        max_conns: 1000,
        ..Config::default()
    })
    .unwrap();
    let addr = server.local_addr();
    let socks: Vec<Socket> = (0..6)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).unwrap())
        .collect();
    let mut socks = socks.into_iter();
    // The limit leaves room above the highest descriptor in use, so the filler holds enough
    // descriptors that freeing them serves every client of step 2 at once, even while the
    // connections answered before them are still open. (With the limit at the highest
    // descriptor, the filler held only the holes below it: sometimes one.)
    gateway::sys::set_nofile_soft_limit(highest_fd() + 1 + 16).unwrap();
    let filler = fill_descriptors();
    assert!(
        filler.len() >= 16,
        "filled only {} descriptors",
        filler.len()
    );

    // 1. Exhaustion that lasts: the queued clients are told 503 (the reserve descriptor).
    let t0 = Instant::now();
    let first: Vec<_> = socks
        .by_ref()
        .take(3)
        .map(|s| queued_client(s, addr, t0))
        .collect();
    let (first, mut kept) = answers(first);

    // 2. Exhaustion that ends: clients queued meanwhile are served soon after. (First let the
    // worker see the queue empty, which its next retry does within 50 ms: a client that
    // arrives while it is still shedding the first ones is shed too, as it should be.)
    thread::sleep(Duration::from_millis(200));
    let t1 = Instant::now();
    let second: Vec<_> = socks.map(|s| queued_client(s, addr, t1)).collect();
    thread::sleep(Duration::from_millis(300));
    drop(filler);
    let freed = Instant::now();
    let (second, more) = answers(second);
    kept.extend(more);
    gateway::sys::set_nofile_soft_limit(hard).unwrap();

    eprintln!(
        "while exhausted: {first:?}; freed after {:?}: {second:?}",
        freed - t1
    );
    for (status, after) in &first {
        assert_eq!(*status, 503, "queued during lasting exhaustion: {first:?}");
        assert!(*after < Duration::from_secs(3), "503 after {after:?}");
    }
    for (status, after) in &second {
        assert_eq!(*status, 200, "queued until descriptors freed: {second:?}");
        let since_freed = after.saturating_sub(freed - t1);
        assert!(
            since_freed < Duration::from_secs(1),
            "served {since_freed:?} after descriptors freed"
        );
    }
    drop(kept);
    let stats = server.stats();
    assert!(stats.total("accept_errors_total") > 0);
    assert_eq!(stats.total("refused_no_fds_total"), 3);
}
