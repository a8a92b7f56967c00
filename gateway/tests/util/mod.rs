//! Helpers for the integration tests: starting a gateway on a free port, talking to it over
//! real sockets, and building payloads worth checking byte for byte.
//!
//! - [`raw`]: a hand-written WebSocket client over a plain `TcpStream`, for what a well-behaved
//!   client library will not do (fragmenting on demand, unmasked frames, bad opcodes, half-sent
//!   handshakes). Its frame code is written here, not borrowed from `gateway::proto`, so a bug in
//!   the gateway's codec cannot cancel itself out.
//! - [`http`]: one-shot HTTP requests and the `/metrics` counters.
//! - this module: server start-up, the `tungstenite` client, payload patterns, time bounds.
//!
//! Every client socket gets [`IO_TIMEOUT`] as read and write timeout, so a gateway that hangs
//! makes a test fail instead of hanging the run.

pub mod http;
pub mod raw;

use std::net::{SocketAddr, TcpStream};
use std::sync::Once;
use std::time::{Duration, Instant};

pub use gateway::server::Config;
use gateway::server::{Server, ServerHandle};
use tungstenite::{Message, WebSocket};

pub use http::{Response, http_get, http_request, metric};
pub use raw::{Frame, RawWs, raw_connect, raw_handshake, try_raw_handshake};

/// How long a client waits for any one read or write before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Raises the open-file soft limit once per process, before any `Config::default()` computes
/// `max_conns` from it and before the 5,000-connection test needs the descriptors.
pub fn raise_nofile_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        gateway::sys::raise_nofile_limit().expect("raise the open-file limit");
    });
}

/// The configuration every test starts from: a free port on 127.0.0.1 and two workers.
pub fn config() -> Config {
    raise_nofile_limit();
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        ..Config::default()
    }
}

/// Starts a gateway; dropping the handle stops it.
pub fn start(config: Config) -> ServerHandle {
    Server::start(config).expect("start the gateway")
}

/// Starts a gateway with the test defaults.
pub fn start_default() -> ServerHandle {
    start(config())
}

/// A TCP connection to the gateway with both timeouts set and Nagle off, so every small write
/// leaves at once (the fragmentation tests rely on writes not being merged).
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// The independent client: a `tungstenite` WebSocket opened on `path`.
pub fn ws_connect(addr: SocketAddr, path: &str) -> WebSocket<TcpStream> {
    let stream = tcp_connect(addr);
    let (ws, response) = tungstenite::client(format!("ws://{addr}{path}"), stream)
        .unwrap_or_else(|e| panic!("WebSocket handshake on {path} failed: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// The next message from `ws`. A read interrupted by a signal (`EINTR`: on Linux a socket
/// read with a timeout returns it when the process is stopped and continued) is retried, as
/// std's `read_exact` does; tungstenite keeps what it had read, so nothing is lost.
#[allow(
    clippy::result_large_err,
    reason = "tungstenite's own result type, passed through"
)]
pub fn read_msg<S: std::io::Read + std::io::Write>(
    ws: &mut WebSocket<S>,
) -> tungstenite::Result<Message> {
    loop {
        match ws.read() {
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Sends `msg` and checks the next message is the same, byte for byte.
pub fn assert_echo(ws: &mut WebSocket<TcpStream>, msg: Message) {
    ws.send(msg.clone()).expect("send a message");
    let got = read_msg(ws).expect("read the echo");
    match (&msg, &got) {
        (Message::Text(a), Message::Text(b)) => {
            assert!(
                a.as_str() == b.as_str(),
                "text echo differs ({} bytes)",
                a.len()
            )
        }
        (Message::Binary(a), Message::Binary(b)) => {
            assert!(a == b, "binary echo differs ({} bytes)", a.len())
        }
        _ => panic!("sent {} got {}", describe(&msg), describe(&got)),
    }
}

/// A short description of a message for failure output (never the whole payload).
pub fn describe(msg: &Message) -> String {
    match msg {
        Message::Text(t) => format!("text of {} bytes", t.len()),
        Message::Binary(b) => format!("binary of {} bytes", b.len()),
        Message::Ping(p) => format!("ping {:?}", p.as_ref()),
        Message::Pong(p) => format!("pong {:?}", p.as_ref()),
        Message::Close(c) => format!("close {c:?}"),
        Message::Frame(_) => "raw frame".to_owned(),
    }
}

/// A small deterministic generator (xorshift64*), so payloads differ from each other and from
/// every simple pattern, yet a failure can be reproduced.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn mask_key(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_be_bytes()
    }
}

/// `len` bytes of pseudo-random binary, different for each seed.
pub fn binary_payload(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Valid UTF-8 of exactly `len` bytes mixing 1-, 2-, 3- and 4-byte characters in a
/// pseudo-random order (ASCII fills the last bytes when a wide character would not fit).
pub fn text_payload(len: usize, seed: u64) -> String {
    const CHARS: [char; 8] = ['a', 'Z', '~', 'é', 'ж', '€', '水', '😀'];
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let c = CHARS[(rng.next_u64() % CHARS.len() as u64) as usize];
        if out.len() + c.len_utf8() <= len {
            out.push(c);
        } else {
            out.push('.');
        }
    }
    out
}

/// Timing checks collected over a test, so one run reports every bound that was missed, not
/// only the first.
#[derive(Debug, Default)]
pub struct Timings {
    lines: Vec<String>,
    missed: bool,
}

impl Timings {
    /// Records whether `elapsed` lies in `[low, high]`.
    pub fn check(&mut self, what: &str, elapsed: Duration, low: Duration, high: Duration) {
        let ok = elapsed >= low && elapsed <= high;
        self.missed |= !ok;
        self.lines.push(format!(
            "{} {what} after {elapsed:?}, expected between {low:?} and {high:?}",
            if ok { "ok:    " } else { "MISSED:" }
        ));
    }

    /// Fails the test if any check failed, listing all of them.
    pub fn assert_all(self) {
        assert!(
            !self.missed,
            "timing bounds missed:\n{}",
            self.lines.join("\n")
        );
    }
}

/// Polls `f` until it returns `Some`, failing the test after `within`. For state that settles
/// asynchronously (the server noticing a closed socket), never as a measure of speed.
pub fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the hub counts `n` subscribers on `topic` (subscriptions register at open).
pub fn wait_subscribers(server: &ServerHandle, topic: &str, n: usize) {
    eventually(
        &format!("{n} subscribers on {topic}"),
        Duration::from_secs(10),
        || {
            server
                .hub()
                .snapshot()
                .iter()
                .any(|(t, s, _)| t == topic && *s == n)
                .then_some(())
        },
    );
}
