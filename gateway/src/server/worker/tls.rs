//! A worker's TLS connections: their rustls state in a side table keyed by slot (boxed, so the
//! table's entries stay small), and the socket operations that go through it when a
//! connection has one. Without `--tls-cert` the table stays empty and every operation here is
//! the plain socket call after one failed lookup in an empty table.
//!
//! Every TLS connection is counted once: in `tls_handshakes_total` when its handshake
//! completes, or in `tls_handshakes_failed_total` when it is reaped before that.

use std::io::{self, Read};
use std::net::Shutdown;

use super::Worker;
use super::sockets::write_parts;
use crate::server::conn::Phase;
use crate::server::stats::WorkerStats;
use crate::server::tls_conn::TlsIo;

impl Worker {
    /// Gives a new connection its TLS state when the server speaks TLS.
    pub(super) fn tls_accept(&mut self, key: usize) {
        if let Some(tls) = self.shared.tls.as_ref().and_then(|t| t.accept()) {
            self.tls.insert(key, tls);
        }
    }

    /// Reads the connection's input (plaintext) into the read buffer, as a socket read.
    pub(super) fn read_socket(&mut self, key: usize) -> io::Result<usize> {
        let conn = &mut self.conns[key];
        let Some(t) = self.tls.get_mut(&key) else {
            return conn.stream.read(&mut self.read_buf);
        };
        let read = TlsIo {
            tls: t,
            sock: &mut conn.stream,
            scratch: &mut self.tls_scratch,
        }
        .read(&mut self.read_buf);
        if t.handshaken && !mem_replace_true(&mut t.counted) {
            WorkerStats::add(&self.shared.stats.worker(self.id).tls_handshakes_total, 1);
        }
        self.tls_more = t.more;
        read
    }

    /// Writes `parts` to the connection (encrypted when it has TLS state); see
    /// [`write_parts`].
    pub(super) fn write_socket(&mut self, key: usize, parts: &[&[u8]]) -> Option<usize> {
        let conn = &mut self.conns[key];
        match self.tls.get_mut(&key) {
            None => write_parts(&mut conn.stream, parts),
            Some(t) => write_parts(
                &mut TlsIo {
                    tls: t,
                    sock: &mut conn.stream,
                    scratch: &mut self.tls_scratch,
                },
                parts,
            ),
        }
    }

    /// Writes the ciphertext waiting for the connection's socket: true when nothing is left
    /// (always, without TLS). A failed write kills the connection.
    pub(super) fn flush_tls(&mut self, key: usize) -> bool {
        let Some(t) = self.tls.get_mut(&key) else {
            return true;
        };
        match t.flush(&mut self.conns[key].stream) {
            Ok(done) => done,
            Err(_) => {
                self.kill(key);
                false
            }
        }
    }

    /// Nothing is left to write: the outbox is empty and no ciphertext waits.
    pub(super) fn drained(&self, key: usize) -> bool {
        self.conns[key].queued() == 0 && self.tls.get(&key).is_none_or(|t| !t.wants_write())
    }

    /// Shuts the write side once everything queued has gone out; over TLS a close_notify goes
    /// first. Called when a connection lingers and whenever its output drains after that.
    pub(super) fn shut_write_when_drained(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.write_shut || conn.dead || conn.queued() > 0 {
            return;
        }
        let handshake_done = matches!(
            conn.phase,
            Phase::Linger {
                handshake_done: true
            }
        );
        if handshake_done && !self.tls.contains_key(&key) {
            // See `Phase::Linger`: the close handshake is complete, the socket closes now.
            return self.kill(key);
        }
        if let Some(t) = self.tls.get_mut(&key) {
            // Once: later calls find it sent.
            t.close_notify(&mut conn.stream, &mut self.tls_scratch);
            if !self.flush_tls(key) {
                return;
            }
        }
        let conn = &mut self.conns[key];
        conn.write_shut = true;
        let _ = conn.stream.shutdown(Shutdown::Write);
    }

    /// The connection is being reaped: drops its TLS state, counting a handshake that never
    /// completed as failed.
    pub(super) fn tls_reap(&mut self, key: usize) {
        if let Some(t) = self.tls.remove(&key) {
            if !t.counted {
                WorkerStats::add(&self.stats().tls_handshakes_failed_total, 1);
            }
            super::shrink_side(&mut self.tls);
        }
    }

    /// Refuses a connection that gets no slot: a plain connection is answered `response`; a
    /// TLS one, which cannot be answered before a handshake, is just closed.
    pub(super) fn refuse_without_slot(&self, stream: &mio::net::TcpStream, response: &[u8]) {
        if self.shared.tls.is_none() {
            super::http::refuse_without_slot(stream, response);
        }
    }
}

/// Sets `flag`, returning what it was.
fn mem_replace_true(flag: &mut bool) -> bool {
    std::mem::replace(flag, true)
}
