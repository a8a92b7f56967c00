//! The publisher of fanout and flood runs: what it did ([`Published`]), when each message is
//! due ([`Schedule`]), and the WebSocket publisher (`--publisher ws`, loadgen's one client
//! connection, see `single`). The HTTP publisher, pipelined, is in `pipeline`.
//!
//! It runs on one thread of the parent process, whose own CPU time is measured
//! (getrusage RUSAGE_THREAD) and reported apart from the rest of loadgen.
//!
//! Fanout: message `i` is due at `start + i / rate`; it carries that due time and the time it
//! actually went out (see `payload`). When the publisher falls behind (a slow socket, a full
//! window of unanswered requests), the following messages leave late but keep their due times,
//! so the subscribers' latency includes the publisher's lag: the measurement is corrected for
//! coordinated omission. The publisher's worst lag is reported too. A publisher more than
//! `--timeout` past the end of its schedule gives up; what it never sent is counted.
//!
//! Flood: no schedule; messages go out as fast as the connection takes them for `--duration`
//! (each is "due" when it is sent).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gateway::proto::MessageKind;
use serde::Serialize;

use crate::args::{Config, PublisherKind, Scenario};
use crate::clock::now_ns;
use crate::payload;
use crate::single::Single;
use crate::stats::{Failures, Hist};
use crate::sys::{self, CpuTime};
use crate::url::Endpoint;

/// How the server answered the publisher's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Answers {
    /// Published: HTTP 200 (WebSocket: written to the socket).
    pub ok: u64,
    /// 503 with `Retry-After`: the gateway pushed back (`--max-backlog`); nothing published.
    pub busy: u64,
    /// 503 without `Retry-After` (the topic limit); nothing published.
    pub refused: u64,
    /// Any other status (401, 413, ...), counted in the failures too.
    pub other: u64,
    /// No answer: the connection was lost or the answer timed out (or the run was aborted).
    pub unanswered: u64,
}

/// What the publisher did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Per sequence number sent: whether the server accepted it (HTTP 200, or written to the
    /// WebSocket). Refused (503) and unanswered messages are not accepted, so no subscriber is
    /// expected to receive them.
    pub accepted: Vec<bool>,
    pub answers: Answers,
    pub failures: Failures,
    /// HTTP: from writing the request to reading its answer; WebSocket: writing the message.
    pub request_latency: Hist,
    /// Largest delay between a message's due time and its send time.
    pub max_lag_ns: u64,
    /// Most HTTP requests in flight at once.
    pub max_in_flight: u64,
    /// Messages due that were never sent: the publisher gave up, more than `--timeout` behind.
    pub unsent: u64,
    /// The `subscribers` figure of the last publish answer, if the server gave one.
    pub server_subscribers: Option<u64>,
    /// Wall time from the first due time to the last answer.
    pub elapsed_s: f64,
    /// The publisher thread's own CPU time.
    pub cpu: CpuTime,
}

impl Published {
    /// The last sequence number the server accepted: every subscriber should receive it.
    pub fn last_seq(&self) -> Option<u64> {
        self.accepted.iter().rposition(|a| *a).map(|i| i as u64)
    }

    pub fn accepted_count(&self) -> u64 {
        self.accepted.iter().filter(|a| **a).count() as u64
    }

    /// Records that message `seq` went out at `sent` though due at `due`.
    pub(crate) fn sent(&mut self, seq: u64, due: u64, sent: u64) {
        debug_assert_eq!(seq, self.accepted.len() as u64);
        self.accepted.push(false);
        self.max_lag_ns = self.max_lag_ns.max(sent.saturating_sub(due));
    }
}

/// Messages a fanout run publishes: rate times duration, at least one.
pub fn message_count(rate: f64, duration: Duration) -> u64 {
    ((rate * duration.as_secs_f64()).round() as u64).max(1)
}

/// When each message is due.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: u64,
    /// Nanoseconds between messages; `None` floods.
    interval: Option<f64>,
    /// Fanout: messages in all.
    count: u64,
    /// Flood: the end of sending. Fanout: the point where a late publisher gives up.
    end: u64,
}

/// What the schedule says about the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Due at this time (now or earlier: send it; later: wait).
    Due(u64),
    /// Every message was sent (fanout) or the flood's time is up.
    Done,
    /// Fanout: more than `--timeout` past the schedule's end; `n` messages were never sent.
    GaveUp(u64),
}

impl Schedule {
    pub fn new(cfg: &Config, start: u64) -> Schedule {
        let duration = cfg.duration.as_nanos() as u64;
        match cfg.scenario {
            Scenario::Flood => Schedule {
                start,
                interval: None,
                count: u64::MAX,
                end: start + duration,
            },
            _ => Schedule {
                start,
                interval: Some(1e9 / cfg.rate),
                count: message_count(cfg.rate, cfg.duration),
                end: start + duration + cfg.timeout.as_nanos() as u64,
            },
        }
    }

    /// Message `seq` (all before it were sent), at `now`.
    pub fn next(&self, seq: u64, now: u64) -> Next {
        match self.interval {
            None if now >= self.end => Next::Done,
            None => Next::Due(now),
            Some(_) if seq >= self.count => Next::Done,
            Some(_) if now >= self.end => Next::GaveUp(self.count - seq),
            Some(interval) => Next::Due(self.start + (seq as f64 * interval) as u64),
        }
    }
}

/// The cause counted for messages never sent.
pub const GAVE_UP: &str = "publish: never sent: the publisher was more than --timeout behind";

/// Publishes every message on schedule (or floods); `stop` ends early (abort).
pub fn publish(cfg: &Config, stop: &AtomicBool) -> Published {
    let cpu0 = sys::thread_cpu();
    let mut out = Published::default();
    let start = now_ns();
    let sched = Schedule::new(cfg, start);
    match cfg.publisher {
        PublisherKind::Http => {
            let target = cfg
                .publish
                .clone()
                .expect("HTTP publishing has a publish URL");
            crate::pipeline::publish(cfg, target, &sched, stop, &mut out);
        }
        PublisherKind::Ws => publish_ws(cfg, &sched, stop, &mut out),
    }
    out.elapsed_s = crate::clock::secs(start, now_ns());
    out.cpu = cpu0.since(&sys::thread_cpu());
    out
}

/// Sleeps until `due` (in steps, so a long wait still notices `stop`).
fn sleep_until(due: u64, stop: &AtomicBool) {
    loop {
        let now = now_ns();
        if now >= due || stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_nanos(due - now).min(Duration::from_millis(5)));
    }
}

/// The WebSocket publisher: one message at a time, each written as it falls due.
fn publish_ws(cfg: &Config, sched: &Schedule, stop: &AtomicBool, out: &mut Published) {
    let mut sink = match WsSink::connect(&cfg.target, cfg.deflate, cfg.timeout) {
        Ok(s) => s,
        Err(e) => {
            out.failures.add(&format!("publish: {e}"), 1);
            return;
        }
    };
    let mut body = Vec::with_capacity(cfg.size.max(128));
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = match sched.next(seq, now_ns()) {
            Next::Done => break,
            Next::GaveUp(n) => {
                out.unsent = n;
                out.failures.add(GAVE_UP, n);
                break;
            }
            Next::Due(due) => due,
        };
        sleep_until(due, stop);
        let sent = now_ns();
        out.sent(seq, due, sent);
        payload::write_fanout(&mut body, cfg.size, seq, due, sent);
        match sink.send(&body) {
            Ok(()) => {
                out.request_latency.record(now_ns() - sent);
                out.accepted[seq as usize] = true;
                out.answers.ok += 1;
            }
            Err(cause) => {
                out.failures.add(&cause, 1);
                out.answers.unanswered += 1;
            }
        }
        seq += 1;
    }
    sink.finish();
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

    fn send(&mut self, body: &[u8]) -> Result<(), String> {
        let conn = self
            .conn
            .as_mut()
            .ok_or("publish: the WebSocket is closed")?;
        conn.pump()
            .and_then(|()| conn.send(MessageKind::Text, body, self.timeout))
            .map_err(|e| format!("publish: sending on the WebSocket: {e}"))
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

    #[test]
    fn message_count_follows_rate_and_duration() {
        assert_eq!(message_count(100.0, Duration::from_secs(10)), 1000);
        assert_eq!(message_count(0.01, Duration::from_secs(1)), 1);
        assert_eq!(message_count(3.0, Duration::from_millis(500)), 2);
    }

    fn cfg(flags: &[&str]) -> Config {
        let mut argv = vec!["loadgen", "--timeout", "2s"];
        argv.extend_from_slice(flags);
        crate::args::parse(argv).unwrap()
    }

    #[test]
    fn fanout_schedule_is_exact_and_gives_up_late() {
        let c = cfg(&["--scenario", "fanout", "--rate", "1000", "--duration", "1s"]);
        let s = Schedule::new(&c, 1_000);
        assert_eq!(s.next(0, 0), Next::Due(1_000));
        assert_eq!(s.next(999, 0), Next::Due(1_000 + 999_000_000));
        assert_eq!(s.next(1000, 0), Next::Done);
        // Three seconds in (one of schedule, two of --timeout): the rest is never sent.
        assert_eq!(s.next(10, 1_000 + 3_000_000_000), Next::GaveUp(990));
        assert_eq!(
            s.next(10, 1_000 + 2_999_999_999),
            Next::Due(1_000 + 10_000_000)
        );
    }

    #[test]
    fn flood_schedule_is_due_at_once_until_the_duration() {
        let c = cfg(&["--scenario", "flood", "--duration", "1s"]);
        let s = Schedule::new(&c, 1_000);
        assert_eq!(s.next(12_345_678, 5_000), Next::Due(5_000));
        assert_eq!(s.next(0, 1_000 + 1_000_000_000), Next::Done);
    }

    #[test]
    fn last_seq_is_the_last_accepted() {
        let p = Published {
            accepted: vec![true, true, false, true, false, false],
            ..Published::default()
        };
        assert_eq!(p.last_seq(), Some(3));
        assert_eq!(p.accepted_count(), 3);
        assert_eq!(Published::default().last_seq(), None);
    }
}
