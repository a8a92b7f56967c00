//! One client WebSocket connection over a non-blocking mio socket: the connect, the HTTP
//! upgrade (optionally offering permessage-deflate), then `gateway::proto::Session` for
//! frames, the close handshake, and why the connection ended ([`End`]).
//!
//! A connection goes Connecting -> Handshaking -> Open -> Closing and is then dropped by its
//! owner, counted as a clean close or as a failure with its cause. Every loadgen client is one
//! of these: the event-loop threads' (see `engine`) and the publisher's WebSocket (see `single`).
//!
//! Edge-triggered rules live here: a socket is registered once for reading and writing; a
//! readable socket is read until `WouldBlock` or a short read. Reads go into the thread's one
//! read buffer ([`Io`]); a connection keeps input only while a frame is incomplete. Every byte
//! owed to a connection during one read (echo replies, pongs) is gathered in the thread's cork
//! and written with one syscall, and only what the socket did not take is kept in the
//! connection's own buffer. So the hot path does not allocate per message.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use gateway::proto::deflate;
use gateway::proto::handshake::{
    ClientHandshakeError, client_key, parse_client_response, write_client_request,
};
use gateway::proto::{ClientSession, CloseCode, Event, MessageKind, Rng, SessionState, Tick};
use mio::net::TcpStream;
use rustls::ClientConfig;
use rustls::ClientConnection;
use rustls_pki_types::ServerName;

use crate::clock::now_ns;
use crate::sockets::{connect_cause, is_connected, open_socket};
use crate::tls::{self, TlsStream};
use crate::url::Endpoint;

/// The one read buffer of a thread.
const READ_BUF: usize = 64 * 1024;
/// Largest message accepted from the server.
const MAX_MESSAGE: usize = 16 << 20 | 1024;
/// A connection's input or output buffer is given back when it empties if it grew past this.
const BUF_KEEP: usize = 4096;

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both close frames were exchanged and the server ended the stream.
    Clean,
    /// Anything else, with a cause that groups well in the report.
    Failed(Cow<'static, str>),
}

pub fn fail(cause: impl Into<Cow<'static, str>>) -> End {
    End::Failed(cause.into())
}

/// Where a connection is, as its owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Connecting,
    /// The upgrade request is out; the 101 is awaited.
    Handshaking,
    Open,
    /// Our close frame is out (or both are): the server's close and end of stream are awaited.
    Closing,
}

/// What the clients of one thread share: the read buffer, the cork, the random source, and
/// the upgrade request they send (one per node).
#[derive(Debug)]
pub struct Io {
    read_buf: Vec<u8>,
    /// Output gathered for one connection during one call, written with one syscall.
    pub cork: Vec<u8>,
    rng: Rng,
    /// Per node (`--url`), in order: what the upgrade request of its connections says.
    nodes: Vec<Upgrade>,
    deflate: bool,
}

/// The upgrade request's part that depends on the node.
#[derive(Debug)]
struct Upgrade {
    host: String,
    path: String,
    /// `wss://`: the TLS configuration and the server name every connection asks for.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl Io {
    /// For clients of `targets` (a connection names its node, an index in it); `deflate`:
    /// offer permessage-deflate in every upgrade request.
    pub fn new(targets: &[Endpoint], deflate: bool, seed: u64) -> Io {
        let nodes = targets
            .iter()
            .map(|target| Upgrade {
                host: target.host.clone(),
                path: target.path.clone(),
                tls: target.tls.as_ref().and_then(|trust| {
                    // The URL's server name was checked when it was parsed.
                    let name = tls::server_name(&target.host).ok()?;
                    Some((tls::client_config(trust), name))
                }),
            })
            .collect();
        Io {
            read_buf: vec![0; READ_BUF],
            cork: Vec::with_capacity(64 * 1024),
            rng: Rng::new(seed),
            nodes,
            deflate,
        }
    }
}

/// What a connection reports to its owner while it reads.
pub trait Handler {
    /// The upgrade was accepted `handshake_ns` after the connect started.
    fn opened(&mut self, handshake_ns: u64);
    /// A complete message from the server, read at `now_ns`; `reply` sends on the same
    /// connection (in the same write as everything else this read owes it). An `Err` ends the
    /// connection.
    fn message(
        &mut self,
        kind: MessageKind,
        msg: &[u8],
        reply: &mut Reply<'_>,
        now_ns: u64,
    ) -> Result<(), End>;
}

/// Sending on the connection whose message is being handled.
#[derive(Debug)]
pub struct Reply<'a> {
    session: &'a mut ClientSession,
    cork: &'a mut Vec<u8>,
}

impl Reply<'_> {
    /// Queues a message; false once our close frame went out.
    pub fn send(&mut self, kind: MessageKind, payload: &[u8]) -> bool {
        self.session.send(kind, payload, self.cork)
    }
}

#[derive(Debug)]
enum Stage {
    Connecting,
    /// Holds the key to check the answer with, and whether deflate was offered.
    Handshaking {
        key: Box<str>,
        deflate: bool,
    },
    Open(Box<ClientSession>),
}

/// One client connection.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    /// Which of the thread's nodes (see [`Io`]) it connects to.
    node: usize,
    /// `wss://`: the TLS state, from the moment the TCP connect completes.
    tls: Option<Box<ClientConnection>>,
    stage: Stage,
    started_ns: u64,
    /// Received bytes not consumed yet (only while a frame or the response head is incomplete).
    inbuf: Vec<u8>,
    /// The message being assembled (lent to the session).
    msg: Vec<u8>,
    /// Output the socket did not take yet.
    out: Vec<u8>,
}

impl Client {
    /// Starts connecting to `target`, node `node` of the [`Io`] it will be driven with, from
    /// `src` (see `sockets::source_addr`).
    pub fn connect(
        target: SocketAddr,
        node: usize,
        src: Option<Ipv4Addr>,
        now_ns: u64,
    ) -> io::Result<Client> {
        Ok(Client {
            stream: open_socket(target, src)?,
            node,
            tls: None,
            stage: Stage::Connecting,
            started_ns: now_ns,
            inbuf: Vec::new(),
            msg: Vec::new(),
            out: Vec::new(),
        })
    }

    /// The socket, to register with a poll.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn status(&self) -> Status {
        match &self.stage {
            Stage::Connecting => Status::Connecting,
            Stage::Handshaking { .. } => Status::Handshaking,
            Stage::Open(s) if s.is_open() => Status::Open,
            Stage::Open(_) => Status::Closing,
        }
    }

    /// Milliseconds since the connect started: the session's clock.
    fn tick(&self, now_ns: u64) -> Tick {
        (now_ns.saturating_sub(self.started_ns) / 1_000_000) as Tick
    }

    /// Acts on a readiness event: finishes the connect (and sends the upgrade request), writes
    /// what is queued, reads what arrived. `Err` ends the connection.
    pub fn on_event(
        &mut self,
        readable: bool,
        writable: bool,
        hup: bool,
        io: &mut Io,
        handler: &mut impl Handler,
    ) -> Result<(), End> {
        if matches!(self.stage, Stage::Connecting) && !self.on_connected(io)? {
            return Ok(());
        }
        if writable && self.has_output() {
            self.flush()?;
        }
        if readable {
            self.on_readable(hup, io, handler)?;
        }
        Ok(())
    }

    /// A connecting socket reported readiness: connected (and the upgrade request sent), still
    /// connecting (a spurious wake-up), or failed.
    fn on_connected(&mut self, io: &mut Io) -> Result<bool, End> {
        match is_connected(&self.stream) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => return Err(fail(connect_cause(&e))),
        }
        let upgrade = &io.nodes[self.node];
        if let Some((config, name)) = &upgrade.tls {
            let mut conn = ClientConnection::new(config.clone(), name.clone())
                .map_err(|e| fail(format!("tls: {e}")))?;
            // rustls takes plaintext only once its records went out, one chunk at a time.
            conn.set_buffer_limit(Some(tls::CHUNK));
            self.tls = Some(Box::new(conn));
        }
        let key = client_key(io.rng.key());
        let extra: &[(&str, &str)] = if io.deflate {
            &[("Sec-WebSocket-Extensions", deflate::client_offer())]
        } else {
            &[]
        };
        write_client_request(&mut io.cork, &upgrade.host, &upgrade.path, &key, extra);
        self.stage = Stage::Handshaking {
            key: key.into_boxed_str(),
            deflate: io.deflate,
        };
        self.flush_cork(&mut io.cork)?;
        Ok(true)
    }

    /// Reads until `WouldBlock` (or a short read), processing each read as it comes.
    ///
    /// A short read means the socket is drained for now, and the next bytes will raise a new
    /// edge, except for an end of stream that came with the bytes just read: when the event
    /// says the peer closed (`hup`), reading goes on to `WouldBlock` or the end.
    fn on_readable(
        &mut self,
        hup: bool,
        io: &mut Io,
        handler: &mut impl Handler,
    ) -> Result<(), End> {
        let mut buf = mem::take(&mut io.read_buf);
        let result = loop {
            match self.read_socket(&mut buf) {
                Ok(0) => break Err(self.eof_end()),
                Ok(n) => {
                    if let Err(end) = self.input(&mut buf[..n], io, handler, now_ns()) {
                        break Err(end);
                    }
                    if n < buf.len() && !hup {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(self.io_end(&e)),
            }
        };
        io.read_buf = buf;
        result
    }

    /// Processes one read's worth of input (read at `now_ns`), then writes what is owed.
    fn input(
        &mut self,
        data: &mut [u8],
        io: &mut Io,
        handler: &mut impl Handler,
        now_ns: u64,
    ) -> Result<(), End> {
        if let Stage::Handshaking { .. } = self.stage {
            self.inbuf.extend_from_slice(data);
            if !self.handshake(io, handler, now_ns)? || self.inbuf.is_empty() {
                return Ok(());
            }
            // Frames that came with the response head.
            let buffered = mem::take(&mut self.inbuf);
            return self.frames_buffered(buffered, io, handler, now_ns);
        }
        if self.inbuf.is_empty() {
            let used = self.frames(data, io, handler, now_ns);
            let used = self.or_flush(used, &mut io.cork)?;
            self.inbuf.extend_from_slice(&data[used..]);
            self.flush_cork(&mut io.cork)
        } else {
            // A frame was split across reads: complete it in the connection's own buffer.
            let mut buffered = mem::take(&mut self.inbuf);
            buffered.extend_from_slice(data);
            self.frames_buffered(buffered, io, handler, now_ns)
        }
    }

    /// Checks the response head in `inbuf`: false while it is incomplete; once accepted, the
    /// session starts and `inbuf` keeps what followed the head.
    fn handshake(
        &mut self,
        io: &mut Io,
        handler: &mut impl Handler,
        now_ns: u64,
    ) -> Result<bool, End> {
        let Stage::Handshaking { key, deflate } = &self.stage else {
            return Ok(true);
        };
        let accepted = match parse_client_response(&self.inbuf, key) {
            Ok(None) => return Ok(false),
            Ok(Some(a)) => a,
            Err(ClientHandshakeError::Status(s)) => {
                return Err(fail(format!("handshake: HTTP {s}")));
            }
            Err(e) => return Err(fail(format!("handshake: {e}"))),
        };
        if accepted.deflate.is_some() && !deflate {
            return Err(fail(
                "handshake: server agreed to deflate, which was not offered",
            ));
        }
        handler.opened(now_ns.saturating_sub(self.started_ns));
        let session = ClientSession::new(
            Rng::new(io.rng.next_u64()),
            MAX_MESSAGE,
            accepted.deflate,
            self.tick(now_ns),
        );
        self.stage = Stage::Open(Box::new(session));
        self.inbuf.drain(..accepted.head_len);
        Ok(true)
    }

    /// Takes the frames from `buffered` and keeps the unconsumed rest in the connection.
    fn frames_buffered(
        &mut self,
        mut buffered: Vec<u8>,
        io: &mut Io,
        handler: &mut impl Handler,
        now_ns: u64,
    ) -> Result<(), End> {
        let used = self.frames(&mut buffered, io, handler, now_ns);
        let used = self.or_flush(used, &mut io.cork)?;
        buffered.drain(..used);
        if buffered.is_empty() && buffered.capacity() > BUF_KEEP {
            buffered = Vec::new();
        }
        self.inbuf = buffered;
        self.flush_cork(&mut io.cork)
    }

    /// On an error, still writes what the session owes (a pong, the answer to a close, the
    /// close frame of a protocol error) before the connection ends.
    fn or_flush(&mut self, r: Result<usize, End>, cork: &mut Vec<u8>) -> Result<usize, End> {
        if let Err(end) = r {
            self.flush_cork(cork)?;
            return Err(end);
        }
        r
    }

    /// Takes every complete frame from `buf`; returns the bytes consumed.
    fn frames(
        &mut self,
        buf: &mut [u8],
        io: &mut Io,
        handler: &mut impl Handler,
        now_ns: u64,
    ) -> Result<usize, End> {
        let now = self.tick(now_ns);
        let Stage::Open(session) = &mut self.stage else {
            return Ok(0);
        };
        let mut pos = 0;
        loop {
            let was_open = session.is_open();
            let step = session
                .handle_input(&mut buf[pos..], &mut self.msg, now, &mut io.cork)
                .map_err(|e| fail(format!("protocol error from the server: {e}")))?;
            pos += step.consumed;
            match step.event {
                None if step.consumed == 0 => return Ok(pos),
                Some(Event::Message(kind)) => {
                    let mut reply = Reply {
                        session,
                        cork: &mut io.cork,
                    };
                    let r = handler.message(kind, &self.msg, &mut reply, now_ns);
                    self.msg.clear();
                    r?;
                }
                // The server closed first: the session answered it; count why.
                Some(Event::Close(frame)) if was_open => {
                    return Err(fail(format!(
                        "closed by the server with code {}",
                        frame.code.map_or("(none)".to_string(), |c| c.0.to_string())
                    )));
                }
                // Pongs were written by the session; our close was acknowledged; pongs to
                // nothing we sent are ignored.
                _ => {}
            }
        }
    }

    /// Queues a message; false once our close frame went out (or before the upgrade).
    pub fn send(&mut self, kind: MessageKind, payload: &[u8], cork: &mut Vec<u8>) -> bool {
        match &mut self.stage {
            Stage::Open(session) => session.send(kind, payload, cork),
            _ => false,
        }
    }

    /// Queues our close frame (1000); false if the connection is not open.
    pub fn close(&mut self, cork: &mut Vec<u8>, now_ns: u64) -> bool {
        let now = self.tick(now_ns);
        match &mut self.stage {
            Stage::Open(session) => session.close(CloseCode::NORMAL, "", now, cork),
            _ => false,
        }
    }

    /// Writes the cork (after anything the connection already had queued) and empties it.
    pub fn flush_cork(&mut self, cork: &mut Vec<u8>) -> Result<(), End> {
        if cork.is_empty() {
            return Ok(());
        }
        if !self.out.is_empty() {
            self.out.extend_from_slice(cork);
            cork.clear();
            return self.flush();
        }
        let mut written = 0;
        let result = loop {
            match write_socket(&mut self.stream, &mut self.tls, &cork[written..]) {
                Ok(n) => {
                    written += n;
                    if written == cork.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(self.io_end(&e)),
            }
        };
        if result.is_ok() {
            self.out.extend_from_slice(&cork[written..]);
        }
        cork.clear();
        result
    }

    /// Whether output is queued that the socket did not take yet (over TLS, also records
    /// rustls holds).
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Reads from the socket (plaintext, over TLS); see `TlsStream::read_plain`.
    fn read_socket(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.stream.read(buf),
            Some(t) => TlsStream {
                tls: t,
                sock: &mut self.stream,
            }
            .read_plain(buf),
        }
    }

    /// Writes what the connection has queued until the socket stops taking it.
    fn flush(&mut self) -> Result<(), End> {
        if let Some(t) = &mut self.tls {
            let flushed = TlsStream {
                tls: t,
                sock: &mut self.stream,
            }
            .flush_tls();
            match flushed {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return Err(self.io_end(&e)),
            }
        }
        let mut written = 0;
        let result = loop {
            if written == self.out.len() {
                break Ok(());
            }
            match write_socket(&mut self.stream, &mut self.tls, &self.out[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(self.io_end(&e)),
            }
        };
        self.out.drain(..written);
        if self.out.is_empty() && self.out.capacity() > BUF_KEEP {
            self.out = Vec::new();
        }
        result
    }

    /// How an end of stream from the server ends the connection.
    fn eof_end(&self) -> End {
        match &self.stage {
            Stage::Open(s) => match s.state() {
                SessionState::Closed => End::Clean,
                SessionState::CloseSent => {
                    fail("close: server ended the stream without a close frame")
                }
                SessionState::Open => fail("closed by the server without a close frame"),
            },
            Stage::Handshaking { .. } => {
                fail("handshake: server closed the connection before answering")
            }
            Stage::Connecting => fail("connect: closed by the server"),
        }
    }

    /// A socket error as a failure cause, named by the stage it happened in.
    fn io_end(&self, e: &io::Error) -> End {
        let phase = match self.status() {
            Status::Connecting => return fail(connect_cause(e)),
            Status::Handshaking => "handshake",
            Status::Open => "open",
            Status::Closing => "close",
        };
        match e.raw_os_error() {
            Some(libc::ECONNRESET) => fail(format!("{phase}: reset by the server")),
            Some(libc::EPIPE) => fail(format!("{phase}: broken pipe")),
            _ => fail(format!("{phase}: {e}")),
        }
    }
}

/// Writes to the socket (through TLS when the connection has it).
fn write_socket(
    stream: &mut TcpStream,
    tls: &mut Option<Box<ClientConnection>>,
    buf: &[u8],
) -> io::Result<usize> {
    match tls {
        None => stream.write(buf),
        Some(t) => TlsStream {
            tls: t,
            sock: stream,
        }
        .write(buf),
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
