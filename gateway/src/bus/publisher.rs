//! The bus's publisher thread: publishes from the workers (and the feeds) to Redis, in
//! batches.
//!
//! Each turn takes what the queue holds (up to [`BATCH`] messages or [`BATCH_BYTES`]), and
//! sends it as one pipeline of [`wire::PUBLISH_SCRIPT`] calls: one round trip however many
//! messages, and Redis runs them in queue order, so one connection's publishes keep their
//! order. Each answer (epoch, seq) goes to the worker waiting for it. A publish that waited
//! longer than [`MAX_WAIT`] fails instead of being sent (its `POST /publish` is answered 503
//! within 2 s); a lost connection fails the whole batch; a script Redis forgot (a restart) is
//! loaded again and the calls it refused are sent again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use redis::{ConnectionLike, Value};

use super::{Bus, BusReply, Outcome, Queued, backoff, unix_millis, wire};
use crate::topics::{Epoch, Hub};

/// Messages per pipeline at most.
pub const BATCH: usize = 512;
/// Payload bytes per pipeline at most (one message may be bigger).
pub const BATCH_BYTES: usize = 1 << 20;
/// How long a publish may wait in the queue before it fails.
pub const MAX_WAIT: Duration = Duration::from_millis(1500);

/// A connection with the script loaded.
struct Conn {
    con: redis::Connection,
    sha: String,
    /// When it was last used: a connection idle for [`IDLE_CHECK`] is checked with a PING
    /// before a batch (a Redis restarted meanwhile left it dead), and made again if it is.
    used: Instant,
}

/// See [`Conn::used`].
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub(super) fn run(bus: &Arc<Bus>, hub: &Arc<Hub>) {
    let mut attempt = 0u32;
    let mut conn: Option<Conn> = None;
    let mut ever = false;
    let mut batch = Vec::new();
    while !bus.stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            match connect(bus) {
                Ok(c) => {
                    if ever {
                        bus.stats.reconnects_total.fetch_add(1, Ordering::Relaxed);
                        log::info!("bus: publisher connected again to {}", bus.shown);
                    }
                    ever = true;
                    attempt = 0;
                    conn = Some(c);
                    bus.set_up(&bus.publisher_up, true);
                }
                Err(e) => {
                    if attempt == 0 {
                        log::warn!("bus: publisher cannot reach {}: {e}", bus.shown);
                    }
                    bus.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                    bus.set_up(&bus.publisher_up, false);
                    fail_until(bus, hub, Instant::now() + backoff(attempt));
                    attempt += 1;
                }
            }
            continue;
        };
        match bus.publish_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(q) => batch.push(q),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let mut bytes = batch[0].p.payload.len();
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            let Ok(q) = bus.publish_rx.try_recv() else {
                break;
            };
            bytes += q.p.payload.len();
            batch.push(q);
        }
        bus.queued.fetch_sub(bytes, Ordering::Relaxed);
        let now = Instant::now();
        batch.retain(|q| {
            let fresh = now.duration_since(q.at) < MAX_WAIT;
            if !fresh {
                answer(
                    bus,
                    hub,
                    q,
                    Outcome::Failed("the bus is too slow: try again"),
                );
            }
            fresh
        });
        if c.used.elapsed() >= IDLE_CHECK && !alive_or_replaced(bus, c) {
            for q in &batch {
                answer(bus, hub, q, Outcome::Failed("the bus is unavailable"));
            }
            batch.clear();
            conn = None;
            bus.set_up(&bus.publisher_up, false);
            continue;
        }
        c.used = Instant::now();
        if let Err(e) = send(bus, hub, c, &batch) {
            log::warn!("bus: publisher lost {}: {e}", bus.shown);
            bus.stats.errors_total.fetch_add(1, Ordering::Relaxed);
            for q in &batch {
                answer(bus, hub, q, Outcome::Failed("the bus is unavailable"));
            }
            conn = None;
            bus.set_up(&bus.publisher_up, false);
        }
        batch.clear();
    }
}

/// Checks an idle connection with a PING. One found closed at once (Redis restarted while it
/// was idle) is made again, and the batch goes on the new one; one that does not answer in time
/// is given up (its late answer could be taken for a publish's), and the batch fails within the
/// 2 s promised to publishers.
fn alive_or_replaced(bus: &Bus, c: &mut Conn) -> bool {
    let pinged = Instant::now();
    if redis::cmd("PING").query::<()>(&mut c.con).is_ok() {
        return true;
    }
    if pinged.elapsed() >= Duration::from_millis(100) {
        return false;
    }
    match connect(bus) {
        Ok(fresh) => {
            bus.stats.reconnects_total.fetch_add(1, Ordering::Relaxed);
            *c = fresh;
            true
        }
        Err(_) => false,
    }
}

fn connect(bus: &Bus) -> redis::RedisResult<Conn> {
    let mut con = bus.client.get_connection_with_timeout(super::IO_TIMEOUT)?;
    con.set_read_timeout(Some(super::IO_TIMEOUT))?;
    con.set_write_timeout(Some(super::IO_TIMEOUT))?;
    bus.client_name("pub").query::<()>(&mut con)?;
    let sha = load_script(&mut con, wire::PUBLISH_SCRIPT)?;
    Ok(Conn {
        con,
        sha,
        used: Instant::now(),
    })
}

/// Loads a script; returns its SHA-1.
pub(super) fn load_script(con: &mut redis::Connection, script: &str) -> redis::RedisResult<String> {
    redis::cmd("SCRIPT").arg("LOAD").arg(script).query(con)
}

/// While the bus is down: every publish queued until `until` fails at once.
fn fail_until(bus: &Bus, hub: &Hub, until: Instant) {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || bus.stop.load(Ordering::Relaxed) {
            return;
        }
        match bus.publish_rx.recv_timeout(left) {
            Ok(q) => {
                bus.queued.fetch_sub(q.p.payload.len(), Ordering::Relaxed);
                answer(bus, hub, &q, Outcome::Failed("the bus is unavailable"));
            }
            Err(RecvTimeoutError::Timeout) => return,
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Sends a batch; answers each publish. `Err`: the connection is lost.
fn send(bus: &Bus, hub: &Hub, c: &mut Conn, batch: &[Queued]) -> redis::RedisResult<()> {
    let mut todo: Vec<&Queued> = batch.iter().collect();
    // At most twice: once more after loading a script Redis had forgotten.
    for round in 0..2 {
        if todo.is_empty() {
            break;
        }
        let started = Instant::now();
        let mut pipe = redis::pipe();
        let millis = unix_millis();
        for q in &todo {
            add_call(&mut pipe, bus, &c.sha, q, millis);
        }
        let values = c
            .con
            .req_packed_commands(&pipe.get_packed_pipeline(), 0, todo.len())?;
        bus.stats.round_trip.observe(started.elapsed(), 1);
        let mut again = Vec::new();
        for (q, v) in todo.iter().zip(values) {
            match v {
                Value::ServerError(e) if round == 0 && e.code() == "NOSCRIPT" => again.push(*q),
                v => answer(bus, hub, q, outcome(&v)),
            }
        }
        if !again.is_empty() {
            c.sha = load_script(&mut c.con, wire::PUBLISH_SCRIPT)?;
        }
        todo = again;
    }
    for q in todo {
        answer(bus, hub, q, Outcome::Failed("the bus refused the script"));
    }
    Ok(())
}

fn add_call(pipe: &mut redis::Pipeline, bus: &Bus, sha: &str, q: &Queued, millis: u64) {
    let p = &q.p;
    let [meta, hist] = wire::keys(&p.topic);
    let keep = if p.latest { 1 } else { bus.history.messages };
    pipe.cmd("EVALSHA")
        .arg(sha)
        .arg(2)
        .arg(meta)
        .arg(hist)
        .arg(wire::channel(&p.topic))
        .arg(Epoch::random().to_string())
        .arg(wire::header(p.kind, p.stamp, millis))
        .arg(&p.payload[..])
        .arg(keep.max(1))
        .arg(bus.history.bytes)
        .arg(bus.ttl_secs);
}

/// The publish script's answer `{epoch, seq, nodes}`.
fn outcome(v: &Value) -> Outcome {
    let Value::Array(items) = v else {
        return Outcome::Failed("the bus answered an error");
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    match items.as_slice() {
        [e, s, n] => match (text(e).as_deref().and_then(Epoch::parse), int(s), int(n)) {
            (Some(epoch), Some(seq), Some(nodes)) => Outcome::Published { epoch, seq, nodes },
            _ => Outcome::Failed("the bus answered something else"),
        },
        _ => Outcome::Failed("the bus answered something else"),
    }
}

fn answer(bus: &Bus, hub: &Hub, q: &Queued, outcome: Outcome) {
    let counter = match outcome {
        Outcome::Published { .. } => &bus.stats.publishes_total,
        _ => &bus.stats.publish_failures_total,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(done) = &q.p.done {
        let _ = done.try_send(outcome);
    }
    if let Some(to) = q.p.reply {
        hub.reply(
            to.worker,
            BusReply {
                wait: to.wait,
                outcome,
                history: Vec::new(),
            },
        );
    }
}
