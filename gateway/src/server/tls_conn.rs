//! One TLS connection: a rustls `UnbufferedServerConnection` and the few bytes it cannot hand
//! on yet, driven with the worker's scratch buffers ([`TlsScratch`]) so that an idle TLS
//! connection holds no buffer: only rustls's state (keys, sequence numbers).
//!
//! rustls's unbuffered API keeps no TLS bytes of its own: the caller passes the ciphertext it
//! received and gets back, one state at a time, plaintext records to take, handshake records
//! to send, or the permission to encrypt. Here ciphertext is read from the socket into the
//! worker's scratch buffer; what is left of it after processing (part of a record) moves to the
//! connection (`incoming`), and likewise ciphertext the socket does not take (`outgoing`) and
//! plaintext that did not fit the caller's buffer (`plain_rest`). Each is empty, with no
//! allocation, between bursts.
//!
//! [`TlsIo`] gives the connection the shape of a socket for the worker: a read returns
//! plaintext (until the socket would block or the buffer is full, so a short read means an
//! empty socket, as for a plain one), a write takes at most [`CHUNK`] of plaintext and only when
//! earlier ciphertext has gone out, so output that does not fit waits in the connection's
//! outbox like a plain connection's.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::mem;
use std::panic::{self, AssertUnwindSafe};

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};

/// Plaintext encrypted at once: one record.
pub const CHUNK: usize = 16 * 1024;
/// Ciphertext read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;
/// A record's overhead over its plaintext, with room to spare (header, content type, tag).
const RECORD_OVERHEAD: usize = 64;
/// Socket reads per call of [`TlsIo::read`] (each up to [`READ_CHUNK`]): a flood of records
/// that carry little or no plaintext still yields the worker to other connections.
const READS_PER_CALL: usize = 4;
/// Handshake bytes a client may have buffered before its handshake completes. A ClientHello
/// is a few hundred bytes to a few KiB (rustls alone would wait for up to 64 KiB): the bound of
/// what a connection that has not completed a handshake can make the gateway hold.
const MAX_HANDSHAKE_BUFFERED: usize = 16 * 1024;

/// The buffers one worker lends to its TLS connections while it processes one of them.
#[derive(Debug, Default)]
pub(crate) struct TlsScratch {
    /// Ciphertext being processed.
    incoming: Vec<u8>,
    /// Where the socket is read (zeroed once, so a read costs no clearing of the buffer).
    read: Vec<u8>,
    /// Ciphertext being produced.
    outgoing: Vec<u8>,
    /// Plaintext gathered for one record.
    plain: Vec<u8>,
}

/// One connection's TLS state (boxed in the worker's side table).
pub(crate) struct TlsConn {
    conn: UnbufferedServerConnection,
    /// The handshake completed, both ways.
    pub handshaken: bool,
    /// The completed handshake was counted (in `tls_handshakes_total`).
    pub counted: bool,
    /// Received ciphertext that is not a whole record yet.
    incoming: Vec<u8>,
    /// Ciphertext the socket has not taken yet.
    outgoing: Vec<u8>,
    /// Decrypted plaintext that did not fit the reader's buffer.
    plain_rest: Vec<u8>,
    /// The peer sent close_notify, or ended the stream.
    peer_closed: bool,
    /// Our close_notify is queued (or the connection failed: nothing more is sent).
    close_sent: bool,
    /// The last read stopped at its budget of socket reads: the socket may have more, even
    /// though the read was short.
    pub more: bool,
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn")
            .field("handshaken", &self.handshaken)
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .field("plain_rest", &self.plain_rest.len())
            .field("peer_closed", &self.peer_closed)
            .field("close_sent", &self.close_sent)
            .finish()
    }
}

/// What the state machine needs before it can go on.
enum Next {
    /// Another state follows: process again.
    Again,
    /// Nothing more to do with the bytes at hand (more input is needed, or writing may go on).
    Idle,
}

impl TlsConn {
    pub fn new(conn: UnbufferedServerConnection) -> TlsConn {
        TlsConn {
            conn,
            handshaken: false,
            counted: false,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            plain_rest: Vec::new(),
            peer_closed: false,
            close_sent: false,
            more: false,
        }
    }

    /// Ciphertext is waiting for the socket.
    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Runs the state machine over `scratch.incoming` until it needs more input: plaintext goes
    /// to `buf[*filled..]` (the rest to `plain_rest`), handshake records to the socket. Consumed
    /// bytes are removed from `scratch.incoming`.
    fn pump(
        &mut self,
        sock: &mut TcpStream,
        scratch: &mut TlsScratch,
        buf: &mut [u8],
        filled: &mut usize,
    ) -> io::Result<()> {
        loop {
            let status = self.conn.process_tls_records(&mut scratch.incoming);
            let mut discard = status.discard;
            let next = match status.state {
                Err(e) => {
                    // A handshake that completed before a bad record still counts as done.
                    self.handshaken = !self.conn.is_handshaking();
                    scratch
                        .incoming
                        .drain(..discard.min(scratch.incoming.len()));
                    self.fail(sock, scratch);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    while let Some(record) = records.next_record() {
                        let record =
                            record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        discard += record.discard;
                        let n = record.payload.len().min(buf.len() - *filled);
                        buf[*filled..*filled + n].copy_from_slice(&record.payload[..n]);
                        *filled += n;
                        self.plain_rest.extend_from_slice(&record.payload[n..]);
                    }
                    Next::Again
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut scratch.outgoing, |out| encode.encode(out))?;
                    Next::Again
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // Sent now, or queued in order before anything else: rustls may forget it.
                    transmit.done();
                    send(sock, &mut self.outgoing, &mut scratch.outgoing)?;
                    Next::Again
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Next::Again
                }
                Ok(ConnectionState::WriteTraffic(_)) => Next::Idle,
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Next::Idle
                }
                // BlockedHandshake (more input needed) and early data (not enabled).
                Ok(_) => Next::Idle,
            };
            scratch.incoming.drain(..discard);
            if let Next::Idle = next {
                // A TLS 1.3 server may send before the client's Finished: done means both ways.
                self.handshaken = !self.conn.is_handshaking();
                return Ok(());
            }
        }
    }

    /// After a TLS error: sends the alert rustls queued, best effort; nothing more is sent.
    fn fail(&mut self, sock: &mut TcpStream, scratch: &mut TlsScratch) {
        self.close_sent = true;
        scratch.outgoing.clear();
        for _ in 0..4 {
            // The same bytes as before: rustls remembers how far into them it got.
            let status = self.conn.process_tls_records(&mut scratch.incoming);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if encode_into(&mut scratch.outgoing, |out| encode.encode(out)).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => break,
            }
        }
        let _ = send(sock, &mut self.outgoing, &mut scratch.outgoing);
    }

    /// Reads plaintext into `buf` as a socket read would: `Ok(0)` at the end of the stream
    /// (with or without the peer's close_notify), `WouldBlock` when there is none. Reads the
    /// socket until it would block or `buf` is full, or [`READS_PER_CALL`] times: then `more`
    /// is set (and with no plaintext yet the result is `Interrupted`: call again). A TLS error
    /// (a plain-text request, a bad ClientHello, a failed record, a handshake over
    /// [`MAX_HANDSHAKE_BUFFERED`]) sends rustls's alert, best effort, and is `InvalidData`.
    fn read_plain(
        &mut self,
        sock: &mut TcpStream,
        scratch: &mut TlsScratch,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let mut filled = self.plain_rest.len().min(buf.len());
        buf[..filled].copy_from_slice(&self.plain_rest[..filled]);
        self.plain_rest.drain(..filled);
        if self.plain_rest.is_empty() {
            self.plain_rest = Vec::new();
        }
        if filled == buf.len() {
            return Ok(filled);
        }
        scratch.incoming.clear();
        scratch.incoming.append(&mut self.incoming);
        self.incoming = Vec::new();
        self.more = false;
        let mut reads = 0;
        let result = loop {
            if let Err(e) = self.pump(sock, scratch, buf, &mut filled) {
                break Err(e);
            }
            if filled == buf.len() || self.peer_closed {
                break Ok(filled);
            }
            if !self.handshaken && scratch.incoming.len() > MAX_HANDSHAKE_BUFFERED {
                self.fail(sock, scratch);
                break Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS handshake too large",
                ));
            }
            if reads == READS_PER_CALL {
                self.more = true;
                break match filled {
                    0 => Err(io::ErrorKind::Interrupted.into()),
                    n => Ok(n),
                };
            }
            reads += 1;
            if scratch.read.len() < READ_CHUNK {
                scratch.read.resize(READ_CHUNK, 0);
            }
            match sock.read(&mut scratch.read) {
                Ok(0) => {
                    self.peer_closed = true;
                    break Ok(filled);
                }
                Ok(n) => scratch.incoming.extend_from_slice(&scratch.read[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => break Ok(filled),
                Err(e) => break Err(e),
            }
        };
        // Part of a record stays with the connection until the rest arrives.
        if !scratch.incoming.is_empty() {
            self.incoming.extend_from_slice(&scratch.incoming);
        }
        result
    }

    /// Encrypts up to [`CHUNK`] bytes of `bufs` and sends them; returns the plaintext bytes
    /// taken. `WouldBlock` while earlier ciphertext is still waiting for the socket, or before
    /// the handshake allows application data.
    fn write_plain(
        &mut self,
        sock: &mut TcpStream,
        scratch: &mut TlsScratch,
        bufs: &[IoSlice<'_>],
    ) -> io::Result<usize> {
        if !self.flush(sock)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.close_sent {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        scratch.plain.clear();
        for b in bufs {
            let take = b.len().min(CHUNK - scratch.plain.len());
            scratch.plain.extend_from_slice(&b[..take]);
            if scratch.plain.len() == CHUNK {
                break;
            }
        }
        if scratch.plain.is_empty() {
            return Ok(0);
        }
        let plain = mem::take(&mut scratch.plain);
        let result = self.with_write_traffic(sock, scratch, |out, wt| {
            encode_into(out, |o| wt.encrypt(&plain, o))
        });
        scratch.plain = plain;
        result?;
        send(sock, &mut self.outgoing, &mut scratch.outgoing)?;
        Ok(scratch.plain.len())
    }

    /// Queues close_notify and sends it, once; nothing happens before the handshake is done.
    pub fn close_notify(&mut self, sock: &mut TcpStream, scratch: &mut TlsScratch) {
        if self.close_sent || !self.handshaken {
            return;
        }
        let queued = self.with_write_traffic(sock, scratch, |out, wt| {
            encode_into(out, |o| wt.queue_close_notify(o))
        });
        self.close_sent = true;
        if queued.is_ok() {
            let _ = send(sock, &mut self.outgoing, &mut scratch.outgoing);
        }
    }

    /// Brings the state machine to `WriteTraffic` (sending any handshake records on the way,
    /// such as session tickets) and runs `f` with it, writing into `scratch.outgoing`.
    fn with_write_traffic(
        &mut self,
        sock: &mut TcpStream,
        scratch: &mut TlsScratch,
        f: impl FnOnce(
            &mut Vec<u8>,
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
        ) -> io::Result<()>,
    ) -> io::Result<()> {
        scratch.outgoing.clear();
        let mut f = Some(f);
        loop {
            let status = self.conn.process_tls_records(&mut self.incoming);
            let mut discard = status.discard;
            let done = match status.state {
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                Ok(ConnectionState::WriteTraffic(mut wt)) => {
                    let f = f.take().expect("runs once");
                    f(&mut scratch.outgoing, &mut wt)?;
                    true
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut scratch.outgoing, |out| encode.encode(out))?;
                    false
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    send(sock, &mut self.outgoing, &mut scratch.outgoing)?;
                    false
                }
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    // Not expected (reads take every record); kept for the next read.
                    while let Some(Ok(record)) = records.next_record() {
                        discard += record.discard;
                        self.plain_rest.extend_from_slice(record.payload);
                    }
                    false
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    false
                }
                Ok(ConnectionState::Closed) => return Err(io::ErrorKind::BrokenPipe.into()),
                Ok(_) => return Err(io::ErrorKind::WouldBlock.into()),
            };
            self.incoming.drain(..discard);
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Writes the ciphertext waiting for the socket: `Ok(true)` when none is left.
    pub fn flush(&mut self, sock: &mut TcpStream) -> io::Result<bool> {
        if self.outgoing.is_empty() {
            return Ok(true);
        }
        let mut pending = mem::take(&mut self.outgoing);
        let written = write_some(sock, &pending)?;
        pending.drain(..written);
        if !pending.is_empty() {
            self.outgoing = pending;
        }
        Ok(self.outgoing.is_empty())
    }
}

/// The two rustls errors that can ask for a bigger output buffer.
trait NeedsRoom: std::fmt::Display {
    /// The room rustls needs, when that is what the error says.
    fn needs_room(&self) -> Option<usize>;
}

impl NeedsRoom for EncodeError {
    fn needs_room(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(e) => Some(e.required_size),
            _ => None,
        }
    }
}

impl NeedsRoom for EncryptError {
    fn needs_room(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(e) => Some(e.required_size),
            _ => None,
        }
    }
}

/// Runs `write` (a handshake encode, or an encryption of data or an alert) into the free end
/// of `out`, growing it when rustls says it needs more room.
fn encode_into<E: NeedsRoom>(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let mut room = RECORD_OVERHEAD + CHUNK;
    loop {
        let start = out.len();
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => {
                out.truncate(start);
                match e.needs_room() {
                    Some(needed) => room = needed,
                    None => return Err(io::Error::other(e.to_string())),
                }
            }
        }
    }
}

/// Sends `fresh` ciphertext after whatever is `waiting`; what the socket does not take joins
/// `waiting`. Empties `fresh`.
fn send(sock: &mut TcpStream, waiting: &mut Vec<u8>, fresh: &mut Vec<u8>) -> io::Result<()> {
    if !waiting.is_empty() {
        waiting.extend_from_slice(fresh);
        fresh.clear();
        let written = write_some(sock, waiting)?;
        waiting.drain(..written);
        if waiting.is_empty() {
            *waiting = Vec::new();
        }
        return Ok(());
    }
    let written = write_some(sock, fresh)?;
    if written < fresh.len() {
        waiting.extend_from_slice(&fresh[written..]);
    }
    fresh.clear();
    Ok(())
}

/// Writes until all is written or the socket would block; returns the bytes written.
fn write_some(sock: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match sock.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// A TLS connection with the shape of a socket: reads give plaintext, writes take plaintext.
#[derive(Debug)]
pub(crate) struct TlsIo<'a> {
    pub tls: &'a mut TlsConn,
    pub sock: &'a mut TcpStream,
    pub scratch: &'a mut TlsScratch,
}

impl Read for TlsIo<'_> {
    /// A panic in rustls on a peer's bytes (a bug there) fails this connection, not the worker
    /// and its other connections.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (tls, sock, scratch) = (&mut *self.tls, &mut *self.sock, &mut *self.scratch);
        panic::catch_unwind(AssertUnwindSafe(|| tls.read_plain(sock, scratch, buf))).unwrap_or_else(
            |_| {
                tls.close_sent = true;
                scratch.incoming.clear();
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS processing panicked",
                ))
            },
        )
    }
}

impl Write for TlsIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.tls.write_plain(self.sock, self.scratch, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tls.flush(self.sock).map(|_| ())
    }
}
