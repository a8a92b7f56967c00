//! Opens many idle WebSocket connections to the gateway and holds them, for memory measurements
//! (`scripts/idle-memory.sh` drives it).
//!
//! ```text
//! cargo run --release -p gateway --example hold -- --url ws://127.0.0.1:8080/echo --conns 10000
//! ```
//!
//! 1. Opens `--conns` connections from `--threads` threads (blocking sockets, one handshake at a
//!    time per thread), using the crate's own client helpers. For a loopback target each socket
//!    is bound to 127.0.0.K:0 before connecting, `--per-addr` connections per source address
//!    (each address has its own ~28k ephemeral ports).
//! 2. Prints `open N` on stdout (flushed) and holds the connections idle: it sends nothing,
//!    except a pong when the gateway pings. The hold ends on a line on stdin, on end of stdin
//!    (so the holder never outlives whoever drives it; `--ignore-stdin` turns that off), or after
//!    `--hold-secs`.
//! 3. Sends one small text message on every connection, checks the echo and prints `echo-ok N`.
//! 4. Closes every connection with a close frame (1000), waits for the gateway's close frame and
//!    its end of stream, and prints `closed N`.
//!
//! Progress and timings go to stderr. Any failure (refused or dropped connection, wrong echo,
//! protocol error, timeout) ends the program with a message on stderr and exit status 1; bad
//! flags give status 2.

use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream as StdStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway::proto::close::encode_close_payload;
use gateway::proto::deflate;
use gateway::proto::frame::write_frame;
use gateway::proto::handshake::{
    ClientHandshakeError, client_key, parse_client_response, write_client_request,
};
use gateway::proto::{CloseCode, Event, Inflater, MessageKind, OpCode, Reader, Role};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

const USAGE: &str = "\
usage: hold [options]

Opens N idle WebSocket connections, prints `open N`, holds them until a line (or end of
file) on stdin or the hold time ends, then checks that each echoes one message (`echo-ok N`)
and closes them cleanly (`closed N`).

options:
  --url URL          ws:// URL of the echo endpoint [default: ws://127.0.0.1:8080/echo]
  --conns N          connections to open [default: 10000]
  --hold-secs S      longest hold, in seconds [default: 600]
  --ignore-stdin     hold for --hold-secs whatever stdin does
  --threads T        threads opening / checking / closing connections [default: 4]
  --per-addr N       connections per source address 127.0.0.K (loopback targets) [default: 5000]
  --timeout S        limit on each connect, handshake, echo and close, in seconds [default: 10]
  --deflate          offer permessage-deflate
  -h, --help         this text
";

/// Largest message the checker accepts from the gateway (the echoes are a few bytes).
const MAX_MESSAGE: usize = 64 * 1024;
const WAKE: Token = Token(usize::MAX);

#[derive(Debug, Clone)]
struct Options {
    /// `host:port` for the Host header.
    host: String,
    path: String,
    target: SocketAddr,
    conns: usize,
    hold: Duration,
    ignore_stdin: bool,
    threads: usize,
    per_addr: usize,
    timeout: Duration,
    deflate: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut url = "ws://127.0.0.1:8080/echo".to_string();
    let mut conns = 10_000usize;
    let mut hold_secs = 600.0f64;
    let mut ignore_stdin = false;
    let mut threads = 4usize;
    let mut per_addr = 5000usize;
    let mut timeout_secs = 10.0f64;
    let mut deflate = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs {what}"))
        };
        match name.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--url" => url = value("a URL")?,
            "--conns" => conns = number(&name, &value("a number")?)?,
            "--hold-secs" => hold_secs = number(&name, &value("seconds")?)?,
            "--ignore-stdin" => ignore_stdin = true,
            "--threads" => threads = number(&name, &value("a number")?)?,
            "--per-addr" => per_addr = number(&name, &value("a number")?)?,
            "--timeout" => timeout_secs = number(&name, &value("seconds")?)?,
            "--deflate" => deflate = true,
            _ => return Err(format!("unknown argument '{arg}'")),
        }
    }
    if conns == 0 || threads == 0 || per_addr == 0 {
        return Err("--conns, --threads and --per-addr must be at least 1".into());
    }
    if !(hold_secs >= 0.0
        && hold_secs.is_finite()
        && timeout_secs > 0.0
        && timeout_secs.is_finite())
    {
        return Err("--hold-secs must be >= 0 and --timeout > 0".into());
    }
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("--url must start with ws:// (got '{url}')"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{authority}': {e}"))?
        .collect();
    let target = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("'{authority}' resolves to no address"))?;
    if is_loopback_v4(target) && conns.div_ceil(per_addr) > 254 {
        return Err(format!(
            "{conns} connections at {per_addr} per source address need more than the 254 \
             addresses 127.0.0.1-127.0.0.254; raise --per-addr"
        ));
    }
    Ok(Options {
        host: with_port,
        path: path.to_string(),
        target,
        conns,
        hold: Duration::from_secs_f64(hold_secs),
        ignore_stdin,
        threads: threads.min(conns),
        per_addr,
        timeout: Duration::from_secs_f64(timeout_secs),
        deflate,
    })
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name}: '{v}' is not a valid number"))
}

fn is_loopback_v4(a: SocketAddr) -> bool {
    matches!(a.ip(), IpAddr::V4(ip) if ip.is_loopback())
}

/// The source address of connection `index`, for loopback targets.
fn source_addr(opts: &Options, index: usize) -> Option<Ipv4Addr> {
    is_loopback_v4(opts.target).then(|| Ipv4Addr::new(127, 0, 0, 1 + (index / opts.per_addr) as u8))
}

/// xorshift64*: masks and handshake keys need no cryptographic strength here.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(stream: u64) -> Rng {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = t
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn mask(&mut self) -> [u8; 4] {
        (self.next() as u32).to_le_bytes()
    }

    fn key(&mut self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.next().to_le_bytes());
        k[8..].copy_from_slice(&self.next().to_le_bytes());
        k
    }
}

/// Something the gateway said, owned.
#[derive(Debug)]
enum Got {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>, String),
}

/// One client connection.
#[derive(Debug)]
struct Client {
    stream: TcpStream,
    reader: Reader,
    inflater: Option<Box<Inflater>>,
    /// Received bytes the reader has not consumed yet.
    inbuf: Vec<u8>,
    /// The message being assembled.
    msg: Vec<u8>,
}

impl Client {
    /// Connects and completes the opening handshake (blocking).
    fn open(opts: &Options, src: Option<Ipv4Addr>, rng: &mut Rng) -> Result<Client, String> {
        let socket = Socket::new(
            Domain::for_address(opts.target),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = src {
            let from = SocketAddr::V4(SocketAddrV4::new(ip, 0));
            socket
                .bind(&from.into())
                .map_err(|e| format!("bind {from}: {e}"))?;
        }
        socket
            .connect_timeout(&opts.target.into(), opts.timeout)
            .map_err(|e| format!("connect to {}: {e}", opts.target))?;
        let _ = socket.set_nodelay(true);
        socket
            .set_read_timeout(Some(opts.timeout))
            .and_then(|()| socket.set_write_timeout(Some(opts.timeout)))
            .map_err(|e| format!("socket timeouts: {e}"))?;
        let mut stream = StdStream::from(socket);

        let key = client_key(rng.key());
        let mut req = Vec::with_capacity(256);
        let extra: &[(&str, &str)] = if opts.deflate {
            &[("Sec-WebSocket-Extensions", deflate::client_offer())]
        } else {
            &[]
        };
        write_client_request(&mut req, &opts.host, &opts.path, &key, extra);
        stream
            .write_all(&req)
            .map_err(|e| format!("sending the upgrade request: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        let accepted = loop {
            let n = stream
                .read(&mut buf)
                .map_err(|e| format!("reading the handshake response: {}", io_text(&e)))?;
            if n == 0 {
                return Err(
                    "the gateway closed the connection before answering the upgrade".into(),
                );
            }
            head.extend_from_slice(&buf[..n]);
            match parse_client_response(&head, &key) {
                Ok(Some(a)) => break a,
                Ok(None) => {}
                Err(ClientHandshakeError::Status(503)) => {
                    return Err("the gateway answered 503: it is at its connection limit \
                         (--max-conns, or its open-file limit)"
                        .into());
                }
                Err(e) => return Err(format!("handshake failed: {e}")),
            }
        };
        head.drain(..accepted.head_len);
        // The mio wrapper leaves the socket blocking: the check and close phases use blocking
        // I/O, the hold switches it to non-blocking while it polls.
        Ok(Client {
            stream: TcpStream::from_std(stream),
            reader: Reader::new(
                Role::Client,
                MAX_MESSAGE,
                accepted.deflate.map(|d| d.receiving(Role::Client)),
            ),
            inflater: None,
            inbuf: head,
            msg: Vec::new(),
        })
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        SockRef::from(&self.stream).set_nonblocking(on)
    }

    /// Sends one masked frame.
    fn send(&mut self, rng: &mut Rng, opcode: OpCode, payload: &[u8]) -> Result<(), String> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        write_frame(&mut frame, true, opcode, false, Some(rng.mask()), payload);
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("sending a {opcode:?} frame: {}", io_text(&e)))
    }

    /// The next complete event in the bytes received so far, if any.
    fn next_event(&mut self) -> Result<Option<Got>, String> {
        loop {
            let step = self
                .reader
                .read(&mut self.inbuf, &mut self.msg, &mut self.inflater)
                .map_err(|e| format!("protocol error in what the gateway sent: {e}"))?;
            let consumed = step.consumed;
            let got = match step.event {
                None if consumed == 0 => return Ok(None),
                None => None,
                Some(Event::Message(kind)) => {
                    Some(Got::Message(kind, std::mem::take(&mut self.msg)))
                }
                Some(Event::Ping(p)) => Some(Got::Ping(p.to_vec())),
                Some(Event::Pong(_)) => Some(Got::Pong),
                Some(Event::Close(f)) => {
                    Some(Got::Close(f.code.map(|c| c.0), f.reason.to_string()))
                }
            };
            self.inbuf.drain(..consumed);
            if got.is_some() {
                return Ok(got);
            }
        }
    }

    /// Waits (blocking) for the next event.
    fn recv(&mut self) -> Result<Got, String> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(got) = self.next_event()? {
                return Ok(got);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err("the gateway closed the connection (end of stream)".into()),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading: {}", io_text(&e))),
            }
        }
    }

    /// Handles input during the hold (non-blocking socket): answers pings, fails on anything
    /// else. Returns the pings answered.
    fn on_readable(&mut self, rng: &mut Rng) -> Result<u64, String> {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Err("the gateway closed the connection during the hold".into()),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading during the hold: {e}")),
            }
        }
        let mut pings = 0;
        while let Some(got) = self.next_event()? {
            match got {
                // A pong is a few bytes on an idle socket: the send buffer always takes it.
                Got::Ping(p) => {
                    self.send(rng, OpCode::Pong, &p)?;
                    pings += 1;
                }
                Got::Pong => {}
                Got::Message(..) => return Err("unexpected message during the hold".into()),
                Got::Close(code, reason) => {
                    return Err(format!(
                        "the gateway closed the connection during the hold (close {}{})",
                        code.map_or("without code".to_string(), |c| c.to_string()),
                        if reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {reason}")
                        }
                    ));
                }
            }
        }
        Ok(pings)
    }

    /// Sends `payload` as text and waits for the same text back.
    fn wait_echo(&mut self, rng: &mut Rng, payload: &[u8]) -> Result<(), String> {
        loop {
            match self.recv()? {
                Got::Message(MessageKind::Text, m) if m == payload => return Ok(()),
                Got::Message(kind, m) => {
                    return Err(format!(
                        "wrong echo: sent text {:?}, got {kind:?} {:?}",
                        String::from_utf8_lossy(payload),
                        String::from_utf8_lossy(&m)
                    ));
                }
                Got::Ping(p) => self.send(rng, OpCode::Pong, &p)?,
                Got::Pong => {}
                Got::Close(code, reason) => {
                    return Err(format!(
                        "the gateway closed the connection instead of echoing (close {code:?} {reason:?})"
                    ));
                }
            }
        }
    }

    /// After our close frame went out: waits for the gateway's close frame and end of stream.
    fn finish_close(&mut self) -> Result<(), String> {
        loop {
            match self.recv()? {
                Got::Close(Some(1000), _) => break,
                Got::Close(code, reason) => {
                    return Err(format!(
                        "the gateway answered our close 1000 with close {code:?} {reason:?}"
                    ));
                }
                // Anything else may still be in flight; the close handshake ignores it.
                Got::Message(..) | Got::Ping(_) | Got::Pong => {}
            }
        }
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err("data after the gateway's close frame".into()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!(
                        "waiting for the end of stream after the close frame: {}",
                        io_text(&e)
                    ));
                }
            }
        }
    }
}

/// Socket timeouts surface as WouldBlock/TimedOut; say so plainly.
fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            "timed out (see --timeout)".to_string()
        }
        _ => e.to_string(),
    }
}

/// Splits `0..n` into `parts` contiguous ranges.
fn ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    (0..parts)
        .map(|t| t * n / parts..(t + 1) * n / parts)
        .collect()
}

/// Opens every connection, `opts.threads` at a time.
fn open_all(opts: &Options) -> Result<Vec<Client>, String> {
    let abort = AtomicBool::new(false);
    let opened = AtomicUsize::new(0);
    let results: Vec<Result<Vec<Client>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges(opts.conns, opts.threads)
            .into_iter()
            .enumerate()
            .map(|(t, range)| {
                let (abort, opened) = (&abort, &opened);
                s.spawn(move || {
                    let mut rng = Rng::new(t as u64);
                    let mut out = Vec::with_capacity(range.len());
                    for i in range {
                        if abort.load(Ordering::Relaxed) {
                            return Err(String::new());
                        }
                        let src = source_addr(opts, i);
                        match Client::open(opts, src, &mut rng) {
                            Ok(c) => {
                                out.push(c);
                                opened.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                abort.store(true, Ordering::Relaxed);
                                let from = src.map_or(String::new(), |ip| format!(" from {ip}"));
                                return Err(format!("connection {i}{from}: {e}"));
                            }
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    let mut clients = Vec::with_capacity(opts.conns);
    let mut first_error = None;
    for r in results {
        match r {
            Ok(v) => clients.extend(v),
            Err(e) if e.is_empty() => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(format!(
            "{e} ({} of {} connections had opened)",
            opened.load(Ordering::Relaxed),
            opts.conns
        )),
        None => Ok(clients),
    }
}

/// Holds the connections: polls them (answering pings) until stdin says go or time runs out.
/// Returns what ended the hold and the pings answered.
fn hold(clients: &mut [Client], opts: &Options) -> Result<(&'static str, u64), String> {
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_nonblocking(true)
            .and_then(|()| {
                poll.registry()
                    .register(&mut c.stream, Token(i), Interest::READABLE)
            })
            .map_err(|e| format!("connection {i}: registering for the hold: {e}"))?;
    }
    let (tx, rx) = mpsc::channel::<&'static str>();
    // The hold keeps its own reference to the waker: if the stdin thread dropped the last one
    // right after waking, closing the eventfd would take its readiness out of the epoll set
    // before the poll saw it.
    let waker = if opts.ignore_stdin {
        None
    } else {
        let w = Waker::new(poll.registry(), WAKE).map_err(|e| format!("waker: {e}"))?;
        Some(Arc::new(w))
    };
    if let Some(waker) = waker.clone() {
        std::thread::spawn(move || {
            let mut line = String::new();
            let why = match io::stdin().lock().read_line(&mut line) {
                Ok(0) => "end of stdin",
                Ok(_) => "a line on stdin",
                Err(_) => "an error reading stdin",
            };
            let _ = tx.send(why);
            let _ = waker.wake();
        });
    }
    let deadline = Instant::now() + opts.hold;
    let mut events = Events::with_capacity(1024);
    let mut rng = Rng::new(u64::MAX);
    let mut pings = 0;
    let why = loop {
        if let Ok(why) = rx.try_recv() {
            break why;
        }
        let now = Instant::now();
        if now >= deadline {
            break "the hold time";
        }
        match poll.poll(&mut events, Some(deadline - now)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        for ev in events.iter() {
            let i = ev.token().0;
            if let Some(c) = clients.get_mut(i) {
                pings += c
                    .on_readable(&mut rng)
                    .map_err(|e| format!("connection {i}: {e}"))?;
            }
        }
    };
    for (i, c) in clients.iter_mut().enumerate() {
        poll.registry()
            .deregister(&mut c.stream)
            .and_then(|()| c.set_nonblocking(false))
            .map_err(|e| format!("connection {i}: ending the hold: {e}"))?;
    }
    drop(waker);
    Ok((why, pings))
}

/// Runs `job` over contiguous chunks of the clients, one thread per chunk; `job` gets the chunk,
/// the index of its first client and a random source.
fn for_chunks<F>(clients: &mut [Client], threads: usize, job: F) -> Result<(), String>
where
    F: Fn(&mut [Client], usize, &mut Rng) -> Result<(), String> + Sync,
{
    let chunk = clients.len().div_ceil(threads).max(1);
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .chunks_mut(chunk)
            .enumerate()
            .map(|(t, part)| {
                let job = &job;
                s.spawn(move || job(part, t * chunk, &mut Rng::new(1000 + t as u64)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    results.into_iter().collect()
}

/// Every connection echoes one message: all are sent first, then all answers read.
fn check_echo(clients: &mut [Client], threads: usize) -> Result<(), String> {
    for_chunks(clients, threads, |part, base, rng| {
        for (j, c) in part.iter_mut().enumerate() {
            let payload = format!("hold {}", base + j);
            c.send(rng, OpCode::Text, payload.as_bytes())
                .map_err(|e| format!("connection {}: {e}", base + j))?;
        }
        for (j, c) in part.iter_mut().enumerate() {
            let payload = format!("hold {}", base + j);
            c.wait_echo(rng, payload.as_bytes())
                .map_err(|e| format!("connection {}: {e}", base + j))?;
        }
        Ok(())
    })
}

/// Closes every connection with a close handshake.
fn close_all(clients: &mut [Client], threads: usize) -> Result<(), String> {
    let mut payload = [0u8; 125];
    let n = encode_close_payload(&mut payload, CloseCode::NORMAL, "");
    let payload = &payload[..n];
    for_chunks(clients, threads, |part, base, rng| {
        for (j, c) in part.iter_mut().enumerate() {
            c.send(rng, OpCode::Close, payload)
                .map_err(|e| format!("connection {}: {e}", base + j))?;
        }
        for (j, c) in part.iter_mut().enumerate() {
            c.finish_close()
                .map_err(|e| format!("connection {}: {e}", base + j))?;
        }
        Ok(())
    })
}

fn say(line: &str) -> Result<(), String> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing to stdout: {e}"))
}

fn run(opts: &Options) -> Result<(), String> {
    let limit = gateway::sys::raise_nofile_limit()
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    let needed = opts.conns as u64 + 32;
    if limit.0 < needed {
        return Err(format!(
            "{} connections need about {needed} open files; the limit is {} (hard {})",
            opts.conns, limit.0, limit.1
        ));
    }
    let addrs = match source_addr(opts, 0) {
        Some(first) => format!(
            " from {first}-{}",
            source_addr(opts, opts.conns - 1).unwrap_or(first)
        ),
        None => String::new(),
    };
    let start = Instant::now();
    let mut clients = open_all(opts)?;
    eprintln!(
        "hold: opened {} connections to {}{addrs} in {:.2} s ({} threads)",
        clients.len(),
        opts.target,
        start.elapsed().as_secs_f64(),
        opts.threads
    );
    say(&format!("open {}", clients.len()))?;

    let start = Instant::now();
    let (why, pings) = hold(&mut clients, opts)?;
    eprintln!(
        "hold: held {:.1} s, ended by {why}; answered {pings} pings",
        start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    check_echo(&mut clients, opts.threads)?;
    eprintln!(
        "hold: {} echoes checked in {:.2} s",
        clients.len(),
        start.elapsed().as_secs_f64()
    );
    say(&format!("echo-ok {}", clients.len()))?;

    let start = Instant::now();
    close_all(&mut clients, opts.threads)?;
    eprintln!(
        "hold: {} connections closed in {:.2} s",
        clients.len(),
        start.elapsed().as_secs_f64()
    );
    say(&format!("closed {}", clients.len()))
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hold: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hold: error: {e}");
            ExitCode::FAILURE
        }
    }
}
