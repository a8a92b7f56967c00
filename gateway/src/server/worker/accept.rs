//! Accepting new connections: the listener is read until `WouldBlock`; over `--max-conns` a
//! connection is answered 503 without getting a slot; and running out of file descriptors.
//!
//! When `accept` fails with EMFILE or ENFILE the connection stays in the kernel's queue, and the
//! listener, being edge-triggered, will not report it again until another connection arrives.
//! So while accepting fails it is retried every [`RETRY`] (the loop's poll timeout accounts for
//! it): clients queued during a short shortage are served as soon as descriptors free up. A
//! shortage that lasts is not left to time clients out: after [`SHED_AFTER`] of failures, the
//! queued clients are answered 503, one at a time, through a reserve descriptor (a `/dev/null`
//! kept open for this): it is closed, the connection accepted into the freed slot, answered and
//! closed, and the reserve reopened.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Interest;

use super::{Worker, http};
use crate::server::ConnId;
use crate::server::conn::Conn;
use crate::server::stats::WorkerStats;

/// How often accepting is retried while it fails.
const RETRY: Duration = Duration::from_millis(50);
/// How long accepting may fail for lack of descriptors before queued clients are answered 503.
/// Long enough to ride out a burst (descriptors freed by connections closing), short enough
/// that a client gets an answer well before it gives up.
const SHED_AFTER: Duration = Duration::from_secs(1);

/// A worker's accept state beyond the listener: the retry timer and the reserve descriptor.
#[derive(Debug)]
pub(super) struct AcceptState {
    /// When to try again: set while accepting fails.
    retry_at: Option<Instant>,
    /// Since when a client may have been waiting in the queue while accepting failed; `None`
    /// when the queue is known to be empty (accepting failing or not).
    waiting_since: Option<Instant>,
    /// A spare descriptor, given up for a moment to refuse a connection when none is left.
    reserve: Option<File>,
    /// Failures so far (logged at powers of two).
    errors: u64,
}

impl AcceptState {
    pub fn new() -> AcceptState {
        AcceptState {
            retry_at: None,
            waiting_since: None,
            reserve: File::open("/dev/null").ok(),
            errors: 0,
        }
    }

    /// Time until the next retry, if one is pending.
    pub fn retry_in(&self) -> Option<Duration> {
        self.retry_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    pub fn retry_due(&self) -> bool {
        self.retry_at.is_some_and(|t| Instant::now() >= t)
    }

    /// Nobody is waiting (accepting works, or the queue is empty): no retry is needed.
    fn nobody_waiting(&mut self) {
        self.retry_at = None;
        self.waiting_since = None;
    }
}

impl Worker {
    /// Accepts every queued connection, or until accepting fails (then a retry is armed).
    /// `arrived`: the listener reported a new connection (rather than the retry timer firing).
    pub(super) fn accept(&mut self, arrived: bool) {
        let mut maybe_queued = arrived;
        loop {
            // A drain has closed the listener: nothing more is accepted.
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.accept.nobody_waiting();
                    maybe_queued = true;
                    self.admit(stream, peer.ip().to_canonical());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept.nobody_waiting();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !self.accept_failed(&e, maybe_queued) {
                        return;
                    }
                }
            }
        }
    }

    /// Gives an accepted connection a slot, or a 503 over `--max-conns` or
    /// `--max-conns-per-ip`.
    fn admit(&mut self, mut stream: mio::net::TcpStream, ip: IpAddr) {
        WorkerStats::add(&self.stats().accepted_total, 1);
        let open = self.shared.open_conns.fetch_add(1, Ordering::Relaxed);
        if open >= self.config.max_conns {
            self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
            WorkerStats::add(&self.stats().refused_max_conns_total, 1);
            self.refuse_without_slot(&stream, http::RESPONSE_503_AT_CAPACITY);
            return;
        }
        let per_ip = self.config.max_conns_per_ip;
        if per_ip > 0 && !self.shared.per_ip.try_add(ip, per_ip) {
            self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
            WorkerStats::add(&self.stats().refused_per_ip_total, 1);
            self.refuse_without_slot(&stream, http::RESPONSE_503_PER_IP);
            return;
        }
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        if per_ip > 0 {
            self.peer_ips.insert(entry.key(), ip);
        }
        let id = ConnId::new(entry.key(), self.generations.next_generation());
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(&mut stream, id.token(), interest)
            .is_err()
        {
            self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
            if let Some(ip) = self.peer_ips.remove(&id.slot()) {
                self.shared.per_ip.remove(ip);
            }
            return;
        }
        entry.insert(Conn::new(stream, id.generation, self.now));
        self.tls_accept(id.slot());
        self.accepted_at.insert(id.slot(), Instant::now());
        self.arm_timer(id.slot());
    }

    /// `accept` failed (EMFILE and friends; Linux fails before looking at the queue, so it may
    /// be empty): a client that may be queued stays there. Arms the retry; once one may have
    /// waited [`SHED_AFTER`] for lack of descriptors, answers a queued client 503 through the
    /// reserve. Returns true when it did (the next may be answered too).
    fn accept_failed(&mut self, e: &io::Error, maybe_queued: bool) -> bool {
        let now = Instant::now();
        WorkerStats::add(&self.stats().accept_errors_total, 1);
        let a = &mut self.accept;
        a.errors += 1;
        if a.errors.is_power_of_two() {
            log::error!(
                "worker {}: accept failed ({} times): {e}",
                self.id,
                a.errors
            );
        }
        if maybe_queued && a.waiting_since.is_none() {
            a.waiting_since = Some(now);
        }
        let Some(since) = a.waiting_since else {
            // Nobody is waiting: the next arrival will be reported by the listener.
            return false;
        };
        a.retry_at = Some(now + RETRY);
        let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        if !out_of_fds || now - since < SHED_AFTER {
            return false;
        }
        let Some(reserve) = a.reserve.take() else {
            // Lost earlier (the slot was taken before it could be reopened): try again.
            a.reserve = File::open("/dev/null").ok();
            return false;
        };
        drop(reserve);
        let Some(listener) = self.listener.as_ref() else {
            return false;
        };
        let shed = match listener.accept() {
            Ok((stream, _peer)) => {
                WorkerStats::add(&self.stats().refused_no_fds_total, 1);
                self.refuse_without_slot(&stream, http::RESPONSE_503_NO_FDS);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.accept.nobody_waiting();
                false
            }
            Err(_) => false,
        };
        self.accept.reserve = File::open("/dev/null").ok();
        shed
    }
}
