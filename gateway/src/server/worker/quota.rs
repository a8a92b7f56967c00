//! How many topics one connection may create, and how fast: a token bucket per connection
//! (`--topic-burst` new topics at once, refilled at `--topic-rate` a second), charged only when
//! a name is new to the hub (subscribing to or publishing on a topic that exists is free).
//!
//! The bucket lives in a worker side table, and only for connections that have created a
//! topic: a connection that never does costs nothing, and reaping removes the entry. A chat
//! socket creates at most its room, when it opens, and is not charged.

use std::time::Instant;

use super::Worker;

/// One connection's allowance of new topics.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    /// New topics it may create now (a fraction: refilled continuously).
    credit: f32,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, burst: u32, rate: u32) {
        let earned = now.saturating_duration_since(self.at).as_secs_f32() * rate as f32;
        self.credit = (self.credit + earned).min(burst as f32);
        self.at = now;
    }
}

impl Worker {
    /// Whether connection `key` may create a topic now.
    pub(super) fn may_create_topic(&mut self, key: usize) -> bool {
        let (burst, rate) = (self.config.topic_burst, self.config.topic_rate);
        match self.topic_quota.get_mut(&key) {
            None => burst >= 1,
            Some(b) => {
                b.refill(Instant::now(), burst, rate);
                b.credit >= 1.0
            }
        }
    }

    /// Charges connection `key` for a topic it created.
    pub(super) fn created_topic(&mut self, key: usize) {
        let (burst, rate) = (self.config.topic_burst, self.config.topic_rate);
        let now = Instant::now();
        let b = self.topic_quota.entry(key).or_insert(Bucket {
            credit: burst as f32,
            at: now,
        });
        b.refill(now, burst, rate);
        b.credit = (b.credit - 1.0).max(0.0);
    }
}
