//! A node's bus over one Redis or several (`--bus` repeated): topics are spread over them by
//! a hash of their name that every node computes alike (so every node must list the same URLs
//! in the same order), as Centrifugo shards its Redis engine. Each shard is a [`Bus`] with its
//! own two threads and connections; a topic lives wholly on its shard (number, history,
//! channel), so ordering and recovery are per shard exactly as with one Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Bus, Publish, Refusal, ReplyTo};
use crate::topics::{HistoryConfig, Hub, TopicId};

/// The shard of a topic among `n`: FNV-1a of its name, the same on every node and release.
pub fn shard_of(topic: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % n.max(1) as u64) as usize
}

/// The shards of a node's bus.
#[derive(Debug)]
pub struct Cluster {
    shards: Vec<Arc<Bus>>,
}

impl Cluster {
    /// A bus over `urls` (checked now, connected by [`Cluster::start`]); each shard's queue is
    /// bounded by `max_queued` payload bytes.
    pub fn new(
        urls: &[String],
        history: HistoryConfig,
        max_queued: usize,
    ) -> Result<Arc<Cluster>, String> {
        if urls.is_empty() {
            return Err("--bus: no URL".into());
        }
        let n = urls.len();
        let shards = urls
            .iter()
            .enumerate()
            .map(|(i, url)| Bus::new(url, history, max_queued, (i, n)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Cluster { shards }))
    }

    /// Starts every shard's threads.
    pub fn start(&self, hub: &Arc<Hub>, node: &str) -> std::io::Result<()> {
        for s in &self.shards {
            s.start(hub.clone(), node)?;
        }
        Ok(())
    }

    pub fn shutdown(&self) {
        for s in &self.shards {
            s.shutdown();
        }
    }

    fn shard(&self, topic: &str) -> &Arc<Bus> {
        &self.shards[shard_of(topic, self.shards.len())]
    }

    /// Queues a publish on its topic's shard.
    pub fn publish(&self, p: Publish) -> Result<(), Refusal> {
        self.shard(&p.topic.clone()).publish(p)
    }

    /// Follows a topic (see [`Bus::follow`]).
    pub fn follow(&self, id: TopicId, name: Arc<str>, reply: Option<ReplyTo>, since: Option<u64>) {
        self.shard(&name).follow(id, name.clone(), reply, since);
    }

    pub fn unfollow(&self, id: TopicId, name: Arc<str>) {
        self.shard(&name).unfollow(id, name.clone());
    }

    /// Whether every shard is connected.
    pub fn connected(&self) -> bool {
        self.shards.iter().all(|s| s.connected())
    }

    /// How long the longest-down shard has been down (`None`: all are connected).
    pub fn down_for(&self) -> Option<Duration> {
        self.shards.iter().filter_map(|s| s.down_for()).max()
    }

    /// The fullest shard's queued payload bytes (the publish bound is per shard).
    pub fn queued_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.queued_bytes())
            .max()
            .unwrap_or(0)
    }

    /// The URLs, passwords hidden.
    pub fn shown(&self) -> String {
        let urls: Vec<&str> = self.shards.iter().map(|s| s.shown.as_str()).collect();
        urls.join(", ")
    }

    /// The Prometheus text of the bus's figures, summed over the shards.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let queued: usize = self.shards.iter().map(|s| s.queued_bytes()).sum();
        let up = self.shards.iter().filter(|s| s.connected()).count();
        let gauges = [
            (
                "bus_shards",
                "Redis instances of the bus (--bus)",
                self.shards.len() as u64,
            ),
            (
                "bus_connected",
                "1 while both connections to every Redis of the bus are up",
                u64::from(up == self.shards.len()),
            ),
            (
                "bus_shards_connected",
                "Redis instances of the bus whose connections are both up",
                up as u64,
            ),
            (
                "bus_queued_bytes",
                "payload bytes waiting to be sent to Redis",
                queued as u64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP gateway_{name} {help}\n# TYPE gateway_{name} gauge\ngateway_{name} {v}"
            );
        }
        type Counter = fn(&super::BusStats) -> &AtomicU64;
        let counters: [(&str, &str, Counter); 9] = [
            (
                "bus_publishes_total",
                "messages numbered and published through Redis",
                |s| &s.publishes_total,
            ),
            (
                "bus_publish_failures_total",
                "publishes the bus could not make (Redis unreachable, timed out, an error): answered 503 or a /ws error",
                |s| &s.publish_failures_total,
            ),
            (
                "bus_publish_refused_total",
                "publishes refused before reaching Redis: the bus down, or its queue full",
                |s| &s.publish_refused_total,
            ),
            (
                "bus_received_total",
                "messages received from Redis on followed topics",
                |s| &s.received_total,
            ),
            (
                "bus_errors_total",
                "connections to Redis lost or refused",
                |s| &s.errors_total,
            ),
            (
                "bus_reconnects_total",
                "connections to Redis made again after one was lost",
                |s| &s.reconnects_total,
            ),
            (
                "bus_syncs_total",
                "topics brought in step with Redis (a follow, a reconnect, a missed number)",
                |s| &s.syncs_total,
            ),
            (
                "bus_gaps_total",
                "gap notices: numbers Redis's history no longer held when a node caught up",
                |s| &s.gaps_total,
            ),
            (
                "bus_resets_total",
                "reset notices: Redis had started a topic's numbering over",
                |s| &s.resets_total,
            ),
        ];
        for (name, help, get) in counters {
            let v: u64 = self
                .shards
                .iter()
                .map(|s| get(&s.stats).load(Ordering::Relaxed))
                .sum();
            let _ = writeln!(
                out,
                "# HELP gateway_{name} {help}\n# TYPE gateway_{name} counter\ngateway_{name} {v}"
            );
        }
        crate::server::histogram::render(
            out,
            "bus_round_trip_seconds",
            "one pipeline of publishes to Redis, from sending to its last answer",
            self.shards.iter().map(|s| &s.stats.round_trip),
        );
        crate::server::histogram::render(
            out,
            "bus_delivery_lag_seconds",
            "from a message's publish on any node (its clock) to its arrival here through Redis",
            self.shards.iter().map(|s| &s.stats.lag),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_spread_over_shards_the_same_way_everywhere() {
        assert_eq!(shard_of("anything", 1), 0);
        // Fixed values: a change would split a running cluster's topics.
        assert_eq!(shard_of("chat/lobby", 3), shard_of("chat/lobby", 3));
        let counts = (0..3000).fold([0usize; 3], |mut c, i| {
            c[shard_of(&format!("topic/{i}"), 3)] += 1;
            c
        });
        assert!(counts.iter().all(|&n| n > 800), "{counts:?}");
    }
}
