//! The worker's side of topics: subscribing a connection (one routine for chat rooms, `/ws`
//! and the file/log sockets), delivering what the hub publishes to local subscribers as shared
//! pre-encoded frames, closing slow consumers, and chat messages.
//!
//! Delivery is batched: the mailbox is drained up to [`MAILBOX_BATCH`] messages at a time; each
//! message's frame is appended (by reference) to every local subscriber's outbox, and only then
//! is each subscriber written once, with one write of everything it is owed (frames gathered
//! into one `send` up to 16 KiB, else one `writev`). Under load a subscriber of a topic at 1,000
//! messages a second gets a few writes of many frames, not one `send` per message. A subscriber whose queue is over `--max-queued` after its write is a
//! slow consumer and is closed with 1008.
//!
//! Publishers are pushed back while the hub is congested (a worker's mailbox backlog over
//! `--max-backlog`): the API and `/ws` publishes are refused by the hub; a chat client's
//! message is published, then the client is not read until the backlog is back under the limit.

use std::sync::Arc;

use serde_json::json;

use super::Worker;
use crate::proto::{CloseCode, MessageKind};
use crate::server::conn::{FirstTopic, Phase};
use crate::server::stats::WorkerStats;
use crate::topics::local::Sub;
use crate::topics::{Control, Published, Style, Subscription, TopicId, TopicKind};

/// Messages taken from the mailbox per turn; the sockets get their turn in between.
const MAILBOX_BATCH: usize = 1024;

/// What a new subscriber is sent from before the live stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// Nothing: live messages only (chat rooms).
    None,
    /// Everything the history holds after `since` (`/ws` recovery).
    Since(u64),
    /// The newest message, unless its stamp is not newer than this (`lastMod` of a file socket;
    /// 0: the client has nothing).
    LatestNewerThan(u64),
    /// The last N messages the history holds (`last` of a log socket).
    Last(usize),
}

impl Replay {
    /// The `since` to ask the hub for (the feeds' replays pick from the whole history).
    pub fn since(self) -> Option<u64> {
        match self {
            Replay::None => None,
            Replay::Since(n) => Some(n),
            Replay::LatestNewerThan(_) | Replay::Last(_) => Some(0),
        }
    }
}

/// What to do with a subscription the hub registered.
#[derive(Debug, Clone, Copy)]
pub(super) struct Subscribe<'a> {
    pub replay: Replay,
    pub style: Style,
    /// On `/ws`, the topic's name: the client is told `subscribed` (and of any `gap`).
    pub announce: Option<&'a str>,
}

impl Worker {
    /// Delivers what the hub has posted since the last turn (up to a batch), then writes each
    /// subscriber that got something once; then resumes publishers if the hub caught up.
    pub(super) fn drain_mailbox(&mut self) {
        for _ in 0..MAILBOX_BATCH {
            let Some(msg) = self.mailbox.next() else {
                break;
            };
            self.deliver(&msg);
            self.mailbox.done(&msg);
            self.batch_messages += 1;
        }
        if !self.batch.is_empty() {
            self.write_batch_when_due();
        }
        if !self.hub_paused.is_empty() && !self.shared.hub.congested() {
            self.resume_publishers();
        }
    }

    /// Writes the batch now if the last one went out at least `--flush-interval` ago (so a
    /// message after a quiet spell leaves at once) or the batch is large; otherwise leaves it
    /// for the loop to write when that interval is over. Under a high message rate each
    /// subscriber is then written once per interval with everything it is owed.
    fn write_batch_when_due(&mut self) {
        let now = std::time::Instant::now();
        let due = self.last_flush + self.config.flush_interval;
        if now >= due || self.batch_messages >= MAILBOX_BATCH {
            self.last_flush = now;
            self.flush_due = None;
            self.batch_messages = 0;
            self.write_batch();
        } else {
            self.flush_due = Some(due);
        }
    }

    /// Queues one message's frame for every local subscriber that has not seen it.
    fn deliver(&mut self, msg: &Arc<Published>) {
        let mut due = std::mem::take(&mut self.due_subs);
        due.clear();
        self.local.deliver(msg, &mut due);
        for sub in &due {
            if self.is_live(sub.conn) {
                self.queue_delivery(sub.conn.slot(), sub.style, msg);
            }
        }
        WorkerStats::add(&self.stats().deliveries_total, due.len() as u64);
        if !due.is_empty() {
            self.batch_times.push((msg.at, due.len() as u64));
        }
        self.due_subs = due;
    }

    /// Appends a message's shared frame to a subscriber's outbox, to be written with the rest
    /// of the batch.
    fn queue_delivery(&mut self, key: usize, style: Style, msg: &Arc<Published>) {
        let Some(frame) = self.frame_for(key, style, msg) else {
            return;
        };
        let conn = &mut self.conns[key];
        if conn.write_shut {
            return;
        }
        let out = conn.outbox(&mut self.outboxes);
        out.push_shared(frame, msg.topic, msg.topic_kind == TopicKind::Latest, 0);
        if !conn.batched {
            conn.batched = true;
            self.batch.push(conn.id(key));
        }
    }

    /// Writes every subscriber of the batch once; closes those left too far behind.
    fn write_batch(&mut self) {
        let now = std::time::Instant::now();
        let latency = &self.shared.stats.latencies(self.id).delivery;
        for (at, n) in self.batch_times.drain(..) {
            latency.observe(now.saturating_duration_since(at), n);
        }
        let mut batch = std::mem::take(&mut self.batch);
        for id in batch.drain(..) {
            if !self.is_live(id) {
                continue;
            }
            let key = id.slot();
            self.conns[key].batched = false;
            self.on_writable(key);
            self.check_slow(key);
            self.reap(key);
        }
        self.batch = batch;
    }

    /// The frame of `msg` for one subscriber (compressed if it negotiated deflate); `None` if
    /// the connection can no longer be sent data.
    fn frame_for(&mut self, key: usize, style: Style, msg: &Published) -> Option<Arc<[u8]>> {
        let conn = &self.conns[key];
        let Phase::Open(ws) = &conn.phase else {
            return None;
        };
        if conn.dead || !ws.session.is_open() {
            return None;
        }
        if msg.control != Control::None && style == Style::Raw {
            // Notices are for `/ws` subscribers; a raw socket's stream just goes on.
            return None;
        }
        let bits = ws.session.send_deflate();
        Some(msg.frame(style, bits.map(|b| (b, &mut self.compressor))))
    }

    /// Sends one message's frame to one subscriber now (a replay on subscribe).
    fn deliver_to(&mut self, key: usize, style: Style, msg: &Arc<Published>) {
        let Some(frame) = self.frame_for(key, style, msg) else {
            return;
        };
        self.send_shared(key, frame, msg.topic, msg.topic_kind == TopicKind::Latest);
        self.check_slow(key);
    }

    /// Closes the connection if more than `--max-queued` bytes of stream output wait for it.
    fn check_slow(&mut self, key: usize) {
        let conn = &self.conns[key];
        let max = self.config.max_queued;
        if conn.queued() > max && conn.out.as_ref().is_some_and(|o| o.stream_queued() > max) {
            self.close_slow(key);
        }
    }

    /// Closes a subscriber that fell more than `--max-queued` bytes behind: what it has not
    /// started receiving is dropped, and a close 1008 follows the frame in progress.
    fn close_slow(&mut self, key: usize) {
        WorkerStats::add(&self.stats().slow_consumers_total, 1);
        let queued = self.conns[key].queued();
        if let Some(out) = self.conns[key].out.as_mut() {
            out.discard_unstarted(&mut self.pool);
        }
        let reason = format!(
            "slow consumer: over {} bytes queued",
            queued.min(self.config.max_queued)
        );
        self.close_ws(key, CloseCode::POLICY, &reason);
    }

    /// Subscribes a fresh `/ws/chat/{room}` connection to its room's topic (joined in the hub
    /// before the upgrade was accepted).
    pub(super) fn subscribe_chat(&mut self, key: usize, room: Subscription) {
        self.subscribe(
            key,
            room,
            Subscribe {
                replay: Replay::None,
                style: Style::Raw,
                announce: None,
            },
        );
    }

    /// Records a subscription the hub registered (atomically with what its history holds): on
    /// `/ws` the client is told the epoch and sequence number the live stream continues after,
    /// and of any gap or reset; then the replay is sent; then live delivery starts with no gap
    /// or duplicate.
    pub(super) fn subscribe(&mut self, key: usize, sub: Subscription, s: Subscribe<'_>) {
        let since = s.replay.since();
        let conn = self.conns[key].id(key);
        // Recorded before anything is sent: a replay can close the connection (slow consumer),
        // and closing must find the subscription to end it.
        self.local.add(
            sub.topic,
            Sub {
                conn,
                last_seq: sub.last_seq,
                style: s.style,
            },
        );
        self.add_topic(key, sub.topic);
        if let Some(name) = s.announce {
            let epoch = sub.epoch.to_string();
            let mut ack =
                json!({"type": "subscribed", "topic": name, "epoch": epoch, "seq": sub.last_seq});
            if let Some(since) = since {
                ack["since"] = json!(since);
            }
            self.reply(key, &ack);
            if sub.reset {
                WorkerStats::add(&self.stats().topic_resets_total, 1);
                let reset =
                    json!({"type": "reset", "topic": name, "epoch": epoch, "seq": sub.last_seq});
                self.reply(key, &reset);
            } else if let Some(first_available) = sub.gap_until {
                let from = since.unwrap_or(0) + 1;
                let gap =
                    json!({"type": "gap", "topic": name, "from": from, "to": first_available - 1});
                self.reply(key, &gap);
            }
        }
        let replay: &[Arc<Published>] = match s.replay {
            Replay::None | Replay::Since(_) => &sub.replay,
            Replay::LatestNewerThan(stamp) => match sub.replay.last() {
                Some(m) if stamp == 0 || m.stamp > stamp => &sub.replay[sub.replay.len() - 1..],
                _ => &[],
            },
            Replay::Last(n) => &sub.replay[sub.replay.len().saturating_sub(n)..],
        };
        for msg in replay {
            self.deliver_to(key, s.style, msg);
        }
    }

    /// Ends one subscription of a connection; false if it had none to that topic.
    pub(super) fn unsubscribe(&mut self, key: usize, topic: TopicId) -> bool {
        if !self.remove_topic(key, topic) {
            return false;
        }
        self.local.remove(topic, self.conns[key].id(key));
        self.shared.hub.unsubscribe(topic);
        true
    }

    /// The topics a connection follows: the first in its `Ws`, the rest in the side table.
    pub(super) fn topics_of(&self, key: usize) -> impl Iterator<Item = TopicId> + '_ {
        let first = match &self.conns[key].phase {
            Phase::Open(ws) => ws.first_topic.slot().and_then(|s| self.local.id_of_slot(s)),
            _ => None,
        };
        let more = self.more_topics.get(&key).map_or(&[][..], Vec::as_slice);
        first.into_iter().chain(more.iter().copied())
    }

    fn add_topic(&mut self, key: usize, topic: TopicId) {
        if let Phase::Open(ws) = &mut self.conns[key].phase {
            if ws.first_topic == FirstTopic::NONE {
                ws.first_topic = FirstTopic::new(topic);
            } else {
                self.more_topics.entry(key).or_default().push(topic);
            }
        }
    }

    fn remove_topic(&mut self, key: usize, topic: TopicId) -> bool {
        let Phase::Open(ws) = &mut self.conns[key].phase else {
            return false;
        };
        let more = self.more_topics.get_mut(&key);
        if ws.first_topic == FirstTopic::new(topic) {
            // The first of the rest (if any) moves in.
            ws.first_topic = match more {
                Some(v) if !v.is_empty() => FirstTopic::new(v.swap_remove(0)),
                _ => FirstTopic::NONE,
            };
        } else {
            let Some(v) = more else { return false };
            let Some(i) = v.iter().position(|&t| t == topic) else {
                return false;
            };
            v.swap_remove(i);
        }
        if self.more_topics.get(&key).is_some_and(Vec::is_empty) {
            self.more_topics.remove(&key);
        }
        true
    }

    /// A chat client said something: everyone in the room hears it, the sender included.
    pub(super) fn chat_message(&mut self, key: usize, kind: MessageKind, payload: &[u8]) {
        let Some(room) = self.topics_of(key).next() else {
            return;
        };
        if !self.may_chat(key) {
            let reason = "the token's publish claim does not cover this room";
            return self.close_ws(key, CloseCode::POLICY, reason);
        }
        // A chat message already read is never dropped; while the hub is congested the client
        // is paused instead: published, then not read until the workers catch up.
        if self.clustered() {
            if let Some(name) = self.shared.hub.name_of(room) {
                self.chat_via_bus(&name, kind, payload);
            }
        } else {
            self.shared.hub.publish_id(room, kind, payload.into());
            WorkerStats::add(&self.stats().published_total, 1);
        }
        if self.shared.hub.congested() && !self.conns[key].hub_paused {
            self.conns[key].hub_paused = true;
            let id = self.conns[key].id(key);
            self.hub_paused.push(id);
            WorkerStats::add(&self.stats().publishers_paused_total, 1);
        }
    }

    /// The hub is under its backlog limit again: reads the paused chat clients.
    fn resume_publishers(&mut self) {
        for id in std::mem::take(&mut self.hub_paused) {
            if !self.is_live(id) {
                continue;
            }
            let key = id.slot();
            self.conns[key].hub_paused = false;
            self.read_ready(key, false);
            self.reap(key);
        }
    }
}
