//! The fan-out publisher: sends `--rate` messages per second for `--duration` to the topic,
//! over HTTP (`POST /publish/TOPIC`, one keep-alive connection) or over its own WebSocket
//! (loadgen's one client connection, see `single`).
//!
//! It runs on one thread of the parent process, call by call: it is one connection
//! doing a few thousand requests per second at most, so an event loop would buy nothing.
//! Message `i` is due at `start + i / rate`; it carries that due time and the time it actually
//! went out (see `payload`). When a request is slow, the following messages leave late but keep
//! their due times, so the subscribers' latency includes the publisher's lag: the measurement is
//! corrected for coordinated omission. The publisher's worst lag is reported too.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gateway::proto::MessageKind;

use crate::args::{Config, PublisherKind};
use crate::clock::now_ns;
use crate::payload;
use crate::single::Single;
use crate::stats::{Failures, Hist};
use crate::url::Endpoint;

/// What the publisher did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Per sequence number: whether the server accepted it (HTTP 200, or written to the socket).
    pub accepted: Vec<bool>,
    pub failures: Failures,
    /// HTTP: request to response.
    pub request_latency: Hist,
    /// Largest delay between a message's due time and its send time.
    pub max_lag_ns: u64,
    /// The `subscribers` figure of the last publish answer, if the server gave one.
    pub server_subscribers: Option<u64>,
    /// Wall time from the first due time to the last send.
    pub elapsed_s: f64,
}

impl Published {
    pub fn last_seq(&self) -> Option<u64> {
        (!self.accepted.is_empty()).then(|| self.accepted.len() as u64 - 1)
    }

    pub fn accepted_count(&self) -> u64 {
        self.accepted.iter().filter(|a| **a).count() as u64
    }
}

/// Messages a run publishes: rate times duration, at least one.
pub fn message_count(rate: f64, duration: Duration) -> u64 {
    ((rate * duration.as_secs_f64()).round() as u64).max(1)
}

/// Publishes every message on schedule; `stop` ends early (abort).
pub fn publish(cfg: &Config, stop: &Arc<AtomicBool>) -> Published {
    let mut out = Published::default();
    let count = message_count(cfg.rate, cfg.duration);
    let interval = 1e9 / cfg.rate;
    let mut sink: Box<dyn Sink> = match cfg.publisher {
        PublisherKind::Http => Box::new(HttpSink {
            token: cfg.publish_token.clone(),
            ..HttpSink::new(
                cfg.publish
                    .clone()
                    .expect("fanout over HTTP has a publish URL"),
                cfg.timeout,
            )
        }),
        PublisherKind::Ws => match WsSink::connect(&cfg.target, cfg.deflate, cfg.timeout) {
            Ok(s) => Box::new(s),
            Err(e) => {
                out.failures.add(&format!("publish: {e}"), count);
                out.accepted = vec![false; count as usize];
                return out;
            }
        },
    };
    let mut body = Vec::with_capacity(cfg.size.max(128));
    let start = now_ns();
    for seq in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + (seq as f64 * interval) as u64;
        loop {
            let now = now_ns();
            if now >= due {
                break;
            }
            std::thread::sleep(Duration::from_nanos(due - now).min(Duration::from_millis(5)));
        }
        let sent = now_ns();
        out.max_lag_ns = out.max_lag_ns.max(sent - due);
        payload::write_fanout(&mut body, cfg.size, seq, due, sent);
        match sink.send(&body) {
            Ok(answer) => {
                out.request_latency.record(now_ns() - sent);
                if let Some(n) = answer {
                    out.server_subscribers = Some(n);
                }
                out.accepted.push(true);
            }
            Err(cause) => {
                out.failures.add(&cause, 1);
                out.accepted.push(false);
            }
        }
    }
    out.elapsed_s = crate::clock::secs(start, now_ns());
    sink.finish();
    out
}

/// Where published messages go.
trait Sink {
    /// Sends one message; `Ok(Some(n))` when the server said how many subscribers it reached.
    fn send(&mut self, body: &[u8]) -> Result<Option<u64>, String>;
    fn finish(&mut self);
}

/// `POST` over one keep-alive HTTP/1.1 connection, reopened when the server closes it.
#[derive(Debug)]
struct HttpSink {
    target: Endpoint,
    timeout: Duration,
    /// Sent as `Authorization: Bearer TOKEN` when given.
    token: Option<String>,
    conn: Option<TcpStream>,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl HttpSink {
    fn new(target: Endpoint, timeout: Duration) -> HttpSink {
        HttpSink {
            target,
            timeout,
            token: None,
            conn: None,
            request: Vec::new(),
            response: Vec::new(),
        }
    }

    fn connect(&self) -> Result<TcpStream, String> {
        let s = TcpStream::connect_timeout(&self.target.addr, self.timeout)
            .map_err(|e| format!("publish: connect: {e}"))?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(self.timeout))
            .and_then(|()| s.set_write_timeout(Some(self.timeout)))
            .map_err(|e| format!("publish: {e}"))?;
        Ok(s)
    }
}

impl Sink for HttpSink {
    fn send(&mut self, body: &[u8]) -> Result<Option<u64>, String> {
        self.request.clear();
        let _ = write!(
            self.request,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.target.path,
            self.target.host,
            body.len()
        );
        if let Some(t) = &self.token {
            let _ = write!(self.request, "Authorization: Bearer {t}\r\n");
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect()?,
        };
        conn.write_all(&self.request)
            .map_err(|e| format!("publish: sending: {e}"))?;
        let (status, keep_alive, subscribers) = read_response(&mut conn, &mut self.response)?;
        if keep_alive {
            self.conn = Some(conn);
        }
        if status != 200 {
            return Err(format!("publish: HTTP {status}"));
        }
        Ok(subscribers)
    }

    fn finish(&mut self) {
        self.conn = None;
    }
}

/// Reads one HTTP response; returns its status, whether the connection stays open, and the
/// `subscribers` field of a JSON body.
fn read_response(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(u16, bool, Option<u64>), String> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp
            .parse(buf)
            .map_err(|e| format!("publish: malformed HTTP response: {e}"))?;
        if let httparse::Status::Complete(head) = parsed {
            let status = resp.code.unwrap_or(0);
            let (length, close) = length_and_close(resp.headers);
            let length = length.ok_or("publish: response without Content-Length")?;
            let keep_alive = resp.version == Some(1) && !close;
            while buf.len() < head + length {
                let n = read_some(conn, &mut chunk)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            let subscribers =
                serde_json::from_slice::<serde_json::Value>(&buf[head..head + length])
                    .ok()
                    .and_then(|v| v.get("subscribers").and_then(|s| s.as_u64()));
            return Ok((status, keep_alive, subscribers));
        }
        if buf.len() > 64 * 1024 {
            return Err("publish: response head too large".into());
        }
        let n = read_some(conn, &mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The Content-Length of a response head, and whether it says `Connection: close`.
fn length_and_close(headers: &[httparse::Header<'_>]) -> (Option<usize>, bool) {
    let (mut length, mut close) = (None, false);
    for h in headers {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("Content-Length") {
            length = value.parse().ok();
        } else if h.name.eq_ignore_ascii_case("Connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    (length, close)
}

fn read_some(conn: &mut TcpStream, chunk: &mut [u8]) -> Result<usize, String> {
    loop {
        match conn.read(chunk) {
            Ok(0) => return Err("publish: server closed the connection mid-response".into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err("publish: no response before the timeout".into());
            }
            Err(e) => return Err(format!("publish: reading the response: {e}")),
        }
    }
}

/// Text messages on the publisher's own WebSocket to the topic: a [`Single`] client. The
/// server also sends every message back to it (the sender is in the room); what arrived is
/// read and dropped before each send.
#[derive(Debug)]
struct WsSink {
    conn: Option<Single>,
    timeout: Duration,
}

impl WsSink {
    fn connect(target: &Endpoint, deflate: bool, timeout: Duration) -> Result<WsSink, String> {
        Ok(WsSink {
            conn: Some(Single::open(target, deflate, timeout, false)?),
            timeout,
        })
    }
}

impl Sink for WsSink {
    fn send(&mut self, body: &[u8]) -> Result<Option<u64>, String> {
        let conn = self
            .conn
            .as_mut()
            .ok_or("publish: the WebSocket is closed")?;
        conn.pump()
            .and_then(|()| conn.send(MessageKind::Text, body, self.timeout))
            .map_err(|e| format!("publish: sending on the WebSocket: {e}"))?;
        Ok(None)
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn message_count_follows_rate_and_duration() {
        assert_eq!(message_count(100.0, Duration::from_secs(10)), 1000);
        assert_eq!(message_count(0.01, Duration::from_secs(1)), 1);
        assert_eq!(message_count(3.0, Duration::from_millis(500)), 2);
    }

    /// A one-connection HTTP server that answers each request as told.
    fn serve(answers: Vec<&'static str>) -> (Endpoint, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut answers = answers.into_iter();
            while let Some(mut answer) = answers.next() {
                let (mut s, _) = l.accept().unwrap();
                loop {
                    let mut buf = vec![0u8; 8192];
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
                    s.write_all(answer.as_bytes()).unwrap();
                    if answer.contains("Connection: close") {
                        break;
                    }
                    match answers.next() {
                        Some(a) => answer = a,
                        None => return seen,
                    }
                }
            }
            seen
        });
        let target = Endpoint {
            addr,
            host: addr.to_string(),
            path: "/publish/chat/t".into(),
        };
        (target, h)
    }

    #[test]
    fn http_publish_keeps_alive_reads_subscribers_and_reconnects() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 44\r\n\r\n{\"topic\":\"chat/t\",\"seq\":1,\"subscribers\":3}  ";
        let close =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let (target, server) = serve(vec![ok, close, ok]);
        let mut sink = HttpSink {
            token: Some("s3cret".into()),
            ..HttpSink::new(target, Duration::from_secs(5))
        };
        assert_eq!(sink.send(b"{\"seq\":0}"), Ok(Some(3)));
        assert_eq!(sink.send(b"{\"seq\":1}"), Err("publish: HTTP 503".into()));
        assert!(sink.conn.is_none(), "Connection: close is honoured");
        assert_eq!(sink.send(b"{\"seq\":2}"), Ok(Some(3)));
        sink.finish();
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen[0].starts_with("POST /publish/chat/t HTTP/1.1\r\n"));
        assert!(seen[0].contains("Content-Length: 9\r\n"));
        assert!(seen[0].contains("Authorization: Bearer s3cret\r\n"));
        assert!(seen[0].ends_with("{\"seq\":0}"));
    }
}
