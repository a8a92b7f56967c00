//! Topics: names, sequence numbers, history, and messages framed once for every subscriber.
//!
//! The [`Hub`] is shared by all workers. Publishing takes its lock briefly: the topic's next
//! sequence number is assigned, the message is appended to the topic's bounded history ring and
//! handed, still under the lock, to every worker's channel, so every worker sees a topic's
//! messages in sequence order. Delivery is lock-free: each worker keeps its own subscriber table
//! ([`local::LocalTopics`]) and appends a reference to the message's pre-encoded frame to each
//! local subscriber's output queue.
//!
//! A [`Published`] message is framed lazily, once per shape: the raw frame (the payload as the
//! feed sockets `/ws/chat/..`, `/ws/file/..` and `/ws/log/..` send it), the JSON envelope of the
//! multiplexed `/ws` socket, and each of those compressed once per negotiated window size.

pub mod cluster;
mod history;
mod lifecycle;
pub mod listing;
pub mod local;
pub mod mailbox;
mod published;
mod table;
mod types;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::proto::MessageKind;
pub use cluster::{Follow, Joined};
pub use lifecycle::Epoch;
pub use listing::{INDEX_TOPICS, TopicPage};
pub use mailbox::{Inbox, Mailbox};
pub use published::{Control, Published, Style};
pub use types::{HubLimits, Receipt, Refused, Resume, Subscription};

/// A topic's id in the hub: a slot and its generation, so the id of a forgotten topic never
/// names a later one ([`table`]).
pub type TopicId = u64;
pub use table::slot_of;

/// Longest topic name accepted.
pub const MAX_TOPIC_LEN: usize = 128;

/// Whether `name` is a topic name: 1 to 128 bytes of segments of `[A-Za-z0-9_.-]` separated by
/// single slashes (`chat/lobby`, `news/eu`, `file/config`).
pub fn is_valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_LEN
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        })
}

/// How a topic treats a subscriber that falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// Every message matters (chat, logs, events): a subscriber too far behind is closed.
    Stream,
    /// Only the newest message matters (file content): older queued ones are replaced.
    Latest,
}

/// Bounds of each topic's history ring. A [`TopicKind::Latest`] topic keeps only its newest
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per topic. Default 256.
    pub messages: usize,
    /// Payload bytes kept per topic. Default 1 MiB. The newest message is always kept.
    pub bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            messages: 256,
            bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    kind: TopicKind,
    last_seq: u64,
    history: VecDeque<Arc<Published>>,
    history_bytes: usize,
    subscribers: usize,
    /// Created, published to, or left by its last subscriber ([`lifecycle`]).
    last_active: Instant,
    /// An operator's topic (a configured feed): never forgotten.
    pinned: bool,
    /// In the idle queue.
    queued: bool,
    /// With a bus: the epoch Redis keeps for the topic, once known (without a bus the epoch is
    /// derived from the id, [`Epoch::of`]).
    epoch: Option<Epoch>,
    /// With a bus: whether this node follows the topic on Redis ([`cluster`]).
    follow: Follow,
}

#[derive(Debug)]
struct HubInner {
    by_name: HashMap<Arc<str>, TopicId>,
    topics: table::Table,
    /// Topics that went idle, oldest first, to check for forgetting ([`lifecycle`]).
    idle: VecDeque<(TopicId, Instant)>,
    /// How long an idle topic is kept (`--topic-ttl`).
    ttl: Duration,
    /// Topics forgotten so far.
    forgotten: u64,
    /// The history of all stream topics together.
    memory: history::Memory,
}

/// The topic registry shared by all workers.
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<HubInner>,
    mailboxes: OnceLock<Vec<Mailbox>>,
    history: HistoryConfig,
    limits: HubLimits,
    /// `limits.max_topics` and `limits.max_backlog` as they are now ([`Hub::set_limits`]).
    max_topics: AtomicUsize,
    max_backlog: AtomicUsize,
    /// The key of this process's epochs.
    epoch_key: u64,
    /// The cluster bus, with `--bus`: publishes go through it, and topics with subscribers
    /// here are followed on it ([`cluster`]).
    bus: OnceLock<Arc<crate::bus::Cluster>>,
}

impl Hub {
    /// A hub with no limit on topics or backlogs.
    pub fn new(history: HistoryConfig) -> Hub {
        Self::with_limits(history, HubLimits::default())
    }

    /// A hub on which clients may create at most `max_topics` topics at a time (idle ones are
    /// forgotten after `topic_ttl`), and whose refusable publishes are refused while a worker's
    /// backlog is over `max_backlog`.
    pub fn with_limits(history: HistoryConfig, limits: HubLimits) -> Hub {
        Hub {
            inner: Mutex::new(HubInner {
                by_name: HashMap::new(),
                topics: table::Table::default(),
                idle: VecDeque::new(),
                ttl: limits.topic_ttl,
                forgotten: 0,
                memory: history::Memory::default(),
            }),
            mailboxes: OnceLock::new(),
            history,
            limits,
            max_topics: AtomicUsize::new(limits.max_topics),
            max_backlog: AtomicUsize::new(limits.max_backlog),
            epoch_key: lifecycle::random_key(),
            bus: OnceLock::new(),
        }
    }

    /// Changes the topic and backlog limits and the topic TTL of a running hub (a configuration
    /// reload). Topics over a lowered `max_topics` stay; only new names are refused.
    pub fn set_limits(&self, max_topics: usize, max_backlog: usize, topic_ttl: Duration) {
        self.max_topics.store(max_topics, Ordering::Relaxed);
        self.max_backlog.store(max_backlog, Ordering::Relaxed);
        self.lock().ttl = topic_ttl;
    }

    /// Whether a worker's backlog is over the limit: publishers are pushed back until the
    /// workers catch up.
    pub fn congested(&self) -> bool {
        let max = self.max_backlog.load(Ordering::Relaxed);
        // With a bus, publishes waiting for Redis count too (half the bound: the queue takes
        // up to all of it before refusing).
        if self.bus.get().is_some_and(|b| b.queued_bytes() > max / 2) {
            return true;
        }
        self.mailboxes
            .get()
            .is_some_and(|m| m.iter().any(|m| m.backlog().bytes() > max))
    }

    /// (messages, bytes) posted to workers and not yet delivered, summed.
    pub fn backlog(&self) -> (usize, usize) {
        self.mailboxes.get().map_or((0, 0), |m| {
            m.iter().fold((0, 0), |(n, b), m| {
                (n + m.backlog().messages(), b + m.backlog().bytes())
            })
        })
    }

    /// Connects the workers; called once, before any publish.
    pub fn set_mailboxes(&self, mailboxes: Vec<Mailbox>) {
        let _ = self.mailboxes.set(mailboxes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping delivery would, so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch of a topic id (without a bus).
    pub fn epoch(&self, id: TopicId) -> Epoch {
        Epoch::of(self.epoch_key, id)
    }

    /// The epoch of a topic: the bus's, or the one derived from its id.
    fn epoch_of(&self, topic: &Topic, id: TopicId) -> Epoch {
        topic.epoch.unwrap_or_else(|| self.epoch(id))
    }

    /// The id of a topic, creating it on first use, pinned: an operator's topic (a configured
    /// feed) is never forgotten. The caller has checked the name. Names from clients go
    /// through [`Hub::join`] and [`Hub::try_publish`].
    pub fn topic(&self, name: &str, kind: TopicKind) -> TopicId {
        let mut inner = self.lock();
        let id = Self::intern(&mut inner, name, kind);
        if let Some(t) = inner.topics.get_mut(&id) {
            t.pinned = true;
        }
        self.follow_locked(&mut inner, id);
        id
    }

    /// The id of a topic, creating it if new, unless it is new and either the hub holds its
    /// limit or the asker may not create one (`may_create`). Also says whether it was created.
    fn try_intern(
        &self,
        inner: &mut HubInner,
        name: &str,
        kind: TopicKind,
        may_create: bool,
    ) -> Result<(TopicId, bool), Refused> {
        if let Some(&id) = inner.by_name.get(name) {
            return Ok((id, false));
        }
        if !may_create {
            return Err(Refused::CreateRate);
        }
        let now = Instant::now();
        lifecycle::expire(inner, now);
        if inner.topics.len() >= self.max_topics.load(Ordering::Relaxed) {
            return Err(Refused::TooManyTopics);
        }
        let id = Self::intern(inner, name, kind);
        lifecycle::went_idle(inner, id, now);
        Ok((id, true))
    }

    /// The id of an existing topic.
    pub fn find(&self, name: &str) -> Option<TopicId> {
        self.lock().by_name.get(name).copied()
    }

    fn intern(inner: &mut HubInner, name: &str, kind: TopicKind) -> TopicId {
        if let Some(&id) = inner.by_name.get(name) {
            return id;
        }
        let name: Arc<str> = name.into();
        let id = inner.topics.insert(Topic {
            name: name.clone(),
            kind,
            last_seq: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            subscribers: 0,
            last_active: Instant::now(),
            pinned: false,
            queued: false,
            epoch: None,
            follow: Follow::Off,
        });
        inner.by_name.insert(name, id);
        id
    }

    /// Publishes a message to a topic (created as a stream topic if new) and hands it to every
    /// worker.
    pub fn publish(&self, name: &str, kind: MessageKind, payload: Box<[u8]>) -> Receipt {
        let mut inner = self.lock();
        let id = match self.try_intern(&mut inner, name, TopicKind::Stream, true) {
            Ok((id, _)) => id,
            Err(_) => Self::intern(&mut inner, name, TopicKind::Stream),
        };
        self.publish_locked(&mut inner, id, kind, payload, 0)
            .expect("the topic exists under the lock")
    }

    /// [`Hub::publish`] for names from clients and backends: refused when the topic is new and
    /// the hub already holds its limit of topics or the asker may not create one
    /// (`may_create`), or while a worker's backlog is over its limit. Also says whether the
    /// topic was created.
    pub fn try_publish(
        &self,
        name: &str,
        kind: MessageKind,
        payload: Box<[u8]>,
        may_create: bool,
    ) -> Result<(Receipt, bool), Refused> {
        if self.congested() {
            return Err(Refused::Busy);
        }
        let mut inner = self.lock();
        let (id, created) = self.try_intern(&mut inner, name, TopicKind::Stream, may_create)?;
        let receipt = self
            .publish_locked(&mut inner, id, kind, payload, 0)
            .expect("the topic exists under the lock");
        Ok((receipt, created))
    }

    /// Publishes to a topic by id; `None` if it was forgotten.
    pub fn publish_id(
        &self,
        id: TopicId,
        kind: MessageKind,
        payload: Box<[u8]>,
    ) -> Option<Receipt> {
        self.publish_stamped(id, kind, payload, 0)
    }

    /// Publishes to a topic by id with a version stamp ([`Published::stamp`]); `None` if it was
    /// forgotten, or if it went to the bus (which numbers it; nobody waits for the number).
    pub fn publish_stamped(
        &self,
        id: TopicId,
        kind: MessageKind,
        payload: Box<[u8]>,
        stamp: u64,
    ) -> Option<Receipt> {
        let mut inner = self.lock();
        if let Some(bus) = self.bus.get() {
            let p = Self::bus_publish(&inner, id, kind, payload, stamp, None)?;
            drop(inner);
            let _ = bus.publish(p);
            return None;
        }
        self.publish_locked(&mut inner, id, kind, payload, stamp)
    }

    /// [`Hub::publish_stamped`] for a thread that may wait (a file feed): with a bus, it waits
    /// until Redis has numbered the message, and says `false` if the bus could not (down, full,
    /// timed out), so the feed offers the version again later.
    pub fn offer_stamped(
        &self,
        id: TopicId,
        kind: MessageKind,
        payload: Box<[u8]>,
        stamp: u64,
    ) -> bool {
        let mut inner = self.lock();
        let Some(bus) = self.bus.get() else {
            self.publish_locked(&mut inner, id, kind, payload, stamp);
            return true;
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let Some(p) = Self::bus_publish(&inner, id, kind, payload, stamp, Some(tx)) else {
            return true;
        };
        drop(inner);
        bus.publish(p).is_ok()
            && matches!(
                rx.recv_timeout(Duration::from_secs(5)),
                Ok(crate::bus::Outcome::Published { .. })
            )
    }

    /// A publish of topic `id` for the bus; `None` if the topic was forgotten.
    fn bus_publish(
        inner: &HubInner,
        id: TopicId,
        kind: MessageKind,
        payload: Box<[u8]>,
        stamp: u64,
        done: Option<crossbeam_channel::Sender<crate::bus::Outcome>>,
    ) -> Option<crate::bus::Publish> {
        let t = inner.topics.get(&id)?;
        Some(crate::bus::Publish {
            stamp,
            latest: t.kind == TopicKind::Latest,
            done,
            ..crate::bus::Publish::new(t.name.clone(), kind, payload)
        })
    }

    fn publish_locked(
        &self,
        inner: &mut HubInner,
        id: TopicId,
        kind: MessageKind,
        payload: Box<[u8]>,
        stamp: u64,
    ) -> Option<Receipt> {
        let topic = inner.topics.get(&id)?;
        let (seq, subscribers) = (topic.last_seq + 1, topic.subscribers);
        let epoch = self.epoch_of(topic, id);
        let msg = Published::new(
            id,
            topic.name.clone(),
            seq,
            kind,
            topic.kind,
            payload,
            stamp,
        );
        self.append_locked(inner, msg);
        Some(Receipt {
            topic: id,
            seq,
            epoch,
            subscribers,
        })
    }

    /// Makes `msg` its topic's newest message: into the history, and to every worker.
    fn append_locked(&self, inner: &mut HubInner, msg: Published) {
        let Some(topic) = inner.topics.get_mut(&msg.topic) else {
            return;
        };
        topic.last_seq = msg.seq;
        topic.last_active = std::time::Instant::now();
        let msg = Arc::new(msg);
        history::append(
            inner,
            &self.history,
            self.limits.history_memory,
            msg.clone(),
        );
        self.post_locked(&msg);
    }

    /// Hands a message to every worker. Called under the lock, so every worker sees one
    /// topic's messages in sequence order.
    fn post_locked(&self, msg: &Arc<Published>) {
        if let Some(mailboxes) = self.mailboxes.get() {
            for m in mailboxes {
                m.post(msg.clone());
            }
        }
    }

    /// Registers a subscriber of a topic by name, creating the topic if new (refused as
    /// [`Hub::try_publish`] refuses), atomically: a topic cannot be forgotten between being
    /// found and being subscribed to. Also says whether the topic was created.
    pub fn join(
        &self,
        name: &str,
        kind: TopicKind,
        resume: Resume<'_>,
        may_create: bool,
    ) -> Result<(Subscription, bool), Refused> {
        let mut inner = self.lock();
        let (id, created) = self.try_intern(&mut inner, name, kind, may_create)?;
        let sub = self
            .subscribe_locked(&mut inner, id, resume)
            .expect("the topic exists under the lock");
        Ok((sub, created))
    }

    /// Registers a subscriber of a topic by id; `None` if it was forgotten. With `since`, the
    /// messages after it that the history still holds are returned for replay; a `since` from
    /// another epoch or beyond the last sequence number is answered with a reset instead.
    pub fn subscribe(&self, id: TopicId, resume: Resume<'_>) -> Option<Subscription> {
        self.subscribe_locked(&mut self.lock(), id, resume)
    }

    fn subscribe_locked(
        &self,
        inner: &mut HubInner,
        id: TopicId,
        resume: Resume<'_>,
    ) -> Option<Subscription> {
        let topic = inner.topics.get_mut(&id)?;
        topic.subscribers += 1;
        self.joined_locked(inner, id, resume)
    }

    /// The subscription of a subscriber already counted on the topic.
    fn joined_locked(
        &self,
        inner: &mut HubInner,
        id: TopicId,
        resume: Resume<'_>,
    ) -> Option<Subscription> {
        let topic = inner.topics.get(&id)?;
        let epoch = self.epoch_of(topic, id);
        let mut sub = Subscription {
            topic: id,
            last_seq: topic.last_seq,
            epoch,
            replay: Vec::new(),
            gap_until: None,
            reset: false,
        };
        let Some(since) = resume.since else {
            return Some(sub);
        };
        if since > topic.last_seq || resume.epoch.is_some_and(|e| !epoch.matches(e)) {
            sub.reset = true;
            return Some(sub);
        }
        let oldest = topic.history.front().map_or(topic.last_seq + 1, |m| m.seq);
        if since + 1 < oldest {
            sub.gap_until = Some(oldest);
        }
        sub.replay = topic
            .history
            .iter()
            .filter(|m| m.seq > since)
            .cloned()
            .collect();
        Some(sub)
    }

    /// The newest message of a topic, if any (for "latest value" feeds).
    pub fn latest(&self, id: TopicId) -> Option<Arc<Published>> {
        self.lock().topics.get(&id)?.history.back().cloned()
    }

    pub fn unsubscribe(&self, id: TopicId) {
        let mut inner = self.lock();
        let Some(topic) = inner.topics.get_mut(&id) else {
            return;
        };
        topic.subscribers = topic.subscribers.saturating_sub(1);
        if topic.subscribers == 0 {
            self.unfollow_locked(&mut inner, id);
            lifecycle::went_idle(&mut inner, id, Instant::now());
        }
    }

    /// Forgets the topics idle for the TTL (also done whenever a topic is created).
    pub fn expire_idle(&self) {
        lifecycle::expire(&mut self.lock(), Instant::now());
    }

    /// (topics held, topics forgotten so far).
    pub fn topic_counts(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.topics.len(), inner.forgotten)
    }

    /// Payload bytes in the history of all stream topics (`--history-memory` bounds it).
    pub fn history_bytes(&self) -> usize {
        self.lock().memory.bytes
    }

    /// (name, subscribers, last sequence number) of every topic, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, usize, u64)> {
        let inner = self.lock();
        let mut v: Vec<_> = inner
            .topics
            .values()
            .map(|t| (t.name.to_string(), t.subscribers, t.last_seq))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
