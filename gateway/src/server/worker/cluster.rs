//! The worker's side of the cluster bus (`--bus`): what waits for Redis, and the answers.
//!
//! With a bus nothing the worker does blocks on Redis. A request that needs it is sent to the
//! bus with a number, and the connection waits in the `waits` side table:
//! - `POST /publish` is answered when the bus has numbered the message (200 with its `seq` and
//!   `epoch`, or 503). A backend may pipeline: up to [`MAX_OWED`] publishes of one connection
//!   are at the bus at once (so they share its round trips), and their answers are written in
//!   request order from the `publishes` side table. Another request after them, or one more
//!   publish, waits unread until the answers are out;
//! - a `/ws` publish is answered `published` (or `error`) when the number comes;
//! - a `/ws` subscribe to a topic this node does not follow yet, and the upgrade of a
//!   `/ws/chat/ROOM` socket, wait until the bus has confirmed the Redis subscription and
//!   synced the topic ([`crate::topics::cluster`]): only then is `subscribed` (or the 101)
//!   sent, so every message published afterwards, on any node, reaches the subscriber.
//!
//! A connection that goes away while it waits is simply not answered; its counted
//! subscription is given back when the answer comes.

use std::sync::Arc;

use serde_json::json;

use super::http::After;
use super::{Worker, auth, delivery};
use crate::bus::{BusReply, Outcome, Publish, Refusal, ReplyTo};
use crate::http::Route;
use crate::proto::{DeflateParams, MessageKind};
use crate::server::ConnId;
use crate::server::conn::Phase;
use crate::server::stats::WorkerStats;
use crate::topics::{Published, Resume, Style, TopicId};

/// What a connection waits for.
#[derive(Debug)]
pub(super) enum Waiting {
    /// A `/ws` subscribe: its topic (counted) and where the client left off.
    Subscribe {
        topic: TopicId,
        name: String,
        since: Option<u64>,
        epoch: Option<String>,
    },
    /// A chat upgrade: the room (counted), and the 101 to send.
    Chat {
        topic: TopicId,
        response: Vec<u8>,
        deflate: Option<DeflateParams>,
        authorized: Option<auth::Authorized>,
    },
    /// `POST /publish` (its answer's place is in the `publishes` side table).
    HttpPublish,
    /// A `/ws` publish.
    WsPublish { topic: String },
}

/// Topic names a worker remembers having published to through the bus (a publish to one of
/// them is not charged as a new topic again); the set is emptied when it reaches this size.
const BUS_NAMES: usize = 4096;

/// Publishes of one connection at the bus at once, at most.
pub(super) const MAX_OWED: usize = 64;

/// A `POST /publish` answer owed, in request order; `outcome` once the bus has answered.
#[derive(Debug)]
pub(super) struct Owed {
    wait: u64,
    topic: String,
    keep_alive: bool,
    outcome: Option<Outcome>,
}

/// The bus's answer a connection waits for.
#[derive(Debug)]
pub(super) struct Wait {
    conn: ConnId,
    what: Waiting,
}

/// What the bus's refusals are called in answers.
pub(super) fn refusal_text(r: Refusal) -> &'static str {
    match r {
        Refusal::Down => "the bus is unavailable: retry shortly",
        Refusal::Busy => "the bus is behind: retry shortly",
    }
}

impl Worker {
    /// Whether topics go through a bus.
    pub(super) fn clustered(&self) -> bool {
        self.shared.hub.bus().is_some()
    }

    /// Records what `key` waits for; returns where the bus answers.
    pub(super) fn wait_for_bus(&mut self, key: usize, what: Waiting) -> ReplyTo {
        self.next_wait += 1;
        let conn = self.conns[key].id(key);
        self.waits.insert(self.next_wait, Wait { conn, what });
        ReplyTo {
            worker: self.id,
            wait: self.next_wait,
        }
    }

    /// Stops reading a connection until the bus answers (its answers must keep their order).
    pub(super) fn park(&mut self, key: usize) {
        self.conns[key].hub_paused = true;
    }

    /// Reads a parked connection again, starting with the input it already had.
    fn unpark(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.hub_paused = false;
        if self.partial_input.contains_key(&key) {
            conn.yielded = true;
        }
        self.read_ready(key, false);
    }

    /// Sends a publish to the bus for `key`, which waits for its number.
    pub(super) fn publish_via_bus(
        &mut self,
        key: usize,
        topic: &str,
        kind: MessageKind,
        payload: Box<[u8]>,
        what: Waiting,
    ) -> Result<u64, Refusal> {
        let bus = self.shared.hub.bus().expect("clustered").clone();
        let reply = self.wait_for_bus(key, what);
        let publish = Publish {
            reply: Some(reply),
            ..Publish::new(Arc::from(topic), kind, payload)
        };
        match bus.publish(publish) {
            Ok(()) => Ok(reply.wait),
            Err(r) => {
                self.waits.remove(&reply.wait);
                Err(r)
            }
        }
    }

    /// `POST /publish` with a bus: sent to the bus; its answer is owed in request order
    /// (refused at once, still in order, while the bus is down or behind).
    pub(super) fn publish_clustered(
        &mut self,
        key: usize,
        topic: &str,
        kind: MessageKind,
        body: Box<[u8]>,
        keep_alive: bool,
    ) {
        let what = Waiting::HttpPublish;
        let (wait, outcome) = if self.shared.hub.congested() {
            (0, Some(Outcome::Failed(refusal_text(Refusal::Busy))))
        } else if let Some(why) = self.charge_new_topic(key, topic) {
            (0, Some(Outcome::Failed(why)))
        } else {
            match self.publish_via_bus(key, topic, kind, body, what) {
                Ok(wait) => (wait, None),
                Err(r) => (0, Some(Outcome::Failed(refusal_text(r)))),
            }
        };
        if outcome.is_some() {
            WorkerStats::add(&self.stats().publish_refused_busy_total, 1);
        }
        let owed = self.publishes.entry(key).or_default();
        owed.push_back(Owed {
            wait,
            topic: topic.to_string(),
            keep_alive,
            outcome,
        });
        if owed.len() >= MAX_OWED || !keep_alive {
            self.park(key);
        }
        self.write_owed(key);
    }

    /// With a bus, a publish to a topic this node does not hold may create one in Redis: it is
    /// charged to the connection's allowance of new topics (`--topic-burst`, `--topic-rate`),
    /// so one client cannot fill Redis with names. `None`: allowed (and charged).
    fn charge_new_topic(&mut self, key: usize, topic: &str) -> Option<&'static str> {
        if self.shared.hub.find(topic).is_some() || self.bus_names.contains(topic) {
            return None;
        }
        if !self.may_create_topic(key) {
            WorkerStats::add(&self.stats().topics_refused_rate_total, 1);
            return Some(super::http::CREATE_RATE);
        }
        self.created_topic(key);
        if self.bus_names.len() >= BUS_NAMES {
            self.bus_names.clear();
        }
        self.bus_names.insert(topic.into());
        None
    }

    /// `/ws` subscribes of a connection waiting for the bus (they count against its cap).
    pub(super) fn subscribes_waiting(&self, key: usize) -> usize {
        if self.waits.is_empty() {
            return 0;
        }
        let conn = self.conns[key].id(key);
        self.waits
            .values()
            .filter(|w| w.conn == conn && matches!(w.what, Waiting::Subscribe { .. }))
            .count()
    }

    /// Whether a connection still owes publish answers (its next request waits for them).
    pub(super) fn owes_publishes(&self, key: usize) -> bool {
        self.publishes.get(&key).is_some_and(|q| !q.is_empty())
    }

    /// Writes the publish answers that are due, in request order; reads the connection again
    /// once none is owed.
    fn write_owed(&mut self, key: usize) {
        while let Some(front) = self.publishes.get_mut(&key).and_then(|q| q.front_mut()) {
            let Some(outcome) = front.outcome.take() else {
                return;
            };
            let Owed {
                topic, keep_alive, ..
            } = self
                .publishes
                .get_mut(&key)
                .and_then(|q| q.pop_front())
                .expect("the front");
            self.publish_answered(key, &topic, keep_alive, outcome);
            if self.conns[key].dead || !keep_alive {
                self.publishes.remove(&key);
                return;
            }
        }
        self.publishes.remove(&key);
        if self.conns[key].hub_paused {
            self.unpark(key);
        }
    }

    /// A `/ws` publish with a bus: answered `published` when the number comes.
    pub(super) fn ws_publish_clustered(&mut self, key: usize, topic: String, payload: Box<[u8]>) {
        if let Some(why) = self.charge_new_topic(key, &topic) {
            return self.reply_error(key, why, &topic);
        }
        let refused = if self.shared.hub.congested() {
            Some(Refusal::Busy)
        } else {
            let what = Waiting::WsPublish {
                topic: topic.clone(),
            };
            self.publish_via_bus(key, &topic, MessageKind::Text, payload, what)
                .err()
        };
        if let Some(r) = refused {
            WorkerStats::add(&self.stats().publish_refused_busy_total, 1);
            self.reply_error(key, refusal_text(r), &topic);
        }
    }

    /// A `/ws` subscribe with a bus to a topic not followed yet: waits for the bus.
    pub(super) fn subscribe_waiting(
        &mut self,
        key: usize,
        topic: TopicId,
        name: &str,
        resume: Resume<'_>,
    ) {
        let what = Waiting::Subscribe {
            topic,
            name: name.to_string(),
            since: resume.since,
            epoch: resume.epoch.map(str::to_string),
        };
        let reply = self.wait_for_bus(key, what);
        let bus = self.shared.hub.bus().expect("clustered").clone();
        bus.follow(topic, name.into(), Some(reply), resume.since);
    }

    /// A chat message with a bus: sent, nobody waits (the caller pauses the client while the
    /// bus's queue is over half its bound). Lost, and counted, only while the bus is down.
    pub(super) fn chat_via_bus(&mut self, room: &str, kind: MessageKind, payload: &[u8]) {
        let bus = self.shared.hub.bus().expect("clustered").clone();
        let publish = Publish::new(Arc::from(room), kind, payload.into());
        if bus.publish(publish).is_ok() {
            WorkerStats::add(&self.stats().published_total, 1);
        }
    }

    /// Handles the answers the bus has sent this worker.
    pub(super) fn drain_bus_replies(&mut self) {
        while let Some(BusReply {
            wait,
            outcome,
            history,
        }) = self.mailbox.next_reply()
        {
            let Some(Wait { conn, what }) = self.waits.remove(&wait) else {
                continue;
            };
            let live = self.is_live(conn) && !self.conns[conn.slot()].dead;
            self.answered(conn.slot(), live, wait, what, (outcome, history));
            if live {
                self.reap(conn.slot());
            }
        }
    }

    fn answered(
        &mut self,
        key: usize,
        live: bool,
        wait: u64,
        what: Waiting,
        (outcome, history): (Outcome, Vec<Arc<Published>>),
    ) {
        match what {
            Waiting::Subscribe {
                topic,
                name,
                since,
                epoch,
            } => {
                // A connection already closing has ended its subscriptions: this one too.
                if !live || !matches!(self.conns[key].phase, Phase::Open(_)) {
                    return self.shared.hub.unsubscribe(topic);
                }
                let resume = Resume {
                    since,
                    epoch: epoch.as_deref(),
                };
                self.subscribe_answered(key, topic, &name, resume, (outcome, history));
            }
            Waiting::Chat {
                topic,
                response,
                deflate,
                authorized,
            } => {
                if !live {
                    return self.shared.hub.unsubscribe(topic);
                }
                let hub = self.shared.hub.clone();
                match (outcome, hub.finish_join(topic, Resume::default(), history)) {
                    (Outcome::Followed, Some(room)) => {
                        self.send(key, &[&response]);
                        if let Some(a) = authorized {
                            self.auth.insert(key, a);
                        }
                        self.open(key, Route::Chat, deflate);
                        self.subscribe_chat(key, room);
                        self.unpark(key);
                    }
                    _ => {
                        hub.unsubscribe(topic);
                        self.respond_unavailable(key);
                    }
                }
            }
            Waiting::HttpPublish => {
                if !live {
                    return;
                }
                let owed = self
                    .publishes
                    .get_mut(&key)
                    .and_then(|q| q.iter_mut().find(|o| o.wait == wait));
                if let Some(o) = owed {
                    o.outcome = Some(outcome);
                }
                self.write_owed(key);
            }
            Waiting::WsPublish { topic } => {
                if !live {
                    return;
                }
                match outcome {
                    Outcome::Published { epoch, seq, .. } => {
                        WorkerStats::add(&self.stats().published_total, 1);
                        let epoch = epoch.to_string();
                        self.reply(
                            key,
                            &json!({"type": "published", "topic": topic, "epoch": epoch, "seq": seq}),
                        );
                    }
                    Outcome::Failed(why) => self.reply_error(key, why, &topic),
                    Outcome::Followed => {}
                }
            }
        }
    }

    fn subscribe_answered(
        &mut self,
        key: usize,
        topic: TopicId,
        name: &str,
        resume: Resume<'_>,
        (outcome, history): (Outcome, Vec<Arc<Published>>),
    ) {
        let hub = self.shared.hub.clone();
        if let Outcome::Failed(why) = outcome {
            hub.unsubscribe(topic);
            return self.reply_error(key, why, name);
        }
        if self.topics_of(key).any(|t| t == topic) {
            // Two subscribes raced; the first one counts.
            hub.unsubscribe(topic);
            return self.reply_error(key, "already subscribed", name);
        }
        let Some(sub) = hub.finish_join(topic, resume, history) else {
            return self.reply_error(key, "the topic is gone", name);
        };
        let replay = resume
            .since
            .map_or(delivery::Replay::None, delivery::Replay::Since);
        self.subscribe(
            key,
            sub,
            delivery::Subscribe {
                replay,
                style: Style::Envelope,
                announce: Some(name),
            },
        );
    }

    /// A chat upgrade the bus could not serve: 503, and the connection closes.
    fn respond_unavailable(&mut self, key: usize) {
        let body = json!({"error": refusal_text(Refusal::Down)});
        self.respond_json(key, 503, &[("Retry-After", "1")], &body, After::Close);
    }

    /// The answer to a `POST /publish` that went through the bus.
    fn publish_answered(&mut self, key: usize, topic: &str, keep_alive: bool, outcome: Outcome) {
        let after = if keep_alive {
            After::KeepAlive
        } else {
            After::Close
        };
        match outcome {
            Outcome::Published { epoch, seq, nodes } => {
                WorkerStats::add(&self.stats().published_total, 1);
                let hub = &self.shared.hub;
                let here = hub.find(topic).map_or(0, |id| hub.subscribers(id));
                let answer = json!({
                    "topic": topic,
                    "seq": seq,
                    "epoch": epoch.to_string(),
                    "subscribers": here,
                    "nodes": nodes,
                });
                self.respond_json(key, 200, &[], &answer, after);
            }
            Outcome::Failed(_) | Outcome::Followed => {
                let why = match outcome {
                    Outcome::Failed(why) => why,
                    _ => "the bus answered something else",
                };
                let body = json!({"error": why, "topic": topic});
                self.respond_json(key, 503, &[("Retry-After", "1")], &body, after);
            }
        }
    }
}
