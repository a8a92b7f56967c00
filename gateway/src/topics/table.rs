//! The hub's topics by id: a slab whose slots are reused, with a generation per slot in the id.
//!
//! A [`TopicId`] is `generation << 32 | slot`. When a topic is forgotten its slot's generation
//! is bumped, so the id of a forgotten topic never names a later one: a lookup with a stale id
//! misses. Among live topics the slot alone is unique, which lets a connection keep the slot of
//! its first topic in 32 bits (`Conn` stays small) and a worker key its subscriptions by it.

use super::{Topic, TopicId};

/// The slot of an id: unique among live topics.
pub fn slot_of(id: TopicId) -> u32 {
    id as u32
}

fn id_of(slot: usize, generation: u32) -> TopicId {
    (TopicId::from(generation) << 32) | slot as TopicId
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    topic: Option<Topic>,
}

/// Live topics by id.
#[derive(Debug, Default)]
pub(super) struct Table {
    slots: Vec<Slot>,
    /// Slots of forgotten topics, to reuse.
    free: Vec<u32>,
    len: usize,
}

impl Table {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, id: &TopicId) -> Option<&Topic> {
        let s = self.slots.get(slot_of(*id) as usize)?;
        (id_of(slot_of(*id) as usize, s.generation) == *id)
            .then_some(s.topic.as_ref())
            .flatten()
    }

    pub fn get_mut(&mut self, id: &TopicId) -> Option<&mut Topic> {
        let s = self.slots.get_mut(slot_of(*id) as usize)?;
        (id_of(slot_of(*id) as usize, s.generation) == *id)
            .then_some(s.topic.as_mut())
            .flatten()
    }

    /// Stores a new topic; returns its id.
    pub fn insert(&mut self, topic: Topic) -> TopicId {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            let s = &mut self.slots[slot as usize];
            s.topic = Some(topic);
            return id_of(slot as usize, s.generation);
        }
        self.slots.push(Slot {
            generation: 0,
            topic: Some(topic),
        });
        id_of(self.slots.len() - 1, 0)
    }

    /// Removes a topic; its id will never name another one (its slot's generation moves on).
    pub fn remove(&mut self, id: &TopicId) -> Option<Topic> {
        self.get(id)?;
        let slot = slot_of(*id);
        let s = &mut self.slots[slot as usize];
        let topic = s.topic.take();
        s.generation = s.generation.wrapping_add(1);
        // A slot whose generations are all used up is retired rather than reused.
        if s.generation != u32::MAX {
            self.free.push(slot);
        }
        self.len -= 1;
        topic
    }

    pub fn iter(&self) -> impl Iterator<Item = (TopicId, &Topic)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.topic.as_ref().map(|t| (id_of(i, s.generation), t)))
    }

    pub fn values(&self) -> impl Iterator<Item = &Topic> {
        self.iter().map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_id_never_names_a_later_topic() {
        let hub = crate::topics::Hub::new(crate::topics::HistoryConfig::default());
        let mut inner = hub.lock();
        let a = crate::topics::Hub::intern(&mut inner, "a", crate::topics::TopicKind::Stream);
        let t = inner.topics.remove(&a).expect("a is there");
        assert!(inner.topics.get(&a).is_none());
        let b = inner.topics.insert(t);
        assert_ne!(a, b);
        assert_eq!(slot_of(a), slot_of(b), "the slot is reused");
        assert!(inner.topics.get(&a).is_none() && inner.topics.get(&b).is_some());
        assert_eq!(inner.topics.len(), 1);
        assert_eq!(
            inner.topics.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            [b]
        );
    }
}
