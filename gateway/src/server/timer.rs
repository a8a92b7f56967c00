//! A hashed timing wheel: one per worker, O(1) to arm, no allocation per timer.
//!
//! Time is counted in ticks of [`TICK`]. Each connection has at most one live entry, naming it by
//! its [`ConnId`] and the tick it was armed for; the connection remembers that tick, so
//! an entry that was superseded is recognised and dropped when it comes due. Entries further away
//! than one turn of the wheel simply stay in their slot until their tick is reached.

use std::time::Duration;

use super::ConnId;

/// Timer resolution. Deadlines fire up to one tick late, never early.
pub const TICK: Duration = Duration::from_millis(50);
/// Slots in the wheel: one turn is 2048 x 50 ms = 102.4 s, longer than the default deadlines.
const SLOTS: usize = 2048;
const WORDS: usize = SLOTS / 64;

/// A due (or superseded) timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: ConnId,
    pub at: u32,
}

/// The wheel. Ticks are `u32` counted from the worker's start (2^32 x 50 ms is 6.8 years).
#[derive(Debug)]
pub struct TimerWheel {
    slots: Vec<Vec<Entry>>,
    occupied: [u64; WORDS],
    /// The last tick whose slot was processed.
    current: u32,
}

impl Default for TimerWheel {
    fn default() -> Self {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            current: 0,
        }
    }
}

/// Whole ticks in `d`, rounded up so a deadline never fires early.
pub fn ticks(d: Duration) -> u32 {
    let t = d.as_nanos().div_ceil(TICK.as_nanos());
    u32::try_from(t).unwrap_or(u32::MAX / 2).max(1)
}

impl TimerWheel {
    /// Arms an entry for tick `at` (a tick already past fires at the next expiry).
    pub fn schedule(&mut self, id: ConnId, at: u32) {
        let at = at.max(self.current + 1);
        let slot = at as usize % SLOTS;
        self.slots[slot].push(Entry { id, at });
        self.occupied[slot / 64] |= 1 << (slot % 64);
    }

    /// Moves every entry due at or before `now` into `due`.
    pub fn expire(&mut self, now: u32, due: &mut Vec<Entry>) {
        if now <= self.current {
            return;
        }
        let span = (now - self.current).min(SLOTS as u32);
        for step in 1..=span {
            let slot = (self.current + step) as usize % SLOTS;
            if self.occupied[slot / 64] & (1 << (slot % 64)) == 0 {
                continue;
            }
            let entries = &mut self.slots[slot];
            let mut i = 0;
            while i < entries.len() {
                if entries[i].at <= now {
                    due.push(entries.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            if entries.is_empty() {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
                // Free the slot's buffer. Keeping small leftover buffers in every slot, as each
                // ping round moves entries to new slots, fragmented the allocator: idle memory
                // per connection crept from ~200 B to ~370 B in ten minutes (and ~1 KiB with 3 s
                // pings) while the live entries stayed the same. Freeing costs one free per
                // emptied slot, not per connection.
                *entries = Vec::new();
            }
        }
        self.current = now;
    }

    /// Ticks from `current` to the next occupied slot, if any entry is armed.
    pub fn ticks_to_next(&self) -> Option<u32> {
        let start = (self.current as usize + 1) % SLOTS;
        for d in 0..SLOTS {
            let slot = (start + d) % SLOTS;
            let word = self.occupied[slot / 64];
            if word == 0 {
                // Skip the rest of an empty word in one go.
                let skip = 63 - slot % 64;
                if d + skip < SLOTS {
                    continue;
                }
            } else if word & (1 << (slot % 64)) != 0 {
                return Some(d as u32 + 1);
            }
        }
        None
    }

    /// The last processed tick.
    pub fn current(&self) -> u32 {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: usize) -> ConnId {
        ConnId::new(slot, 1)
    }

    #[test]
    fn fires_at_the_tick_not_before() {
        let mut w = TimerWheel::default();
        w.schedule(id(1), 10);
        w.schedule(id(2), 5000); // beyond one turn
        let mut due = Vec::new();
        w.expire(9, &mut due);
        assert!(due.is_empty());
        assert_eq!(w.ticks_to_next(), Some(1));
        w.expire(10, &mut due);
        assert_eq!(due, [Entry { id: id(1), at: 10 }]);
        due.clear();
        w.expire(4999, &mut due);
        assert!(due.is_empty());
        w.expire(6000, &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(w.ticks_to_next(), None);
    }

    #[test]
    fn past_deadlines_fire_next() {
        let mut w = TimerWheel::default();
        let mut due = Vec::new();
        w.expire(100, &mut due);
        w.schedule(ConnId::new(7, 3), 50);
        assert_eq!(w.ticks_to_next(), Some(1));
        w.expire(101, &mut due);
        assert_eq!(due[0].id, ConnId::new(7, 3));
    }

    /// Regression: emptied slots kept their buffers, and rounds of pings spread leftovers over
    /// every slot, fragmenting the allocator (idle memory per connection grew over time).
    #[test]
    fn emptied_slots_keep_no_buffer() {
        let mut w = TimerWheel::default();
        let mut due = Vec::new();
        for round in 0..5u32 {
            for key in 0..3000u32 {
                w.schedule(id(key as usize), w.current() + 1 + (key * 7 + round) % 300);
            }
            w.expire(w.current() + 300, &mut due);
            assert_eq!(due.len(), 3000);
            due.clear();
            let kept: usize = w.slots.iter().map(Vec::capacity).sum();
            assert_eq!(
                kept, 0,
                "round {round}: {kept} entries of capacity left in empty slots"
            );
        }
    }

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks(Duration::from_millis(1)), 1);
        assert_eq!(ticks(Duration::from_millis(50)), 1);
        assert_eq!(ticks(Duration::from_millis(51)), 2);
        assert_eq!(ticks(Duration::from_secs(60)), 1200);
    }
}
