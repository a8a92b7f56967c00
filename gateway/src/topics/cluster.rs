//! The hub's side of the cluster bus (`--bus`, [`crate::bus`]).
//!
//! With a bus the hub is this node's mirror of topics that Redis numbers: a publish from here
//! goes to the bus, and comes back on the topic's channel to every node that follows the topic,
//! this one included; [`Hub::apply`] then appends it with the sequence number Redis gave it and
//! posts it to the workers as a local publish would. So every node delivers a topic's messages
//! in the same order, with the same numbers.
//!
//! A node follows (subscribes on Redis to) exactly the topics that have subscribers here, plus
//! the pinned feed topics. A topic's [`Follow`] state goes `Off` → `Pending` when its first
//! subscriber arrives (the subscriber waits: [`Joined::Wait`]) → `Ready` when the bus has
//! confirmed the Redis subscription and read the topic's epoch, last number and history
//! ([`Hub::synced`]); from then on joins are immediate. It goes back to `Off` when the last
//! subscriber leaves, and the bus unsubscribes.
//!
//! [`Hub::synced`] is also how a node catches up after missing messages (a reconnect, or a
//! message on the channel that is not the next number): messages the bus's history still
//! holds are appended in order; missing ones become a `gap` notice; another epoch (Redis lost
//! the topic) clears the local history and sends a `reset` notice, then the new stream.

use std::sync::Arc;
use std::time::Instant;

use super::{
    Control, Epoch, Hub, HubInner, Published, Refused, Resume, Subscription, TopicId, TopicKind,
    history,
};
use crate::bus::{BusReply, Cluster, wire};

/// Whether this node follows a topic on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Not subscribed on Redis (no subscriber here).
    Off,
    /// Subscribed; waiting for the confirmation and the topic's state.
    Pending,
    /// Subscribed and in step: local joins are immediate.
    Ready,
}

/// A join on a node with a bus.
#[derive(Debug)]
pub enum Joined {
    /// The topic is followed: subscribed now.
    Now(Subscription),
    /// The subscriber is counted; the caller asks the bus to follow the topic and finishes
    /// with [`Hub::finish_join`] when it answers (or leaves with [`Hub::unsubscribe`]).
    Wait(TopicId),
}

/// What became of a message from the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Appended and posted to the workers.
    Delivered,
    /// A number already held (the bus's history read on follow had it).
    Duplicate,
    /// Not a topic this node follows (any more).
    Ignored,
    /// Not the next number, or another epoch: the topic must be synced ([`Hub::synced`]).
    Behind,
}

impl Hub {
    /// Connects the bus; called once, before the workers start. Pinned topics are followed.
    pub fn set_bus(&self, bus: Arc<Cluster>) {
        if self.bus.set(bus).is_err() {
            return;
        }
        let mut inner = self.lock();
        let pinned: Vec<TopicId> = inner
            .topics
            .iter()
            .filter(|(_, t)| t.pinned)
            .map(|(id, _)| id)
            .collect();
        for id in pinned {
            self.follow_locked(&mut inner, id);
        }
    }

    /// The bus, with `--bus`.
    pub fn bus(&self) -> Option<&Arc<Cluster>> {
        self.bus.get()
    }

    /// Follows a topic on the bus (no reply asked), if there is a bus and it is not followed.
    pub(super) fn follow_locked(&self, inner: &mut HubInner, id: TopicId) {
        let Some(bus) = self.bus.get() else { return };
        let Some(t) = inner.topics.get_mut(&id) else {
            return;
        };
        if t.follow == Follow::Off {
            t.follow = Follow::Pending;
            bus.follow(id, t.name.clone(), None, None);
        }
    }

    /// Stops following a topic that lost its last subscriber (feeds' topics stay followed).
    pub(super) fn unfollow_locked(&self, inner: &mut HubInner, id: TopicId) {
        let Some(bus) = self.bus.get() else { return };
        let Some(t) = inner.topics.get_mut(&id) else {
            return;
        };
        if t.follow != Follow::Off && !t.pinned {
            t.follow = Follow::Off;
            bus.unfollow(id, t.name.clone());
        }
    }

    /// [`Hub::join`] for any node: immediate without a bus or if the topic is followed,
    /// otherwise the subscriber is counted and waits for the bus.
    pub fn join_or_wait(
        &self,
        name: &str,
        kind: TopicKind,
        resume: Resume<'_>,
        may_create: bool,
    ) -> Result<(Joined, bool), Refused> {
        if self.bus.get().is_none() {
            let (sub, created) = self.join(name, kind, resume, may_create)?;
            return Ok((Joined::Now(sub), created));
        }
        let mut inner = self.lock();
        let (id, created) = self.try_intern(&mut inner, name, kind, may_create)?;
        let epoch = inner.topics.get(&id).and_then(|t| t.epoch);
        let t = inner.topics.get_mut(&id).expect("interned under the lock");
        t.subscribers += 1;
        // A `since` of this numbering that the history here no longer reaches is read from
        // Redis's history: the subscriber waits for it.
        let oldest = t.history.front().map_or(t.last_seq + 1, |m| m.seq);
        let same_epoch = match (resume.epoch, epoch) {
            (Some(given), Some(e)) => e.matches(given),
            _ => true,
        };
        let needs_history = resume
            .since
            .is_some_and(|s| s < t.last_seq && s + 1 < oldest)
            && same_epoch;
        if t.follow == Follow::Ready && !needs_history {
            let sub = self.joined_locked(&mut inner, id, resume);
            return Ok((Joined::Now(sub.expect("held under the lock")), created));
        }
        if t.follow != Follow::Ready {
            t.follow = Follow::Pending;
        }
        Ok((Joined::Wait(id), created))
    }

    /// The subscription of a subscriber that waited ([`Joined::Wait`]) once the bus followed
    /// its topic; `fetched`: what Redis's history held after its `since` (oldest first), to
    /// replay before what the history here holds.
    pub fn finish_join(
        &self,
        id: TopicId,
        resume: Resume<'_>,
        fetched: Vec<Arc<Published>>,
    ) -> Option<Subscription> {
        let mut sub = self.joined_locked(&mut self.lock(), id, resume)?;
        let (Some(since), Some(first_here)) = (resume.since, sub.gap_until) else {
            return Some(sub);
        };
        if sub.reset {
            return Some(sub);
        }
        // Fetched messages up to the oldest held here; contiguous from `since + 1` or a gap.
        let mut older: Vec<Arc<Published>> = fetched
            .into_iter()
            .filter(|m| m.seq > since && m.seq < first_here)
            .collect();
        older.sort_by_key(|m| m.seq);
        older.dedup_by_key(|m| m.seq);
        let contiguous = older.windows(2).all(|w| w[1].seq == w[0].seq + 1)
            && older.last().is_some_and(|m| m.seq + 1 == first_here);
        if !contiguous || older.is_empty() {
            return Some(sub);
        }
        sub.gap_until = (older[0].seq > since + 1).then_some(older[0].seq);
        older.append(&mut sub.replay);
        sub.replay = older;
        Some(sub)
    }

    /// Messages read from Redis's history as this node's `Published` (for a recovery).
    pub fn recovered(&self, id: TopicId, history: &[wire::Message<'_>]) -> Vec<Arc<Published>> {
        let inner = self.lock();
        let Some(t) = inner.topics.get(&id) else {
            return Vec::new();
        };
        if history.iter().any(|m| t.epoch != Some(m.epoch)) {
            return Vec::new();
        }
        history
            .iter()
            .map(|m| Arc::new(from_bus(id, &t.name, t.kind, m)))
            .collect()
    }

    /// The epoch this node holds for a followed topic (if known) and its last number; `None`
    /// if the topic is gone or no longer followed.
    pub fn bus_view(&self, id: TopicId) -> Option<(Option<Epoch>, u64)> {
        let inner = self.lock();
        let t = inner.topics.get(&id)?;
        (t.follow != Follow::Off).then_some((t.epoch, t.last_seq))
    }

    /// A Redis of the bus is lost: the topics it carries (`owns`) are no longer in step, so a
    /// new subscriber waits for (or is refused by) the bus instead of joining at once.
    pub fn bus_lost(&self, owns: impl Fn(&str) -> bool) {
        let mut inner = self.lock();
        let ids: Vec<TopicId> = inner
            .topics
            .iter()
            .filter(|(_, t)| t.follow == Follow::Ready && owns(&t.name))
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            if let Some(t) = inner.topics.get_mut(&id) {
                t.follow = Follow::Pending;
            }
        }
    }

    /// The topics this node follows (to subscribe again after a reconnect).
    pub fn followed(&self) -> Vec<(TopicId, Arc<str>)> {
        let inner = self.lock();
        inner
            .topics
            .iter()
            .filter(|(_, t)| t.follow != Follow::Off)
            .map(|(id, t)| (id, t.name.clone()))
            .collect()
    }

    /// Brings a followed topic in step with the bus: its epoch and last number there, and the
    /// messages of its history there after this node's last number (oldest first). See the
    /// module doc. The topic is `Ready` afterwards.
    /// Returns whether a gap and whether a reset were announced.
    pub fn synced(
        &self,
        id: TopicId,
        epoch: Epoch,
        seq: u64,
        history: &[wire::Message<'_>],
    ) -> (bool, bool) {
        let mut inner = self.lock();
        let Some(t) = inner.topics.get_mut(&id) else {
            return (false, false);
        };
        if t.follow == Follow::Off {
            return (false, false);
        }
        let (mut gap, mut reset) = (false, false);
        let name = t.name.clone();
        // Numbers going back within one epoch would name other messages: start over.
        let regressed = t.epoch == Some(epoch) && seq < t.last_seq;
        if t.epoch != Some(epoch) || regressed {
            let had = t.epoch.is_some();
            t.epoch = Some(epoch);
            t.last_seq = 0;
            clear_history(&mut inner, id);
            if had {
                reset = true;
                let text = epoch.to_string().into_bytes().into();
                let notice = Published::notice(id, name.clone(), 0, Control::Reset, text);
                self.post_locked(&Arc::new(notice));
            }
        }
        let last = inner.topics.get(&id).map_or(0, |t| t.last_seq);
        let first_new = history
            .iter()
            .find(|m| m.seq > last)
            .map_or(seq + 1, |m| m.seq);
        if first_new > last + 1 && seq > last {
            // Lost: the numbers between what this node had and what the history still holds.
            let to = first_new - 1;
            gap = last > 0;
            let notice = Published::notice(
                id,
                name.clone(),
                to,
                Control::Gap { from: last + 1 },
                [].into(),
            );
            clear_history(&mut inner, id);
            if let Some(t) = inner.topics.get_mut(&id) {
                t.last_seq = to;
            }
            self.post_locked(&Arc::new(notice));
        }
        let kind = kind_of(&inner, id);
        for m in history.iter().filter(|m| m.seq >= first_new) {
            self.append_locked(&mut inner, from_bus(id, &name, kind, m));
        }
        if let Some(t) = inner.topics.get_mut(&id) {
            t.follow = Follow::Ready;
        }
        (gap, reset)
    }

    /// A message from a topic's channel: appended if it is the next number of a topic this
    /// node follows and is in step with.
    pub fn apply(&self, name: &str, m: &wire::Message<'_>) -> Applied {
        let mut inner = self.lock();
        let Some(&id) = inner.by_name.get(name) else {
            return Applied::Ignored;
        };
        let Some(t) = inner.topics.get(&id) else {
            return Applied::Ignored;
        };
        if t.follow != Follow::Ready {
            return Applied::Ignored;
        }
        if t.epoch != Some(m.epoch) || m.seq > t.last_seq + 1 {
            return Applied::Behind;
        }
        if m.seq <= t.last_seq {
            return Applied::Duplicate;
        }
        let name = t.name.clone();
        let kind = t.kind;
        self.append_locked(&mut inner, from_bus(id, &name, kind, m));
        Applied::Delivered
    }

    /// Hands a bus answer to a worker.
    pub fn reply(&self, worker: usize, reply: BusReply) {
        if let Some(m) = self.mailboxes.get().and_then(|m| m.get(worker)) {
            m.post_reply(reply);
        }
    }

    /// The name of a topic.
    pub fn name_of(&self, id: TopicId) -> Option<Arc<str>> {
        self.lock().topics.get(&id).map(|t| t.name.clone())
    }

    /// Subscribers of a topic on this node (0 if it is gone).
    pub fn subscribers(&self, id: TopicId) -> usize {
        self.lock().topics.get(&id).map_or(0, |t| t.subscribers)
    }
}

fn kind_of(inner: &HubInner, id: TopicId) -> TopicKind {
    inner.topics.get(&id).map_or(TopicKind::Stream, |t| t.kind)
}

/// A message from the bus as this node's `Published`; its publish time is the publishing
/// node's clock (for the delivery latency across nodes).
fn from_bus(id: TopicId, name: &Arc<str>, kind: TopicKind, m: &wire::Message<'_>) -> Published {
    let now_ms = crate::bus::unix_millis();
    let age = std::time::Duration::from_millis(now_ms.saturating_sub(m.millis));
    let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    Published::new(
        id,
        name.clone(),
        m.seq,
        m.kind,
        kind,
        m.payload.into(),
        m.stamp,
    )
    .published_at(at)
}

/// Empties a topic's history (it would no longer end at the topic's last number).
fn clear_history(inner: &mut HubInner, id: TopicId) {
    let HubInner { topics, memory, .. } = inner;
    let Some(t) = topics.get_mut(&id) else { return };
    history::release(memory, t);
    t.history.clear();
    t.history_bytes = 0;
}
