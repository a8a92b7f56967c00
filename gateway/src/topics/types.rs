//! The hub's plain types: what a publish is answered, where a subscriber resumes, what it is
//! given, why a request was refused, and the limits clients and backends meet.

use std::sync::Arc;
use std::time::Duration;

use super::{Epoch, Published, TopicId};

/// The answer to a publish: what `POST /publish/{topic}` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub topic: TopicId,
    pub seq: u64,
    /// The numbering `seq` belongs to.
    pub epoch: Epoch,
    /// Subscribers across all workers when the message was published.
    pub subscribers: usize,
}

/// Where a `/ws` subscriber says it left off: the last sequence number it got, and the epoch
/// that number belongs to (if it knows it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume<'a> {
    pub since: Option<u64>,
    pub epoch: Option<&'a str>,
}

impl Resume<'_> {
    /// From `since` only (feeds, tests).
    pub fn since(since: Option<u64>) -> Resume<'static> {
        Resume { since, epoch: None }
    }
}

/// What a new subscriber gets: the messages to replay and where the live stream starts.
#[derive(Debug)]
pub struct Subscription {
    pub topic: TopicId,
    /// The last sequence number already published; live delivery continues after it.
    pub last_seq: u64,
    pub epoch: Epoch,
    /// History to send first (only when `since` was given), oldest first.
    pub replay: Vec<Arc<Published>>,
    /// Set when the history no longer holds everything after `since`: the first sequence
    /// number that is still available (messages between `since` and it are lost).
    pub gap_until: Option<u64>,
    /// The `since` given belongs to another numbering (another epoch, or beyond the last
    /// sequence number): nothing is replayed and the client is told to start over.
    pub reset: bool,
}

/// Why a publish or subscription from a client or backend was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The topic is new and the hub holds its limit of topics.
    TooManyTopics,
    /// The topic is new and the connection asking has used up its allowance of new topics.
    CreateRate,
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
    /// How long a topic with no subscriber and no publish is kept ([`lifecycle`]).
    pub topic_ttl: Duration,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_topics: usize::MAX,
            max_backlog: usize::MAX,
            history_memory: usize::MAX,
            topic_ttl: Duration::MAX,
        }
    }
}
