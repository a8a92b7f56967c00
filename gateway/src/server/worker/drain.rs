//! The graceful drain (SIGTERM, SIGINT, `ServerHandle::drain`): the worker closes its listener
//! (new connections are refused), sends close 1001 to each open WebSocket at a random moment
//! within `--drain` (so clients do not reconnect in one wave), lets close handshakes and queued
//! output finish, and stops once no connection (and no command process) is left, or at the
//! latest `--close-grace` after the window.

use std::time::{Duration, Instant, SystemTime};

use super::Worker;
use crate::proto::{CloseCode, Rng};
use crate::server::ConnId;
use crate::server::conn::Phase;

/// A drain in progress.
#[derive(Debug)]
pub(super) struct Drain {
    /// When each open WebSocket is to be sent its close, latest first (popped from the end).
    closes: Vec<(Instant, ConnId)>,
    /// Past this, whatever is left is dropped.
    hard_stop: Instant,
}

impl Worker {
    /// Starts draining: no more accepts; every open WebSocket gets its moment to be closed.
    pub(super) fn start_drain(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let (window, grace) = (self.config.drain, self.config.close_grace);
        let now = Instant::now();
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ self.id as u64;
        let mut rng = Rng::new(seed);
        let spread = window.as_nanos().max(1) as u64;
        let mut closes = Vec::new();
        let mut plain = Vec::new();
        for (key, conn) in self.conns.iter() {
            match conn.phase {
                Phase::Open(_) => {
                    let at = now + Duration::from_nanos(rng.next_u64() % spread);
                    closes.push((at, conn.id(key)));
                }
                Phase::Handshake => plain.push(key),
                Phase::Linger { .. } => {}
            }
        }
        // A connection between requests (or before its first) gets no more.
        for key in plain {
            self.linger(key);
        }
        closes.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        self.drain = Some(Drain {
            closes,
            hard_stop: now + window + grace,
        });
    }

    /// Sends the closes that are due; true once the worker has nothing left to do.
    pub(super) fn drain_step(&mut self) -> bool {
        let now = Instant::now();
        let Some(drain) = self.drain.as_mut() else {
            return false;
        };
        let mut due = Vec::new();
        while drain.closes.last().is_some_and(|(at, _)| *at <= now) {
            due.extend(drain.closes.pop().map(|(_, id)| id));
        }
        let hard_stop = drain.hard_stop;
        for id in due {
            if self.is_live(id) {
                self.close_ws(id.slot(), CloseCode::GOING_AWAY, "server draining");
                self.reap(id.slot());
            }
        }
        // Command processes of closed sockets finish their stop sequence (two seconds at most).
        if self.conns.is_empty() && self.procs.is_empty() {
            return true;
        }
        if now >= hard_stop {
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.kill(key);
                self.reap(key);
            }
            self.kill_all_commands();
            return true;
        }
        false
    }

    /// How long the loop may sleep while draining: until the next close, at most 50 ms.
    pub(super) fn drain_timeout(&self) -> Option<Duration> {
        let drain = self.drain.as_ref()?;
        let cap = Duration::from_millis(50);
        Some(drain.closes.last().map_or(cap, |(at, _)| {
            at.saturating_duration_since(Instant::now()).min(cap)
        }))
    }
}
