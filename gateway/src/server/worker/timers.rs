//! Deadlines: the handshake timeout, an open session's keep-alive and close deadlines (computed
//! by the session from the ticks it is given) and its token's expiry, and the close grace of a
//! lingering connection.
//!
//! Each connection has at most one live entry on the worker's timing wheel; when it comes due
//! the connection's deadline is recomputed, so entries never need to be cancelled: an entry that
//! is early re-arms, one that was superseded is dropped.

use std::time::Duration;

use super::Worker;
use crate::proto::{Timeout, Timeouts};
use crate::server::Config;
use crate::server::conn::Phase;
use crate::server::stats::WorkerStats;
use crate::server::timer;

/// A configured duration in ticks. Events are stamped with the tick they happened in, which may
/// be nearly over; one tick more keeps every deadline from firing early (they fire up to one
/// tick late).
pub(super) fn deadline_ticks(d: Duration) -> u32 {
    timer::ticks(d) + 1
}

/// The keep-alive and close deadlines of a session, in ticks.
pub(super) fn session_timeouts(cfg: &Config) -> Timeouts {
    Timeouts {
        ping: deadline_ticks(cfg.ping_interval),
        pong: deadline_ticks(cfg.pong_timeout),
        close_grace: deadline_ticks(cfg.close_grace),
    }
}

impl Worker {
    pub(super) fn tick_now(&self) -> u32 {
        (self.epoch.elapsed().as_nanos() / timer::TICK.as_nanos()) as u32 + 1
    }

    /// Time from now until the start of tick `at`.
    pub(super) fn until_tick(&self, at: u32) -> Duration {
        let deadline = self.epoch + timer::TICK * (at - 1);
        deadline.saturating_duration_since(std::time::Instant::now())
    }

    /// The tick at which this connection next needs attention; an open connection's token
    /// expiry is one of its deadlines.
    fn next_due(&self, key: usize) -> u32 {
        let conn = &self.conns[key];
        match &conn.phase {
            Phase::Handshake => conn.since.saturating_add(self.handshake_ticks),
            Phase::Linger { .. } => conn.since.saturating_add(self.timeouts.close_grace),
            Phase::Open(ws) => ws
                .session
                .deadline(&self.timeouts)
                .min(self.token_expiry(key).unwrap_or(u32::MAX)),
        }
    }

    /// Makes sure a wheel entry fires no later than the connection's next deadline.
    pub(super) fn arm_timer(&mut self, key: usize) {
        let due = self.next_due(key);
        let conn = &mut self.conns[key];
        if conn.timer_at == 0 || due < conn.timer_at {
            let at = due.max(self.timers.current() + 1);
            self.timers.schedule(conn.id(key), at);
            conn.timer_at = at;
        }
    }

    pub(super) fn expire_timers(&mut self) {
        self.now = self.tick_now();
        let mut due = std::mem::take(&mut self.due);
        self.timers.expire(self.now, &mut due);
        for entry in due.drain(..) {
            let key = entry.id.slot();
            match self.conns.get_mut(key) {
                Some(c) if c.generation == entry.id.generation && c.timer_at == entry.at => {
                    c.timer_at = 0
                }
                _ => continue, // superseded, or the connection is gone
            }
            if self.next_due(key) > self.now {
                self.arm_timer(key);
                continue;
            }
            self.on_deadline(key);
            self.reap(key);
        }
        self.due = due;
    }

    fn on_deadline(&mut self, key: usize) {
        if self.close_if_expired(key) {
            return;
        }
        let shared = self.shared.clone();
        let s = shared.stats.worker(self.id);
        let conn = &mut self.conns[key];
        match &mut conn.phase {
            Phase::Handshake => {
                WorkerStats::add(&s.handshake_timeouts_total, 1);
                self.kill(key);
            }
            Phase::Linger { .. } => {
                WorkerStats::add(&s.close_grace_timeouts_total, 1);
                self.kill(key);
            }
            Phase::Open(ws) => {
                match ws
                    .session
                    .handle_timeout(self.now, &self.timeouts, &mut self.ctl)
                {
                    Timeout::NotDue => self.arm_timer(key),
                    Timeout::Pinged => {
                        WorkerStats::add(&s.pings_sent_total, 1);
                        self.send_ctl(key);
                        self.arm_timer(key);
                    }
                    Timeout::PeerSilent => {
                        WorkerStats::add(&s.pong_timeouts_total, 1);
                        self.kill(key);
                    }
                    Timeout::CloseTimedOut => {
                        WorkerStats::add(&s.close_grace_timeouts_total, 1);
                        self.kill(key);
                    }
                }
            }
        }
    }
}
