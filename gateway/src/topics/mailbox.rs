//! The bounded hand-off from the hub to one worker: a channel of published messages, the
//! worker's waker, and the backlog (messages and bytes posted but not yet delivered), which the
//! hub reads to push back on publishers and the worker reads to know when to stop polling.
//!
//! Wake-ups are coalesced: a post wakes the worker only when its backlog was empty. The worker
//! counts a message done only after delivering it and never blocks in `poll` while its backlog
//! is not empty, so no post can be left waiting: either the post found the backlog empty and
//! woke the worker, or a message before it was still counted and the worker will look again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};

use super::Published;

/// What one queued message is counted as beyond its payload: the `Published` record, its
/// `Arc`, the channel slot and the frames encoded from it, roughly.
pub const MESSAGE_OVERHEAD: usize = 256;

/// The bytes a message counts for in a backlog.
pub fn cost(msg: &Published) -> usize {
    msg.payload.len() + MESSAGE_OVERHEAD
}

/// Messages and bytes posted to one worker and not delivered yet.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Backlog {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl Backlog {
    pub fn messages(&self) -> usize {
        self.messages.load(Ordering::Acquire)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The hub's end of a worker's mailbox.
#[derive(Debug, Clone)]
pub struct Mailbox {
    tx: Sender<Arc<Published>>,
    /// Answers of the bus to this worker's requests (few: one per publish or follow asked).
    replies: Sender<crate::bus::BusReply>,
    waker: Arc<mio::Waker>,
    backlog: Arc<Backlog>,
}

/// The worker's end.
#[derive(Debug)]
pub struct Inbox {
    rx: Receiver<Arc<Published>>,
    replies: Receiver<crate::bus::BusReply>,
    backlog: Arc<Backlog>,
}

/// A mailbox to a worker whose event loop `waker` wakes.
pub fn mailbox(waker: Arc<mio::Waker>) -> (Mailbox, Inbox) {
    let (tx, rx) = crossbeam_channel::unbounded();
    // Bounded by the bus's own queue: one answer per request it accepted.
    let (replies_tx, replies) = crossbeam_channel::unbounded();
    let backlog = Arc::new(Backlog::default());
    (
        Mailbox {
            tx,
            replies: replies_tx,
            waker,
            backlog: backlog.clone(),
        },
        Inbox {
            rx,
            replies,
            backlog,
        },
    )
}

impl Mailbox {
    /// Hands a message to the worker, waking it if it had nothing to do. The channel itself is
    /// unbounded: the bound is the hub's, which refuses publishes while a backlog is over its
    /// limit ([`super::Hub::congested`]).
    pub fn post(&self, msg: Arc<Published>) {
        self.backlog.bytes.fetch_add(cost(&msg), Ordering::Relaxed);
        let before = self.backlog.messages.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(msg);
        if before == 0 {
            let _ = self.waker.wake();
        }
    }

    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// Hands the worker an answer of the bus, and wakes it: it looks for answers every turn
    /// of its loop.
    pub fn post_reply(&self, reply: crate::bus::BusReply) {
        let _ = self.replies.send(reply);
        let _ = self.waker.wake();
    }

    /// Wakes the worker (to notice a shutdown).
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

impl Inbox {
    /// The next message, if one is waiting. Call [`Inbox::done`] once it is delivered.
    pub fn next(&self) -> Option<Arc<Published>> {
        self.rx.try_recv().ok()
    }

    /// The next answer of the bus, if one is waiting.
    pub fn next_reply(&self) -> Option<crate::bus::BusReply> {
        self.replies.try_recv().ok()
    }

    /// Counts a message as delivered.
    pub fn done(&self, msg: &Published) {
        self.backlog.bytes.fetch_sub(cost(msg), Ordering::Relaxed);
        self.backlog.messages.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether messages are posted and not delivered (some may not be in the channel yet: the
    /// worker must not sleep while this is true).
    pub fn is_pending(&self) -> bool {
        self.backlog.messages() > 0
    }
}
