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

mod history;
pub mod listing;
pub mod local;
pub mod mailbox;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::proto::{Compressor, HeaderBuf, MessageKind};
pub use listing::{INDEX_TOPICS, TopicPage};
pub use mailbox::{Inbox, Mailbox};

/// Index of a topic in the hub; stable for the life of the process.
pub type TopicId = u32;

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

/// The frame shapes a subscriber can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// The payload as it was published, in a text or binary frame.
    Raw,
    /// `{"topic":..,"seq":..,"data":..}` in a text frame (the `/ws` protocol).
    Envelope,
}

/// One published message, shared by every worker and subscriber that holds it.
#[derive(Debug)]
pub struct Published {
    pub topic: TopicId,
    pub name: Arc<str>,
    pub seq: u64,
    pub kind: MessageKind,
    pub topic_kind: TopicKind,
    pub payload: Box<[u8]>,
    /// A version stamp the publisher may set (0 when unused): for `file/..` topics, the file's
    /// modification time in nanoseconds, which `/ws/file/{name}?lastMod=` compares against.
    pub stamp: u64,
    /// When it was published (for the delivery latency histogram).
    pub at: std::time::Instant,
    /// Encoded frames: [style][0 = uncompressed, 1..=8 = window bits 8..=15].
    frames: [[OnceLock<Arc<[u8]>>; 9]; 2],
}

impl Published {
    fn new(
        topic: TopicId,
        name: Arc<str>,
        seq: u64,
        kind: MessageKind,
        topic_kind: TopicKind,
        payload: Box<[u8]>,
        stamp: u64,
    ) -> Self {
        Published {
            topic,
            name,
            seq,
            kind,
            topic_kind,
            payload,
            stamp,
            at: std::time::Instant::now(),
            frames: Default::default(),
        }
    }

    /// The message body of a shape, before framing.
    fn body(&self, style: Style) -> (MessageKind, std::borrow::Cow<'_, [u8]>) {
        match style {
            Style::Raw => (self.kind, std::borrow::Cow::Borrowed(&self.payload)),
            Style::Envelope => (MessageKind::Text, std::borrow::Cow::Owned(self.envelope())),
        }
    }

    /// The `/ws` envelope. Text payloads travel as a JSON string; binary ones as base64 with
    /// `"binary":true`.
    pub fn envelope(&self) -> Vec<u8> {
        let data = match (self.kind, std::str::from_utf8(&self.payload)) {
            (MessageKind::Text, Ok(text)) => {
                serde_json::json!({"topic": &*self.name, "seq": self.seq, "data": text})
            }
            _ => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&self.payload);
                serde_json::json!({"topic": &*self.name, "seq": self.seq, "data": b64, "binary": true})
            }
        };
        serde_json::to_vec(&data).expect("JSON of strings and numbers")
    }

    /// The frame for `style`, encoded on first use and shared afterwards. With `deflate`
    /// (window bits and the worker's compressor) the frame is compressed when that is worth it
    /// ([`Compressor::encode`]).
    pub fn frame(&self, style: Style, deflate: Option<(u8, &mut Compressor)>) -> Arc<[u8]> {
        let col = deflate
            .as_ref()
            .map_or(0, |(bits, _)| usize::from(bits.clamp(&8, &15) - 7));
        let slot = &self.frames[style as usize][col];
        slot.get_or_init(|| {
            let (kind, body) = self.body(style);
            let (rsv1, bytes) = match deflate {
                Some((bits, c)) => c.encode(Some(bits), &body),
                None => (false, &body[..]),
            };
            let header = HeaderBuf::new(kind.opcode(), rsv1, None, bytes.len());
            let mut out = Vec::with_capacity(header.as_bytes().len() + bytes.len());
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(bytes);
            out.into()
        })
        .clone()
    }
}

/// The answer to a publish: what `POST /publish/{topic}` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub topic: TopicId,
    pub seq: u64,
    /// Subscribers across all workers when the message was published.
    pub subscribers: usize,
}

/// What a new subscriber gets: the messages to replay and where the live stream starts.
#[derive(Debug)]
pub struct Subscription {
    pub topic: TopicId,
    /// The last sequence number already published; live delivery continues after it.
    pub last_seq: u64,
    /// History to send first (only when `since` was given), oldest first.
    pub replay: Vec<Arc<Published>>,
    /// Set when the history no longer holds everything after `since`: the first sequence
    /// number that is still available (messages between `since` and it are lost).
    pub gap_until: Option<u64>,
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    kind: TopicKind,
    last_seq: u64,
    history: VecDeque<Arc<Published>>,
    history_bytes: usize,
    subscribers: usize,
}

#[derive(Debug, Default)]
struct HubInner {
    by_name: HashMap<Arc<str>, TopicId>,
    topics: Vec<Topic>,
    /// The history of all stream topics together.
    memory: history::Memory,
}

/// Why a publish from a client or backend was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The topic is new and the hub holds its limit of topics.
    TooManyTopics,
    /// A worker's backlog is over its limit: retry after a moment.
    Busy,
}

/// Limits of what clients and backends can make the hub hold.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Topics that names from clients may create.
    pub max_topics: usize,
    /// Bytes ([`mailbox::cost`]) posted to one worker and not yet delivered, past which
    /// refusable publishes are refused ([`Refused::Busy`]).
    pub max_backlog: usize,
    /// Payload bytes of the history of all stream topics together ([`history`]).
    pub history_memory: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_topics: usize::MAX,
            max_backlog: usize::MAX,
            history_memory: usize::MAX,
        }
    }
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
}

impl Hub {
    /// A hub with no limit on topics or backlogs.
    pub fn new(history: HistoryConfig) -> Hub {
        Self::with_limits(history, HubLimits::default())
    }

    /// A hub on which clients may create at most `max_topics` topics (topics are never
    /// forgotten, since their sequence numbers must not restart, so without a cap a client
    /// subscribing to ever new names would grow the hub without bound), and whose refusable
    /// publishes are refused while a worker's backlog is over `max_backlog`.
    pub fn with_limits(history: HistoryConfig, limits: HubLimits) -> Hub {
        Hub {
            inner: Mutex::default(),
            mailboxes: OnceLock::new(),
            history,
            limits,
            max_topics: AtomicUsize::new(limits.max_topics),
            max_backlog: AtomicUsize::new(limits.max_backlog),
        }
    }

    /// Changes the topic and backlog limits of a running hub (a configuration reload). Topics
    /// over a lowered `max_topics` stay; only new names are refused.
    pub fn set_limits(&self, max_topics: usize, max_backlog: usize) {
        self.max_topics.store(max_topics, Ordering::Relaxed);
        self.max_backlog.store(max_backlog, Ordering::Relaxed);
    }

    /// Whether a worker's backlog is over the limit: publishers are pushed back until the
    /// workers catch up.
    pub fn congested(&self) -> bool {
        let max = self.max_backlog.load(Ordering::Relaxed);
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

    /// The id of a topic, creating it on first use. The caller has checked the name. For names
    /// the operator chose (configured feeds); names from clients go through [`Hub::try_topic`].
    pub fn topic(&self, name: &str, kind: TopicKind) -> TopicId {
        Self::intern(&mut self.lock(), name, kind)
    }

    /// [`Hub::topic`], but `None` when the topic is new and the hub already holds its limit.
    pub fn try_topic(&self, name: &str, kind: TopicKind) -> Option<TopicId> {
        let mut inner = self.lock();
        self.try_intern(&mut inner, name, kind)
    }

    fn try_intern(&self, inner: &mut HubInner, name: &str, kind: TopicKind) -> Option<TopicId> {
        if !inner.by_name.contains_key(name)
            && inner.topics.len() >= self.max_topics.load(Ordering::Relaxed)
        {
            return None;
        }
        Some(Self::intern(inner, name, kind))
    }

    /// The id of an existing topic.
    pub fn find(&self, name: &str) -> Option<TopicId> {
        self.lock().by_name.get(name).copied()
    }

    fn intern(inner: &mut HubInner, name: &str, kind: TopicKind) -> TopicId {
        if let Some(&id) = inner.by_name.get(name) {
            return id;
        }
        let id = inner.topics.len() as TopicId;
        let name: Arc<str> = name.into();
        inner.topics.push(Topic {
            name: name.clone(),
            kind,
            last_seq: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            subscribers: 0,
        });
        inner.by_name.insert(name, id);
        id
    }

    /// Publishes a message to a topic (created as a stream topic if new) and hands it to every
    /// worker.
    pub fn publish(&self, name: &str, kind: MessageKind, payload: Box<[u8]>) -> Receipt {
        let mut inner = self.lock();
        let id = Self::intern(&mut inner, name, TopicKind::Stream);
        self.publish_locked(&mut inner, id, kind, payload, 0)
    }

    /// [`Hub::publish`] for names from clients and backends: refused when the topic is new and
    /// the hub already holds its limit of topics, or while a worker's backlog is over its limit.
    pub fn try_publish(
        &self,
        name: &str,
        kind: MessageKind,
        payload: Box<[u8]>,
    ) -> Result<Receipt, Refused> {
        if self.congested() {
            return Err(Refused::Busy);
        }
        let mut inner = self.lock();
        let id = self
            .try_intern(&mut inner, name, TopicKind::Stream)
            .ok_or(Refused::TooManyTopics)?;
        Ok(self.publish_locked(&mut inner, id, kind, payload, 0))
    }

    /// Publishes to a topic by id.
    pub fn publish_id(&self, id: TopicId, kind: MessageKind, payload: Box<[u8]>) -> Receipt {
        let mut inner = self.lock();
        self.publish_locked(&mut inner, id, kind, payload, 0)
    }

    /// Publishes to a topic by id with a version stamp ([`Published::stamp`]).
    pub fn publish_stamped(
        &self,
        id: TopicId,
        kind: MessageKind,
        payload: Box<[u8]>,
        stamp: u64,
    ) -> Receipt {
        let mut inner = self.lock();
        self.publish_locked(&mut inner, id, kind, payload, stamp)
    }

    fn publish_locked(
        &self,
        inner: &mut HubInner,
        id: TopicId,
        kind: MessageKind,
        payload: Box<[u8]>,
        stamp: u64,
    ) -> Receipt {
        let topic = &mut inner.topics[id as usize];
        topic.last_seq += 1;
        let msg = Arc::new(Published::new(
            id,
            topic.name.clone(),
            topic.last_seq,
            kind,
            topic.kind,
            payload,
            stamp,
        ));
        let seq = topic.last_seq;
        let subscribers = topic.subscribers;
        history::append(
            inner,
            &self.history,
            self.limits.history_memory,
            msg.clone(),
        );
        let receipt = Receipt {
            topic: id,
            seq,
            subscribers,
        };
        // Posted under the lock, so every worker sees one topic's messages in sequence order.
        if let Some(mailboxes) = self.mailboxes.get() {
            for m in mailboxes {
                m.post(msg.clone());
            }
        }
        receipt
    }

    /// Registers a subscriber. With `since`, the messages after it that the history still holds
    /// are returned for replay.
    pub fn subscribe(&self, id: TopicId, since: Option<u64>) -> Subscription {
        let mut inner = self.lock();
        let topic = &mut inner.topics[id as usize];
        topic.subscribers += 1;
        let mut sub = Subscription {
            topic: id,
            last_seq: topic.last_seq,
            replay: Vec::new(),
            gap_until: None,
        };
        if let Some(since) = since {
            let since = since.min(topic.last_seq);
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
        }
        sub
    }

    /// The newest message of a topic, if any (for "latest value" feeds).
    pub fn latest(&self, id: TopicId) -> Option<Arc<Published>> {
        self.lock().topics[id as usize].history.back().cloned()
    }

    pub fn unsubscribe(&self, id: TopicId) {
        let mut inner = self.lock();
        let topic = &mut inner.topics[id as usize];
        topic.subscribers = topic.subscribers.saturating_sub(1);
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
            .iter()
            .map(|t| (t.name.to_string(), t.subscribers, t.last_seq))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
