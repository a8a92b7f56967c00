//! The history kept for `since` recovery: each topic's own bounds (messages, bytes; a latest-
//! value topic keeps one message) and the cap on the history of all topics together
//! (`--history-memory`).
//!
//! Without the cap, history memory would be bounded only by topics x per-topic bytes (100,000 x
//! 1 MiB). With it, once the stream topics' history payload passes the cap, the oldest history
//! across topics goes first: a global queue of (topic, seq) in publish order says which message
//! is oldest. A message that has left its topic's history for the topic's own bounds leaves a
//! stale entry in that queue; stale entries are skipped when they reach its front, and dropped
//! all at once when they outnumber the live ones (so the queue stays within twice the live
//! messages, and each publish costs O(1) amortized). A `since` that needed evicted history is
//! told of the `gap` as before. File feeds' latest values are not counted: the operator sets
//! their number, and each is needed by every new subscriber.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{HistoryConfig, HubInner, Published, Topic, TopicId, TopicKind};

/// The accounting of all stream topics' history.
#[derive(Debug, Default)]
pub(super) struct Memory {
    /// Payload bytes held.
    pub bytes: usize,
    /// Messages held.
    live: usize,
    /// (topic, seq) of every message appended to a stream topic's history, oldest first,
    /// including stale ones (see the module doc).
    order: VecDeque<(TopicId, u64)>,
}

/// Stale entries the queue may hold beyond the live ones before a compaction.
const SLACK: usize = 1024;

/// Appends `msg` to its topic's history, then trims it to the topic's bounds and all history to
/// `cap` bytes.
pub(super) fn append(
    inner: &mut HubInner,
    per_topic: &HistoryConfig,
    cap: usize,
    msg: Arc<Published>,
) {
    let HubInner { topics, memory, .. } = inner;
    let Some(topic) = topics.get_mut(&msg.topic) else {
        return;
    };
    let counted = topic.kind == TopicKind::Stream;
    let len = msg.payload.len();
    if counted {
        memory.bytes += len;
        memory.live += 1;
        memory.order.push_back((msg.topic, msg.seq));
    }
    topic.history_bytes += len;
    topic.history.push_back(msg);
    // A "latest value" topic keeps only its newest message: older versions are worth
    // nothing to anyone (a `since` subscriber is told of the gap and gets the newest).
    while topic.history.len() > 1
        && (topic.kind == TopicKind::Latest
            || topic.history.len() > per_topic.messages
            || topic.history_bytes > per_topic.bytes)
    {
        let old = topic.history.pop_front().expect("non-empty history");
        topic.history_bytes -= old.payload.len();
        if counted {
            memory.bytes -= old.payload.len();
            memory.live -= 1;
        }
    }
    evict_oldest(inner, cap);
    compact(inner);
}

/// Takes a forgotten topic's history out of the accounting (its queue entries are stale now).
pub(super) fn release(memory: &mut Memory, topic: &Topic) {
    if topic.kind == TopicKind::Stream {
        memory.bytes -= topic.history_bytes;
        memory.live -= topic.history.len();
    }
}

/// Drops the oldest history across topics until all of it fits in `cap` bytes.
fn evict_oldest(inner: &mut HubInner, cap: usize) {
    let HubInner { topics, memory, .. } = inner;
    while memory.bytes > cap {
        let Some((id, seq)) = memory.order.pop_front() else {
            break;
        };
        // Still there only if it is the topic's oldest (older ones left first); else stale
        // (or its topic was forgotten).
        let Some(topic) = topics.get_mut(&id) else {
            continue;
        };
        if topic.history.front().is_some_and(|m| m.seq == seq) {
            let old = topic.history.pop_front().expect("checked above");
            topic.history_bytes -= old.payload.len();
            memory.bytes -= old.payload.len();
            memory.live -= 1;
        }
    }
}

/// Drops the stale entries of the queue once they outnumber the live ones.
fn compact(inner: &mut HubInner) {
    let HubInner { topics, memory, .. } = inner;
    if memory.order.len() <= 2 * memory.live + SLACK {
        return;
    }
    // A topic's history holds consecutive sequence numbers from its front on.
    memory.order.retain(|&(id, seq)| {
        topics
            .get(&id)
            .and_then(|t| t.history.front())
            .is_some_and(|m| m.seq <= seq)
    });
}

#[cfg(test)]
mod tests {
    use crate::proto::MessageKind;
    use crate::topics::{HistoryConfig, Hub, HubLimits, Resume, TopicKind};

    fn hub(cap: usize) -> Hub {
        let limits = HubLimits {
            history_memory: cap,
            ..HubLimits::default()
        };
        Hub::with_limits(HistoryConfig::default(), limits)
    }

    #[test]
    fn the_oldest_history_across_topics_goes_first() {
        let hub = hub(100);
        for (topic, n) in [("a", 40), ("b", 40), ("a", 40), ("c", 40)] {
            hub.publish(topic, MessageKind::Binary, vec![0; n].into());
        }
        // 160 bytes published, cap 100: a's first and b's message went, oldest first.
        assert_eq!(hub.history_bytes(), 80);
        let a = hub
            .subscribe(hub.topic("a", TopicKind::Stream), Resume::since(Some(0)))
            .unwrap();
        assert_eq!((a.replay.len(), a.gap_until), (1, Some(2)));
        let b = hub
            .subscribe(hub.topic("b", TopicKind::Stream), Resume::since(Some(0)))
            .unwrap();
        assert_eq!((b.replay.len(), b.gap_until), (0, Some(2)));
        let c = hub
            .subscribe(hub.topic("c", TopicKind::Stream), Resume::since(Some(0)))
            .unwrap();
        assert_eq!((c.replay.len(), c.gap_until), (1, None));
    }

    #[test]
    fn stale_entries_do_not_pile_up_and_latest_values_are_not_counted() {
        let hub = Hub::with_limits(
            HistoryConfig {
                messages: 2,
                bytes: 1 << 20,
            },
            HubLimits {
                history_memory: 1 << 20,
                ..HubLimits::default()
            },
        );
        let file = hub.topic("file/x", TopicKind::Latest);
        for _ in 0..10_000 {
            hub.publish("t", MessageKind::Binary, vec![0; 10].into());
            hub.publish_id(file, MessageKind::Binary, vec![0; 10].into());
        }
        assert_eq!(hub.history_bytes(), 20);
        let order = hub.lock().memory.order.len();
        assert!(order <= 2 * 2 + super::SLACK + 1, "{order} queue entries");
        assert!(hub.latest(file).is_some());
    }
}
