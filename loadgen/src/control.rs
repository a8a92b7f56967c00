//! The controller protocol within one process: the run's [`Phase`]s as the controller announces
//! them, the [`Live`] counters each event-loop thread publishes for the progress line, and the
//! [`Share`] of connections a thread is given. [`Control`] is what the controller and the
//! threads share; worker processes relay the same phases over their stdin (see `fleet`).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// The run's phases, as the controller announces them to every thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Open connections; then wait.
    Ramp = 0,
    /// Every connection in the run is open: drive the scenario.
    Run = 1,
    /// Stop sending; wait for the last echoes or deliveries, then close.
    Drain = 2,
    /// Close everything now (the controller gave up or went away).
    Abort = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Ramp,
            1 => Phase::Run,
            2 => Phase::Drain,
            _ => Phase::Abort,
        }
    }
}

/// Counters a thread publishes for the live progress line, read by the controller.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Live {
    pub open: AtomicU64,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub sent: AtomicU64,
    pub verified: AtomicU64,
    pub deliveries: AtomicU64,
    pub ramped: AtomicBool,
    pub finished: AtomicBool,
}

/// What the controller and the threads of one process share.
#[derive(Debug)]
pub struct Control {
    phase: AtomicU8,
    /// Fanout: the last sequence number published, or `u64::MAX` when none was.
    last_seq: AtomicU64,
    pub live: Vec<Live>,
}

impl Control {
    pub fn new(threads: usize) -> Control {
        Control {
            phase: AtomicU8::new(Phase::Ramp as u8),
            last_seq: AtomicU64::new(u64::MAX),
            live: (0..threads).map(|_| Live::default()).collect(),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase` (never backwards). `last_seq` is set before the phase, so a thread that
    /// sees Drain also sees it.
    pub fn set_phase(&self, phase: Phase, last_seq: Option<u64>) {
        if let Some(s) = last_seq {
            self.last_seq.store(s, Ordering::Release);
        }
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }

    pub fn last_seq(&self) -> Option<u64> {
        match self.last_seq.load(Ordering::Acquire) {
            u64::MAX => None,
            s => Some(s),
        }
    }
}

/// Which connections a thread opens and how fast.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    /// Thread number within the process (its `Live` slot).
    pub slot: usize,
    /// Global index of the first connection (source addresses and payloads depend on it).
    pub first: usize,
    pub count: usize,
    /// Connections per second for this thread; 0 = unlimited.
    pub rate: f64,
    pub max_pending: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_never_go_back() {
        let c = Control::new(1);
        c.set_phase(Phase::Drain, Some(41));
        c.set_phase(Phase::Run, None);
        assert_eq!(c.phase(), Phase::Drain);
        assert_eq!(c.last_seq(), Some(41));
    }
}
