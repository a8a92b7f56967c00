//! The edge-triggered I/O rules and the cork: every read and write of a connection's socket.
//!
//! Sockets are registered once for reading and writing. A readable event is read until
//! `WouldBlock`, a short read, or the per-turn budget of reads (bytes) and steps (frames), after
//! which the connection goes on the backlog, so one busy peer cannot starve the rest. A writable event drains the queued output.
//! While the input of one read is processed, the bytes owed to that connection (echoes, pongs,
//! replies) are corked into one per-worker buffer and written with one syscall when the read is
//! done; larger ones are written straight to the socket. Only what the socket did not take is
//! queued in the connection's [`Outbox`](crate::server::outbox::Outbox).
//!
//! The ways out: [`Worker::send`] (owned bytes: corked, written or queued) and
//! [`Worker::send_shared`] (a topic frame shared with other subscribers); [`Worker::uncork`]
//! writes the cork; [`Worker::on_writable`] drains the outbox; [`write_parts`] is the one place
//! that calls `send`/`writev` outside the outbox.

use std::io::{self, IoSlice, Write};
use std::mem;
use std::sync::Arc;

use super::{POOL_MAX, Worker};
use crate::server::conn::Phase;
use crate::server::stats::WorkerStats;
use crate::server::tls_conn::TlsIo;
use crate::topics::TopicId;

/// Reads per connection per turn before it yields to the others.
const READS_PER_TURN: usize = 8;
/// Steps (a frame header, a payload piece, a request head) per connection per turn before it
/// yields to the others. The reads' budget bounds a turn's bytes; this bounds its frames, which
/// can be as small as 6 bytes each (87,000 in 512 KiB): 4,096 steps are a fraction of a
/// millisecond, and more than any ordinary connection has in one turn.
const STEPS_PER_TURN: u32 = 4096;
/// Frames up to this size are corked; larger ones are written directly (after the cork).
const CORK_MAX: usize = 16 * 1024;

impl Worker {
    /// Reads what the socket has, within the turn's budget, and processes it. A connection
    /// that spent its budget goes on the backlog; one that spent its budget of steps keeps its
    /// unprocessed input in the side table (`yielded`), and its next turn starts with it.
    /// `peer_done`: the event also said the peer shut its side, so a short read is followed by
    /// one more (which finds the end of stream) instead of waiting for an edge that will not
    /// come.
    pub(super) fn read_ready(&mut self, key: usize, peer_done: bool) {
        self.steps_left = STEPS_PER_TURN;
        for _ in 0..READS_PER_TURN {
            let conn = &mut self.conns[key];
            if conn.dead || conn.peer_closed || conn.hub_paused {
                return;
            }
            // A command that has not taken its input yet: the rest waits in the socket.
            if self.procs.input_blocked(key) {
                return;
            }
            if conn.queued() > self.config.max_queued {
                conn.paused = true;
                return;
            }
            let n = if mem::take(&mut conn.yielded) {
                0
            } else {
                match self.read_socket(key) {
                    Ok(0) => return self.on_peer_eof(key),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.kill(key),
                }
            };
            WorkerStats::add(&self.stats().bytes_in_total, n as u64);
            self.corked = Some(key);
            self.on_input(key, n);
            self.uncork(key);
            self.corked = None;
            self.cork.clear();
            if self.conns[key].dead {
                return;
            }
            if self.steps_left == 0 {
                self.conns[key].yielded = true;
                break;
            }
            if n > 0 && n < self.read_buf.len() && !peer_done && !mem::take(&mut self.tls_more) {
                // A short read emptied the socket; the next edge will say when more arrives.
                // (A TLS read can be short with bytes left: `tls_more` says so.)
                return;
            }
        }
        let conn = &mut self.conns[key];
        if !mem::replace(&mut conn.backlogged, true) {
            self.backlog.push(conn.id(key));
        }
    }

    /// The peer will send nothing more. Output it has not received yet (echoes, the close
    /// reply) still goes out: the connection ends once it has drained.
    fn on_peer_eof(&mut self, key: usize) {
        if self.drained(key) {
            return self.kill(key);
        }
        let conn = &mut self.conns[key];
        conn.peer_closed = true;
        if matches!(conn.phase, Phase::Open(_)) {
            self.linger(key);
        }
    }

    /// Handles `n` fresh bytes in the read buffer, together with any kept from before; keeps
    /// what is not consumed yet in the side table.
    fn on_input(&mut self, key: usize, n: usize) {
        let mut rb = mem::take(&mut self.read_buf);
        match self.partial_input.remove(&key) {
            None => {
                let used = self.process(key, &mut rb[..n]);
                if used < n && !self.conns[key].dead {
                    let mut keep = self.pool.get();
                    keep.extend_from_slice(&rb[used..n]);
                    self.partial_input.insert(key, keep);
                }
            }
            Some(mut pending) => {
                pending.extend_from_slice(&rb[..n]);
                let used = self.process(key, &mut pending);
                pending.drain(..used);
                if pending.is_empty() || self.conns[key].dead {
                    self.pool.put(pending);
                } else {
                    self.partial_input.insert(key, pending);
                }
            }
        }
        self.read_buf = rb;
    }

    /// Runs the input through the connection's phase; returns the bytes consumed.
    fn process(&mut self, key: usize, input: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            let conn = &self.conns[key];
            if conn.dead {
                return input.len();
            }
            match conn.phase {
                // Parked: waiting for the bus's answer to the last request.
                Phase::Handshake if self.steps_left == 0 || conn.hub_paused => return pos,
                Phase::Handshake => match self.on_request(key, &input[pos..]) {
                    0 => return pos,
                    n => {
                        pos += n;
                        self.steps_left -= 1;
                    }
                },
                Phase::Linger { .. } => return input.len(),
                Phase::Open(_) => return pos + self.read_frames(key, &mut input[pos..]),
            }
        }
    }

    /// Writes what is corked for `key` (keeping it corked for what follows).
    pub(super) fn uncork(&mut self, key: usize) {
        if self.corked != Some(key) || self.cork.is_empty() {
            return;
        }
        let mut cork = mem::take(&mut self.cork);
        self.corked = None;
        self.send(key, &[&cork]);
        self.corked = Some(key);
        cork.clear();
        self.cork = cork;
    }

    /// Sends `parts` (a frame header and payload, say): corked if small and the connection's
    /// input is being processed, else written now if nothing is queued; whatever the socket does
    /// not take is queued. Nothing happens on a dead or write-shut connection.
    pub(super) fn send(&mut self, key: usize, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if self.corked == Some(key) {
            if total <= CORK_MAX && self.cork.len() + total <= self.cork.capacity().max(64 * 1024) {
                for part in parts {
                    self.cork.extend_from_slice(part);
                }
                return;
            }
            self.uncork(key);
        }
        let written = match self.write_unqueued(key, parts) {
            Some(n) if n < total => n,
            _ => return,
        };
        let conn = &mut self.conns[key];
        let out = conn.outbox(&mut self.outboxes);
        let mut skip = written;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            out.push_owned(&part[skip..], &mut self.pool);
            skip = 0;
        }
    }

    /// Sends a frame shared with other subscribers: written now if nothing is queued, else
    /// queued by reference.
    pub(super) fn send_shared(
        &mut self,
        key: usize,
        frame: Arc<[u8]>,
        topic: TopicId,
        latest: bool,
    ) {
        self.uncork(key);
        let written = match self.write_unqueued(key, &[&frame]) {
            Some(n) if n < frame.len() => n,
            _ => return,
        };
        let conn = &mut self.conns[key];
        let out = conn.outbox(&mut self.outboxes);
        out.push_shared(frame, topic, latest, written);
    }

    /// Writes `parts` straight to the socket when nothing is queued before them; returns the
    /// bytes written (`Some(0)` when output is queued already), or `None` when the connection
    /// is dead, write-shut, or just failed (it is then marked dead).
    fn write_unqueued(&mut self, key: usize, parts: &[&[u8]]) -> Option<usize> {
        let conn = &mut self.conns[key];
        if conn.dead || conn.write_shut {
            return None;
        }
        if conn.queued() > 0 {
            return Some(0);
        }
        let written = self.write_socket(key, parts);
        match written {
            Some(n) => WorkerStats::add(&self.stats().bytes_out_total, n as u64),
            None => self.kill(key),
        }
        written
    }

    /// The socket can take more: drains the outbox, then finishes what waited for it (a
    /// linger's shutdown, a paused reader).
    pub(super) fn on_writable(&mut self, key: usize) {
        // Over TLS, the records rustls holds go before anything queued after them.
        if !self.flush_tls(key) {
            return;
        }
        let conn = &mut self.conns[key];
        if let Some(out) = conn.out.as_mut() {
            let written = match self.tls.get_mut(&key) {
                None => out.write_to(&mut conn.stream, &mut self.pool, &mut self.gather),
                Some(t) => out.write_to(
                    &mut TlsIo {
                        tls: t,
                        sock: &mut conn.stream,
                        scratch: &mut self.tls_scratch,
                    },
                    &mut self.pool,
                    &mut self.gather,
                ),
            };
            match written {
                Ok(written) => WorkerStats::add(
                    &self.shared.stats.worker(self.id).bytes_out_total,
                    written as u64,
                ),
                Err(_) => return self.kill(key),
            }
            if out.is_empty() {
                let out = conn.out.take().expect("checked above");
                if self.outboxes.len() < POOL_MAX {
                    self.outboxes.push(out);
                }
            }
        } else if !self.tls.contains_key(&key) {
            return;
        }
        if self.drained(key) && self.conns[key].peer_closed {
            return self.kill(key);
        }
        if matches!(self.conns[key].phase, Phase::Linger { .. }) {
            self.shut_write_when_drained(key);
        }
        let conn = &mut self.conns[key];
        if conn.paused && conn.queued() <= self.config.max_queued {
            conn.paused = false;
            self.read_ready(key, false);
            self.resume_command_output(key);
        }
    }
}

/// Writes `parts` to the socket until all is written or it would block; returns the bytes
/// written, or `None` when the connection failed. The one place that writes without queueing.
pub(super) fn write_parts(stream: &mut impl Write, parts: &[&[u8]]) -> Option<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        let mut slices = [IoSlice::new(&[]); 4];
        let n = remaining_slices(parts, written, &mut slices);
        // One slice (a corked batch, a shared frame) goes out with send(2), which skips the
        // vfs layer writev(2) goes through: measurably cheaper per message.
        let result = if n == 1 {
            stream.write(&slices[0])
        } else {
            stream.write_vectored(&slices[..n])
        };
        match result {
            Ok(0) => return None,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(written)
}

/// Fills `out` with the parts of `parts` after the first `skip` bytes; returns how many.
fn remaining_slices<'a>(parts: &[&'a [u8]], mut skip: usize, out: &mut [IoSlice<'a>; 4]) -> usize {
    let mut n = 0;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        if n == out.len() {
            break;
        }
        out[n] = IoSlice::new(&part[skip..]);
        skip = 0;
        n += 1;
    }
    n
}
