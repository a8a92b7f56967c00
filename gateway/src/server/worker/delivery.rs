//! The worker's side of topics: subscribing a connection (one routine for chat rooms, `/ws`
//! and the file/log sockets), delivering what the hub publishes to local subscribers as shared
//! pre-encoded frames, closing slow consumers, and chat messages.

use std::sync::Arc;

use serde_json::json;

use super::Worker;
use crate::proto::{CloseCode, MessageKind};
use crate::server::conn::Phase;
use crate::server::stats::WorkerStats;
use crate::topics::local::Sub;
use crate::topics::{Published, Style, ToWorker, TopicId, TopicKind};

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

/// A subscription to make.
#[derive(Debug, Clone, Copy)]
pub(super) struct Subscribe<'a> {
    pub topic: TopicId,
    pub replay: Replay,
    pub style: Style,
    /// On `/ws`, the topic's name: the client is told `subscribed` (and of any `gap`).
    pub announce: Option<&'a str>,
}

impl Worker {
    /// Delivers everything the hub has sent since the last turn.
    pub(super) fn drain_mailbox(&mut self) {
        while let Ok(ToWorker::Publish(msg)) = self.mailbox.try_recv() {
            self.deliver(&msg);
        }
    }

    fn deliver(&mut self, msg: &Arc<Published>) {
        let mut due = std::mem::take(&mut self.due_subs);
        due.clear();
        self.local.deliver(msg, &mut due);
        for sub in &due {
            let key = sub.conn.slot();
            if self.is_live(sub.conn) {
                self.deliver_to(key, sub.style, msg);
                self.reap(key);
            }
        }
        WorkerStats::add(&self.stats().deliveries_total, due.len() as u64);
        self.due_subs = due;
    }

    /// Sends one message's frame to one subscriber; closes it if it fell too far behind.
    fn deliver_to(&mut self, key: usize, style: Style, msg: &Arc<Published>) {
        let conn = &self.conns[key];
        let Phase::Open(ws) = &conn.phase else {
            return;
        };
        if conn.dead || !ws.session.is_open() {
            return;
        }
        let bits = ws.session.send_deflate();
        let frame = msg.frame(style, bits.map(|b| (b, &mut self.compressor)));
        let latest = msg.topic_kind == TopicKind::Latest;
        let queued = self.send_shared(key, frame, msg.topic, latest);
        // "Latest value" topics replace what is queued, so only stream topics can fall behind.
        if !latest && queued > self.shared.config.max_queued {
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
            queued.min(self.shared.config.max_queued)
        );
        self.close_ws(key, CloseCode::POLICY, &reason);
    }

    /// Subscribes a fresh `/ws/chat/{room}` connection to its room's topic.
    pub(super) fn subscribe_chat(&mut self, key: usize, room: TopicId) {
        self.subscribe(
            key,
            Subscribe {
                topic: room,
                replay: Replay::None,
                style: Style::Raw,
                announce: None,
            },
        );
    }

    /// Registers a subscription, atomically with what the history holds: on `/ws` the client
    /// is told the sequence number the live stream continues after, and of any gap; then the
    /// replay is sent; then live delivery starts with no gap or duplicate.
    pub(super) fn subscribe(&mut self, key: usize, s: Subscribe<'_>) {
        let since = match s.replay {
            Replay::None => None,
            Replay::Since(n) => Some(n),
            Replay::LatestNewerThan(_) | Replay::Last(_) => Some(0),
        };
        let sub = self.shared.hub.subscribe(s.topic, since);
        let conn = self.conns[key].id(key);
        if let Phase::Open(ws) = &mut self.conns[key].phase {
            ws.topics.push(s.topic);
        }
        if let Some(name) = s.announce {
            let mut ack = json!({"type": "subscribed", "topic": name, "seq": sub.last_seq});
            if let Some(since) = since {
                ack["since"] = json!(since);
            }
            self.reply(key, &ack);
            if let Some(first_available) = sub.gap_until {
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
        self.local.add(
            s.topic,
            Sub {
                conn,
                last_seq: sub.last_seq,
                style: s.style,
            },
        );
    }

    /// Ends one subscription of a connection; false if it had none to that topic.
    pub(super) fn unsubscribe(&mut self, key: usize, topic: TopicId) -> bool {
        let conn = self.conns[key].id(key);
        let Phase::Open(ws) = &mut self.conns[key].phase else {
            return false;
        };
        let Some(i) = ws.topics.iter().position(|&t| t == topic) else {
            return false;
        };
        ws.topics.swap_remove(i);
        self.local.remove(topic, conn);
        self.shared.hub.unsubscribe(topic);
        true
    }

    /// A chat client said something: everyone in the room hears it, the sender included.
    pub(super) fn chat_message(&mut self, key: usize, kind: MessageKind, payload: &[u8]) {
        let Phase::Open(ws) = &self.conns[key].phase else {
            return;
        };
        let Some(&room) = ws.topics.first() else {
            return;
        };
        self.shared.hub.publish_id(room, kind, payload.into());
        WorkerStats::add(&self.stats().published_total, 1);
    }
}
