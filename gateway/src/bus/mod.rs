//! The cluster bus (`--bus redis://HOST:PORT[/DB]`): topics shared by every gateway connected
//! to one Redis, on one machine or many.
//!
//! Two threads per node, each with its own connections, so a slow or absent Redis never
//! blocks a worker:
//! - the publisher ([`publisher`]) takes publishes from a bounded queue, and sends each batch
//!   as one pipeline of script calls ([`wire::PUBLISH_SCRIPT`]): Redis numbers the message,
//!   appends it to the topic's history and publishes it on the topic's channel, atomically;
//!   the answer (epoch, seq) goes back to the worker that asked, through its mailbox;
//! - the subscriber ([`subscriber`]) holds the node's one pub/sub connection, on its own mio
//!   `Poll`: it subscribes to the topics this node follows, and hands every message to the
//!   hub ([`Hub::apply`]), which delivers it as a local publish would. After a subscription
//!   is confirmed (or after a reconnect) it reads the topic's epoch, last number and history
//!   on a second connection ([`wire::SYNC_SCRIPT`]) before reading on, so that a subscriber
//!   told `subscribed` misses nothing published afterwards, on any node.
//!
//! The redis crate's synchronous API is used for the publisher and the subscriber's reads
//! (pipelines, script calls, timeouts); the pub/sub socket is read by the subscriber's own
//! loop, because it must also take requests from the workers at any moment, and parsed with
//! the redis crate's parser once [`wire::frame_len`] says a reply is complete.
//!
//! Faults: every Redis call has a 700 ms timeout; a lost connection fails the requests in
//! flight (503 for `POST /publish`, an `error` on `/ws`), and is retried with backoff and
//! jitter (100 ms doubling to 2 s). Publishes are refused at once while the bus is down, and
//! while the queue holds `--max-backlog` bytes.

pub mod publisher;
mod shards;
pub mod subscriber;
pub mod wire;

pub use shards::{Cluster, shard_of};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::proto::MessageKind;
use crate::server::histogram::Histogram;
use crate::topics::{Epoch, HistoryConfig, Hub, TopicId};

/// Where a worker waits for an answer: its index, and its own number for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub worker: usize,
    pub wait: u64,
}

/// An answer of the bus to a worker.
#[derive(Debug)]
pub struct BusReply {
    pub wait: u64,
    pub outcome: Outcome,
    /// For a follow with `since` that this node's history could not serve: the messages after
    /// `since` that Redis's history held (oldest first; empty otherwise).
    pub history: Vec<Arc<crate::topics::Published>>,
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The topic is followed and in step: the subscriber can be joined.
    Followed,
    /// Numbered and published: the epoch and number, and how many nodes follow the topic.
    Published { epoch: Epoch, seq: u64, nodes: u64 },
    /// The bus could not do it (unreachable, timed out): the reason.
    Failed(&'static str),
}

/// A publish to send through the bus.
#[derive(Debug)]
pub struct Publish {
    pub topic: Arc<str>,
    pub kind: MessageKind,
    pub payload: Box<[u8]>,
    pub stamp: u64,
    /// A latest-value topic: Redis keeps one message of its history.
    pub latest: bool,
    /// Who to tell the number (`None`: nobody waits; chat and feeds).
    pub reply: Option<ReplyTo>,
    /// A thread waiting for the outcome (a file feed, which offers its version again if it
    /// failed).
    pub done: Option<Sender<Outcome>>,
}

impl Publish {
    /// A publish of a stream topic's message that nobody waits for; the fields say otherwise.
    pub fn new(topic: Arc<str>, kind: MessageKind, payload: Box<[u8]>) -> Publish {
        Publish {
            topic,
            kind,
            payload,
            stamp: 0,
            latest: false,
            reply: None,
            done: None,
        }
    }
}

/// A publish in the queue, with when it was queued (it fails rather than wait past
/// [`publisher::MAX_WAIT`]).
#[derive(Debug)]
pub(crate) struct Queued {
    pub p: Publish,
    pub at: Instant,
}

/// Why a publish was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Redis is unreachable.
    Down,
    /// The queue to Redis is full: retry in a moment.
    Busy,
}

/// What the subscriber thread is asked.
#[derive(Debug)]
pub(crate) enum Follow {
    Follow {
        id: TopicId,
        name: Arc<str>,
        reply: Option<ReplyTo>,
        /// Read Redis's history after this number for the reply.
        since: Option<u64>,
    },
    Unfollow {
        id: TopicId,
        name: Arc<str>,
    },
}

/// Counters and histograms of the bus, for `/metrics`.
#[derive(Debug, Default)]
pub struct BusStats {
    pub publishes_total: AtomicU64,
    pub publish_failures_total: AtomicU64,
    pub publish_refused_total: AtomicU64,
    pub received_total: AtomicU64,
    pub errors_total: AtomicU64,
    pub reconnects_total: AtomicU64,
    pub syncs_total: AtomicU64,
    pub gaps_total: AtomicU64,
    pub resets_total: AtomicU64,
    /// One pipeline of publishes, from sending to the last answer (the publisher writes it).
    pub round_trip: Histogram,
    /// From the publishing node's clock to the message reaching this node's hub (the
    /// subscriber writes it).
    pub lag: Histogram,
}

/// One Redis of a node's bus (a shard: with several `--bus`, topics are spread over them,
/// [`Cluster`]).
#[derive(Debug)]
pub struct Bus {
    client: redis::Client,
    /// This shard's place among the node's shards, and how many there are: the shard owns the
    /// topics [`shard_of`] gives it.
    index: usize,
    of: usize,
    /// The URL without a password, for logs and `/healthz`.
    pub shown: String,
    pub history: HistoryConfig,
    /// Seconds a topic's keys live in Redis after its last publish.
    pub ttl_secs: u64,
    publish_tx: Sender<Queued>,
    publish_rx: Receiver<Queued>,
    /// Payload bytes queued for the publisher, against `max_queued`.
    queued: AtomicUsize,
    max_queued: usize,
    follow_tx: Sender<Follow>,
    follow_rx: Receiver<Follow>,
    subscriber_waker: OnceLock<Arc<mio::Waker>>,
    /// Each thread's connection is up.
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    /// Since when the bus has not been fully connected (`None`: it is).
    down_since: Mutex<Option<Instant>>,
    pub stats: BusStats,
    pub stop: AtomicBool,
    /// This node's name in Redis's `CLIENT LIST` (`gw-ADDR-pub`, `-sub`, `-sync`), so an
    /// operator sees which gateway holds which connection.
    node: OnceLock<String>,
}

/// Publishes queued for the publisher at most (beyond the bytes bound).
const QUEUE: usize = 16 * 1024;
/// Every Redis call's timeout, and the connect timeout: a publish queued just as a call to a
/// hung Redis starts is failed after at most two of these (that call, then the reconnect's
/// first call), inside the 2 s promised to `POST /publish`.
pub const IO_TIMEOUT: Duration = Duration::from_millis(700);
/// How long keys live in Redis after a topic's last publish.
pub const TTL_SECS: u64 = 24 * 3600;

impl Bus {
    /// A bus to `url` (checked now; connected by [`Bus::start`]). Publishes are refused while
    /// `max_queued` payload bytes wait for Redis.
    pub fn new(
        url: &str,
        history: HistoryConfig,
        max_queued: usize,
        (index, of): (usize, usize),
    ) -> Result<Arc<Bus>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--bus {url}: {e}"))?;
        let shown = shown_url(url);
        let (publish_tx, publish_rx) = crossbeam_channel::bounded(QUEUE);
        let (follow_tx, follow_rx) = crossbeam_channel::unbounded();
        Ok(Arc::new(Bus {
            client,
            index,
            of: of.max(1),
            shown,
            history,
            ttl_secs: TTL_SECS,
            publish_tx,
            publish_rx,
            queued: AtomicUsize::new(0),
            max_queued,
            follow_tx,
            follow_rx,
            subscriber_waker: OnceLock::new(),
            publisher_up: AtomicBool::new(false),
            subscriber_up: AtomicBool::new(false),
            down_since: Mutex::new(Some(Instant::now())),
            stats: BusStats::default(),
            stop: AtomicBool::new(false),
            node: OnceLock::new(),
        }))
    }

    /// Starts the publisher and subscriber threads, delivering into `hub`; `node` names this
    /// gateway's connections in Redis (its listening address).
    pub fn start(self: &Arc<Self>, hub: Arc<Hub>, node: &str) -> std::io::Result<()> {
        let _ = self.node.set(node.replace(char::is_whitespace, "_"));
        let bus = self.clone();
        let h = hub.clone();
        std::thread::Builder::new()
            .name("bus-publisher".into())
            .spawn(move || publisher::run(&bus, &h))?;
        let sub = subscriber::Subscriber::new(self.clone(), hub)?;
        let _ = self.subscriber_waker.set(sub.waker());
        std::thread::Builder::new()
            .name("bus-subscriber".into())
            .spawn(move || sub.run())?;
        Ok(())
    }

    /// Stops both threads (they close their connections).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake_subscriber();
    }

    /// Queues a publish; refused at once while Redis is unreachable or the queue is full.
    pub fn publish(&self, p: Publish) -> Result<(), Refusal> {
        if !self.publisher_up.load(Ordering::Relaxed) {
            self.stats
                .publish_refused_total
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Down);
        }
        let len = p.payload.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > self.max_queued {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.stats
                .publish_refused_total
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Busy);
        }
        let queued = Queued {
            p,
            at: Instant::now(),
        };
        self.publish_tx.try_send(queued).map_err(|_| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.stats
                .publish_refused_total
                .fetch_add(1, Ordering::Relaxed);
            Refusal::Busy
        })
    }

    /// Asks the subscriber to follow a topic; with `reply`, the worker is answered once it is
    /// in step (or failed), with `since`, with what Redis's history holds after it.
    pub fn follow(&self, id: TopicId, name: Arc<str>, reply: Option<ReplyTo>, since: Option<u64>) {
        let _ = self.follow_tx.send(Follow::Follow {
            id,
            name,
            reply,
            since,
        });
        self.wake_subscriber();
    }

    /// Asks the subscriber to stop following a topic.
    pub fn unfollow(&self, id: TopicId, name: Arc<str>) {
        let _ = self.follow_tx.send(Follow::Unfollow { id, name });
        self.wake_subscriber();
    }

    /// `CLIENT SETNAME gw-NODE-ROLE` for one of this node's connections.
    pub(crate) fn client_name(&self, role: &str) -> redis::Cmd {
        let node = self.node.get().map_or("gateway", String::as_str);
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("SETNAME").arg(format!("gw-{node}-{role}"));
        cmd
    }

    fn wake_subscriber(&self) {
        if let Some(w) = self.subscriber_waker.get() {
            let _ = w.wake();
        }
    }

    /// Whether this shard carries `topic`.
    pub fn owns(&self, topic: &str) -> bool {
        shard_of(topic, self.of) == self.index
    }

    /// Whether both connections are up.
    pub fn connected(&self) -> bool {
        self.publisher_up.load(Ordering::Relaxed) && self.subscriber_up.load(Ordering::Relaxed)
    }

    /// How long the bus has not been fully connected (`None`: it is).
    pub fn down_for(&self) -> Option<Duration> {
        let since = *self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        since.map(|t| t.elapsed())
    }

    fn set_up(&self, flag: &AtomicBool, up: bool) {
        flag.store(up, Ordering::Relaxed);
        let mut since = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if self.connected() {
            *since = None;
        } else if since.is_none() {
            *since = Some(Instant::now());
        }
    }

    /// Payload bytes waiting for the publisher.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// The URL with any password replaced.
fn shown_url(url: &str) -> String {
    crate::cli::layers::without_password(url)
}

/// Milliseconds since the Unix epoch (the wall clock every node stamps messages with).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Waits out a reconnect backoff: 100 ms doubling to 2 s, with up to 50 % jitter.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 100u64 << attempt.min(5);
    let base = base.min(2000);
    let jitter =
        crate::proto::Rng::new(unix_millis() ^ u64::from(attempt)).next_u64() % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            shown_url("redis://:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(
            shown_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn backoff_grows_to_two_seconds_with_jitter() {
        assert!(
            backoff(0) >= Duration::from_millis(50) && backoff(0) <= Duration::from_millis(100)
        );
        for a in 5..10 {
            let b = backoff(a);
            assert!(
                b >= Duration::from_millis(1000) && b <= Duration::from_millis(2000),
                "{b:?}"
            );
        }
    }

    #[test]
    fn bad_urls_are_refused_naming_the_flag() {
        let e = Bus::new("http://x", HistoryConfig::default(), 1 << 20, (0, 1)).unwrap_err();
        assert!(e.starts_with("--bus http://x"), "{e}");
    }
}
