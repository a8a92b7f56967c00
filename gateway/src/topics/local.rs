//! One worker's subscriber table: which of its connections listen to which topic.
//!
//! Only the owning worker touches it, so delivery takes no lock. Each subscription remembers the
//! last sequence number it was given, which makes delivery exactly-once across the hand-over
//! from history replay to the live stream: a live message the subscriber already got from the
//! replay is skipped.
//!
//! Subscriptions are kept by topic slot ([`super::slot_of`]), which is unique among live topics,
//! with the topic's full id: a message still in the mailbox for a forgotten topic whose slot a
//! later topic took has another id, and is not delivered to the later topic's subscribers.

use std::collections::HashMap;

use super::{Published, Style, TopicId, slot_of};
use crate::server::ConnId;

/// One subscription of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    pub conn: ConnId,
    pub last_seq: u64,
    pub style: Style,
}

/// The worker's subscriptions, by topic slot: (the topic's id, its subscriptions).
#[derive(Debug, Default)]
pub struct LocalTopics {
    topics: HashMap<u32, (TopicId, Vec<Sub>)>,
}

impl LocalTopics {
    /// Adds a subscription to a live topic (one the hub just registered it with).
    pub fn add(&mut self, topic: TopicId, sub: Sub) {
        let entry = self
            .topics
            .entry(slot_of(topic))
            .or_insert_with(|| (topic, Vec::new()));
        // The slot's earlier topic is gone with all its subscriptions (they had to go for it to
        // be forgotten), so an entry of another id can only be empty; replaced to be sure.
        if entry.0 != topic {
            *entry = (topic, Vec::new());
        }
        entry.1.push(sub);
    }

    /// The id of the live topic in `slot` that this worker has subscriptions to.
    pub fn id_of_slot(&self, slot: u32) -> Option<TopicId> {
        self.topics.get(&slot).map(|e| e.0)
    }

    /// Removes a connection's subscription; returns whether it was there.
    pub fn remove(&mut self, topic: TopicId, conn: ConnId) -> bool {
        let Some((_, subs)) = self
            .topics
            .get_mut(&slot_of(topic))
            .filter(|e| e.0 == topic)
        else {
            return false;
        };
        let Some(i) = subs.iter().position(|s| s.conn == conn) else {
            return false;
        };
        subs.swap_remove(i);
        if subs.is_empty() {
            self.topics.remove(&slot_of(topic));
        }
        true
    }

    /// Collects the subscriptions that have not seen `msg` yet into `due`, and marks them as
    /// having seen it.
    pub fn deliver(&mut self, msg: &Published, due: &mut Vec<Sub>) {
        let Some((_, subs)) = self
            .topics
            .get_mut(&slot_of(msg.topic))
            .filter(|e| e.0 == msg.topic)
        else {
            return;
        };
        if msg.control == super::Control::Reset {
            // A new numbering: everyone is told, and continues after its `seq`.
            for s in subs.iter_mut() {
                s.last_seq = msg.seq;
                due.push(*s);
            }
            return;
        }
        for s in subs.iter_mut() {
            if s.last_seq < msg.seq {
                s.last_seq = msg.seq;
                due.push(*s);
            }
        }
    }

    /// Subscriptions on this worker to `topic`.
    pub fn count(&self, topic: TopicId) -> usize {
        self.topics
            .get(&slot_of(topic))
            .filter(|e| e.0 == topic)
            .map_or(0, |e| e.1.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MessageKind;
    use crate::topics::{HistoryConfig, Hub, Resume, TopicKind};

    #[test]
    fn exactly_once_across_replay_and_live() {
        let hub = Hub::new(HistoryConfig::default());
        let id = hub.topic("chat/a", TopicKind::Stream);
        for _ in 0..3 {
            hub.publish_id(id, MessageKind::Text, b"m".to_vec().into());
        }
        let mut local = LocalTopics::default();
        // Subscribed after seq 3 with since = 1: the replay brings 2 and 3.
        let sub = hub.subscribe(id, Resume::since(Some(1))).unwrap();
        assert_eq!(sub.replay.len(), 2);
        local.add(
            id,
            Sub {
                conn: ConnId::new(1, 1),
                last_seq: sub.last_seq,
                style: Style::Raw,
            },
        );
        local.add(
            id,
            Sub {
                conn: ConnId::new(2, 1),
                last_seq: 1,
                style: Style::Envelope,
            },
        );
        let m3 = hub.latest(id).unwrap();
        let mut due = Vec::new();
        // Message 3 arriving late from the channel is not delivered twice to subscriber 1.
        local.deliver(&m3, &mut due);
        assert_eq!(due.iter().map(|s| s.conn.slot).collect::<Vec<_>>(), [2]);
        hub.publish_id(id, MessageKind::Text, b"m".to_vec().into());
        due.clear();
        local.deliver(&hub.latest(id).unwrap(), &mut due);
        assert_eq!(due.len(), 2);
        assert!(local.remove(id, ConnId::new(1, 1)));
        assert!(!local.remove(id, ConnId::new(1, 1)));
        assert_eq!(local.count(id), 1);
    }

    /// A message still in the mailbox for a forgotten topic is not delivered to the later topic
    /// that took its slot, though its sequence number is one the new subscriber has not seen.
    #[test]
    fn a_message_of_a_forgotten_topic_misses_the_topic_in_its_slot() {
        let limits = crate::topics::HubLimits {
            topic_ttl: std::time::Duration::ZERO,
            ..crate::topics::HubLimits::default()
        };
        let hub = Hub::with_limits(HistoryConfig::default(), limits);
        let old = hub.publish("t", MessageKind::Text, b"old".to_vec().into());
        let in_flight = hub.latest(old.topic).unwrap();
        hub.expire_idle();
        assert_eq!(hub.find("t"), None);
        let (sub, created) = hub
            .join("t", TopicKind::Stream, Resume::default(), true)
            .unwrap();
        assert!(created && sub.topic != old.topic);
        assert_eq!(
            slot_of(sub.topic),
            slot_of(old.topic),
            "the slot was reused"
        );
        let mut local = LocalTopics::default();
        let s = Sub {
            conn: ConnId::new(1, 1),
            last_seq: sub.last_seq,
            style: Style::Envelope,
        };
        local.add(sub.topic, s);
        let mut due = Vec::new();
        local.deliver(&in_flight, &mut due);
        assert!(due.is_empty(), "the old message is not delivered");
        assert!(!local.remove(old.topic, ConnId::new(1, 1)));
        let new = hub.publish("t", MessageKind::Text, b"new".to_vec().into());
        local.deliver(&hub.latest(new.topic).unwrap(), &mut due);
        assert_eq!(due.len(), 1);
    }
}
