//! The HTTP publisher, pipelined: `POST /publish/TOPIC` requests written on one keep-alive
//! HTTP/1.1 connection as they fall due, without waiting for the answers to earlier ones, with
//! at most `--publish-window` unanswered. The socket is non-blocking (on its own mio poll), so
//! answers are read as they come, between sends, and matched to the requests in order (an
//! HTTP/1.1 server answers pipelined requests in order).
//!
//! A full window means the server is behind: the publisher waits for answers, and the messages
//! due meanwhile leave late with their due times (the lag is reported). A 503 means the message
//! was refused, not lost: it is counted, and no subscriber is expected to get it. The connection
//! stays open after a 503 with `Retry-After`; when the server closes it, or an answer takes
//! longer than `--timeout`, the requests still unanswered are counted and the next message
//! opens a new connection (at most one connect attempt per 100 ms).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::args::Config;
use crate::clock::now_ns;
use crate::payload;
use crate::publisher::{GAVE_UP, Next, Published, Schedule};
use crate::url::Endpoint;

/// Longest wait in one poll, so that an abort is noticed.
const MAX_WAIT_NS: u64 = 10_000_000;
/// Between two connect attempts after a failed one.
const RECONNECT_NS: u64 = 100_000_000;

/// Publishes on schedule (or floods) over one pipelined connection; fills `out`.
pub(crate) fn publish(
    cfg: &Config,
    target: Endpoint,
    sched: &Schedule,
    stop: &AtomicBool,
    out: &mut Published,
) {
    let mut p = Pipeline {
        target,
        token: cfg.publish_token.clone(),
        size: cfg.size,
        window: cfg.publish_window,
        timeout: cfg.timeout,
        conn: None,
        retry_at: 0,
        in_flight: VecDeque::with_capacity(cfg.publish_window),
        body: Vec::with_capacity(cfg.size.max(128)),
        last_ok: Vec::new(),
        out,
    };
    p.run(sched, stop);
    p.drop_conn("publish: aborted with the request unanswered");
    p.out.server_subscribers = serde_json::from_slice::<serde_json::Value>(&p.last_ok)
        .ok()
        .and_then(|v| v.get("subscribers").and_then(|s| s.as_u64()));
}

/// A request written (or queued to be) and not answered yet.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    sent: u64,
}

/// Why the publisher stopped queueing requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    /// The window is full: wait for answers.
    WindowFull,
    /// The next message is due (or a connect may be retried) at this time.
    Until(u64),
    /// Nothing more to send.
    Finished,
}

#[derive(Debug)]
struct Pipeline<'a> {
    target: Endpoint,
    token: Option<String>,
    size: usize,
    window: usize,
    timeout: Duration,
    conn: Option<Conn>,
    /// After a failed connect, no new attempt before this time.
    retry_at: u64,
    in_flight: VecDeque<InFlight>,
    body: Vec<u8>,
    /// The body of the last 200 answer (its `subscribers` figure is reported).
    last_ok: Vec<u8>,
    out: &'a mut Published,
}

impl Pipeline<'_> {
    fn run(&mut self, sched: &Schedule, stop: &AtomicBool) {
        let mut seq = 0;
        let mut sending = true;
        while !stop.load(Ordering::Relaxed) {
            let mut wake = None;
            if sending {
                match self.queue_due(sched, &mut seq) {
                    Queued::Finished => sending = false,
                    Queued::Until(t) => wake = Some(t),
                    Queued::WindowFull => {}
                }
            }
            self.exchange();
            self.expire();
            if !sending && self.in_flight.is_empty() {
                return;
            }
            self.wait(wake);
        }
    }

    /// Queues every message that is due, as far as the window allows.
    fn queue_due(&mut self, sched: &Schedule, seq: &mut u64) -> Queued {
        while self.in_flight.len() < self.window {
            let now = now_ns();
            match sched.next(*seq, now) {
                Next::Done => return Queued::Finished,
                Next::GaveUp(n) => {
                    self.out.unsent = n;
                    self.out.failures.add(GAVE_UP, n);
                    return Queued::Finished;
                }
                Next::Due(due) if due > now => return Queued::Until(due),
                Next::Due(_) if self.conn.is_none() && now < self.retry_at => {
                    return Queued::Until(self.retry_at);
                }
                Next::Due(due) => {
                    self.queue(*seq, due, now);
                    *seq += 1;
                }
            }
        }
        Queued::WindowFull
    }

    /// Writes message `seq`'s request into the output (connecting first if need be).
    fn queue(&mut self, seq: u64, due: u64, now: u64) {
        self.out.sent(seq, due, now);
        if self.conn.is_none() {
            match Conn::open(&self.target, self.timeout) {
                Ok(c) => self.conn = Some(c),
                Err(cause) => {
                    self.retry_at = now_ns() + RECONNECT_NS;
                    self.out.failures.add(&cause, 1);
                    self.out.answers.unanswered += 1;
                    return;
                }
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        payload::write_fanout(&mut self.body, self.size, seq, due, now);
        write_request(
            &mut conn.output,
            &self.target,
            self.token.as_deref(),
            &self.body,
        );
        self.in_flight.push_back(InFlight { seq, sent: now });
        self.out.max_in_flight = self.out.max_in_flight.max(self.in_flight.len() as u64);
    }

    /// Writes what the socket takes, reads what came and handles every complete answer.
    fn exchange(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let io = conn.flush().and_then(|()| conn.fill());
        let now = now_ns();
        let mut lost = None;
        while let Some(conn) = self.conn.as_mut() {
            let answer = match parse_answer(&conn.input[conn.read..]) {
                Ok(Some(a)) => a,
                Ok(None) => break,
                Err(cause) => {
                    lost = Some(cause);
                    break;
                }
            };
            let at = conn.read;
            conn.read += answer.len;
            let body = &conn.input[at + answer.head..at + answer.len];
            let to = (&mut self.in_flight, &mut *self.out, &mut self.last_ok);
            if let Err(cause) = answered(to, &answer, body, now) {
                lost = Some(cause);
                break;
            }
            if answer.close {
                lost =
                    Some("publish: the server closed the connection with the request unanswered");
                break;
            }
        }
        match (lost, io) {
            (Some(cause), _) => self.drop_conn(cause),
            (None, Err(cause)) => self.drop_conn(&cause),
            (None, Ok(true)) => {}
            (None, Ok(false)) => self
                .drop_conn("publish: the server closed the connection with the request unanswered"),
        }
        if let Some(conn) = self.conn.as_mut() {
            conn.compact();
        }
    }

    /// Fails every request in flight when the oldest has waited longer than the timeout.
    fn expire(&mut self) {
        if let Some(front) = self.in_flight.front()
            && now_ns().saturating_sub(front.sent) > self.timeout.as_nanos() as u64
        {
            self.drop_conn("publish: no response before the timeout");
        }
    }

    /// Closes the connection; what is still in flight is counted unanswered, with `cause`.
    fn drop_conn(&mut self, cause: &str) {
        let n = self.in_flight.len() as u64;
        if n > 0 {
            self.out.failures.add(cause, n);
            self.out.answers.unanswered += n;
            self.in_flight.clear();
        }
        self.conn = None;
    }

    /// Waits for the socket, the next due time (`wake`) or the oldest answer's deadline.
    fn wait(&mut self, wake: Option<u64>) {
        let now = now_ns();
        let mut until = now + MAX_WAIT_NS;
        if let Some(t) = wake {
            until = until.min(t);
        }
        if let Some(f) = self.in_flight.front() {
            until = until.min(f.sent + self.timeout.as_nanos() as u64 + 1);
        }
        let mut dt = Duration::from_nanos(until.saturating_sub(now));
        match self.conn.as_mut() {
            // epoll waits in whole milliseconds (rounded up): it waits the whole ones before a
            // due time, and what is left under a millisecond is slept to exactly.
            Some(conn) if dt >= Duration::from_millis(1) || wake.is_none() => {
                if wake.is_some() {
                    dt = Duration::from_millis(dt.as_millis() as u64);
                }
                match conn.poll.poll(&mut conn.events, Some(dt)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => self.drop_conn(&format!("publish: epoll_wait: {e}")),
                }
            }
            _ => std::thread::sleep(dt),
        }
    }
}

/// Counts one answer, matched to the oldest request in flight (the 200's body is kept).
fn answered(
    (in_flight, out, last_ok): (&mut VecDeque<InFlight>, &mut Published, &mut Vec<u8>),
    a: &Answer,
    body: &[u8],
    now: u64,
) -> Result<(), &'static str> {
    let req = in_flight
        .pop_front()
        .ok_or("publish: an answer to no request")?;
    out.request_latency.record(now.saturating_sub(req.sent));
    match (a.status, a.retry_after) {
        (200, _) => {
            out.accepted[req.seq as usize] = true;
            out.answers.ok += 1;
            last_ok.clear();
            last_ok.extend_from_slice(body);
        }
        (503, true) => out.answers.busy += 1,
        (503, false) => out.answers.refused += 1,
        (status, _) => {
            out.answers.other += 1;
            out.failures.add(&format!("publish: HTTP {status}"), 1);
        }
    }
    Ok(())
}

/// The publisher's connection: a non-blocking socket on its own poll (edge-triggered; every
/// turn writes and reads until the socket would block).
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    poll: Poll,
    events: Events,
    /// Requests not yet taken by the socket: `output[written..]`.
    output: Vec<u8>,
    written: usize,
    /// Answers read and not yet parsed: `input[read..]`.
    input: Vec<u8>,
    read: usize,
}

impl Conn {
    fn open(target: &Endpoint, timeout: Duration) -> Result<Conn, String> {
        let s = std::net::TcpStream::connect_timeout(&target.addr, timeout)
            .map_err(|e| format!("publish: connect: {e}"))?;
        let _ = s.set_nodelay(true);
        s.set_nonblocking(true)
            .map_err(|e| format!("publish: {e}"))?;
        let mut stream = TcpStream::from_std(s);
        let poll = Poll::new().map_err(|e| format!("publish: epoll: {e}"))?;
        poll.registry()
            .register(
                &mut stream,
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("publish: epoll: {e}"))?;
        Ok(Conn {
            stream,
            poll,
            events: Events::with_capacity(4),
            output: Vec::new(),
            written: 0,
            input: Vec::new(),
            read: 0,
        })
    }

    /// Writes what the socket takes.
    fn flush(&mut self) -> Result<(), String> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err("publish: sending: the connection is closed".into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("publish: sending: {e}")),
            }
        }
        Ok(())
    }

    /// Reads what has arrived; `Ok(false)` when the server ended the stream.
    fn fill(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("publish: reading the answers: {e}")),
            }
        }
    }

    /// Forgets what was written and parsed.
    fn compact(&mut self) {
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        } else if self.written > 64 * 1024 {
            self.output.drain(..self.written);
            self.written = 0;
        }
        if self.read == self.input.len() {
            self.input.clear();
            self.read = 0;
        } else if self.read > 64 * 1024 {
            self.input.drain(..self.read);
            self.read = 0;
        }
    }
}

/// Appends one `POST` with `body` to `out`.
fn write_request(out: &mut Vec<u8>, target: &Endpoint, token: Option<&str>, body: &[u8]) {
    let _ = write!(
        out,
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        target.path,
        target.host,
        body.len()
    );
    if let Some(t) = token {
        let _ = write!(out, "Authorization: Bearer {t}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// One answer's head, as far as the publisher cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// A `Retry-After` header: the server pushed back and keeps the connection.
    retry_after: bool,
    /// The connection ends after this answer (`Connection: close`, or HTTP/1.0).
    close: bool,
    /// Bytes of the head; the body follows.
    head: usize,
    /// Bytes of head and body.
    len: usize,
}

/// The first answer in `buf`, if it is complete.
fn parse_answer(buf: &[u8]) -> Result<Option<Answer>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > 64 * 1024 => {
            return Err("publish: answer head too large");
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("publish: malformed HTTP answer"),
    };
    let (mut length, mut close, mut retry_after) = (None, resp.version != Some(1), false);
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("Content-Length") {
            length = value.parse::<usize>().ok();
        } else if h.name.eq_ignore_ascii_case("Connection") {
            close |= value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("Retry-After") {
            retry_after = true;
        }
    }
    let length = length.ok_or("publish: answer without Content-Length")?;
    if buf.len() < head + length {
        return Ok(None);
    }
    Ok(Some(Answer {
        status: resp.code.unwrap_or(0),
        retry_after,
        close,
        head,
        len: head + length,
    }))
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
