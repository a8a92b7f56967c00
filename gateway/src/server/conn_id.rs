//! The name of a connection in an event loop: its slab slot and the generation that tells it
//! from earlier users of the same slot. Used for mio tokens, timer entries, subscriptions and
//! the read backlog, here and in `loadgen`'s client, so a stale event, timer or subscription is
//! recognised by comparing one value.

use mio::Token;

/// A slab slot and its generation (never 0 for a live connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: u32,
    pub generation: u32,
}

impl ConnId {
    pub fn new(slot: usize, generation: u32) -> ConnId {
        assert!(slot < u32::MAX as usize, "slab slots fit in 32 bits");
        ConnId {
            slot: slot as u32,
            generation,
        }
    }

    pub fn slot(self) -> usize {
        self.slot as usize
    }

    /// The mio token: the generation in the high half, the slot in the low half.
    pub fn token(self) -> Token {
        Token(((self.generation as usize) << 32) | self.slot as usize)
    }

    pub fn from_token(t: Token) -> ConnId {
        ConnId {
            slot: (t.0 & 0xffff_ffff) as u32,
            generation: (t.0 >> 32) as u32,
        }
    }
}

/// Hands out generations: 1, 2, ... wrapping past 0, so 0 can mean "none".
#[derive(Debug, Default)]
pub struct Generations(u32);

impl Generations {
    pub fn next_generation(&mut self) -> u32 {
        self.0 = self.0.wrapping_add(1).max(1);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_slot_and_generation() {
        let id = ConnId::new(12345, 0xdead_beef);
        assert_eq!(ConnId::from_token(id.token()), id);
        let mut g = Generations(u32::MAX - 1);
        assert_eq!((g.next_generation(), g.next_generation()), (u32::MAX, 1));
    }
}
