//! The life of a topic: its epoch, and forgetting it once it is idle.
//!
//! A topic nobody follows and nobody has published to for `--topic-ttl` is forgotten: its name,
//! sequence numbers and history go, so a client churning through names cannot hold the hub's
//! `--max-topics` for good. Operator topics (configured file and log feeds) are pinned and never
//! forgotten. Idle topics wait in a queue in the order they went idle (created, or lost their
//! last subscriber); a publish or subscribe in the meantime is noticed when the entry reaches the
//! front, so each topic is in the queue at most once and each check is O(1) amortized. A topic
//! is forgotten between one and two TTLs after it went quiet.
//!
//! A forgotten topic's id names no later topic (its slot's generation moves on, [`super::table`]):
//! a message still in a worker's mailbox for it, or a subscription racing the forgetting, can
//! only miss, never reach the wrong topic. A re-created topic restarts its sequence numbers under
//! a new id, and so a new epoch: the epoch is a keyed hash of the id with a key drawn at random
//! when the process starts, unique across re-creation and restarts.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

use super::{HubInner, TopicId};

/// A topic's epoch: which numbering its sequence numbers belong to. Shown as 12 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64);

impl Epoch {
    /// The epoch of topic `id` in a hub whose key is `key`.
    pub(super) fn of(key: u64, id: TopicId) -> Epoch {
        // splitmix64 of the keyed id: distinct ids give distinct values, spread over 48 bits.
        let mut z = key ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Epoch((z ^ (z >> 31)) & 0xffff_ffff_ffff)
    }

    /// An epoch from its 12 hex digits (as the bus keeps it).
    pub fn parse(text: &str) -> Option<Epoch> {
        if text.len() != 12 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(Epoch)
    }

    /// A new random epoch (the bus starts a topic's numbering with one).
    pub fn random() -> Epoch {
        Epoch(random_key() & 0xffff_ffff_ffff)
    }

    /// Whether a client's `epoch` names this one.
    pub fn matches(self, text: &str) -> bool {
        text.len() == 12 && u64::from_str_radix(text, 16).is_ok_and(|v| v == self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

/// A random key for this process's epochs.
pub(crate) fn random_key() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

/// Queues a topic that just went idle (created, or lost its last subscriber), unless pinned or
/// already queued.
pub(super) fn went_idle(inner: &mut HubInner, id: TopicId, now: Instant) {
    let Some(t) = inner.topics.get_mut(&id) else {
        return;
    };
    t.last_active = now;
    if !t.pinned && !t.queued {
        t.queued = true;
        inner.idle.push_back((id, now));
    }
}

/// Forgets the topics idle for the TTL: no subscriber, no publish.
pub(super) fn expire(inner: &mut HubInner, now: Instant) {
    let ttl = inner.ttl;
    while let Some(&(id, at)) = inner.idle.front() {
        if now.saturating_duration_since(at) < ttl {
            break;
        }
        inner.idle.pop_front();
        let Some(t) = inner.topics.get_mut(&id) else {
            continue;
        };
        t.queued = false;
        if t.subscribers > 0 || t.pinned {
            // Queued again when its last subscriber leaves.
            continue;
        }
        if now.saturating_duration_since(t.last_active) < ttl {
            // Published to since: look again a TTL after that.
            t.queued = true;
            let last = t.last_active;
            inner.idle.push_back((id, last));
            continue;
        }
        forget(inner, id);
    }
}

/// Removes a topic and frees its history.
fn forget(inner: &mut HubInner, id: TopicId) {
    let Some(t) = inner.topics.remove(&id) else {
        return;
    };
    inner.by_name.remove(&t.name);
    super::history::release(&mut inner.memory, &t);
    inner.forgotten += 1;
}
