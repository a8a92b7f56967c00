//! One [`Client`] on its own poll, driven call by call with deadlines: the fan-out publisher's
//! WebSocket, and the client tests. Same connection code as the event-loop threads, used from
//! straight-line code ("open, send, wait for the echo, close").

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use gateway::proto::MessageKind;
use mio::{Events, Interest, Poll, Token};

use crate::client::{Client, End, Handler, Io, Reply, Status};
use crate::clock::now_ns;
use crate::url::Endpoint;

/// Received messages, kept when asked for.
#[derive(Debug, Default)]
struct Inbox {
    keep: bool,
    messages: VecDeque<(MessageKind, Vec<u8>)>,
    received: u64,
}

impl Handler for Inbox {
    fn opened(&mut self, _handshake_ns: u64) {}

    fn message(
        &mut self,
        kind: MessageKind,
        msg: &[u8],
        _reply: &mut Reply<'_>,
        _now_ns: u64,
    ) -> Result<(), End> {
        self.received += 1;
        if self.keep {
            self.messages.push_back((kind, msg.to_vec()));
        }
        Ok(())
    }
}

/// One client connection with its own poll.
#[derive(Debug)]
pub struct Single {
    poll: Poll,
    events: Events,
    client: Client,
    io: Io,
    inbox: Inbox,
    /// How the connection ended, once it has.
    end: Option<End>,
}

impl Single {
    /// Connects and completes the upgrade within `timeout`. `keep`: keep received messages for
    /// [`Single::recv`] (otherwise they are read and dropped).
    pub fn open(
        target: &Endpoint,
        deflate: bool,
        timeout: Duration,
        keep: bool,
    ) -> Result<Single, String> {
        let now = now_ns();
        let mut client = Client::connect(target.addr, 0, None, now)
            .map_err(|e| crate::sockets::connect_cause(&e).into_owned())?;
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        poll.registry()
            .register(
                client.stream(),
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("epoll: {e}"))?;
        let mut s = Single {
            poll,
            events: Events::with_capacity(8),
            client,
            io: Io::new(
                std::slice::from_ref(target),
                deflate,
                now ^ u64::from(std::process::id()),
            ),
            inbox: Inbox {
                keep,
                ..Inbox::default()
            },
            end: None,
        };
        let deadline = now + timeout.as_nanos() as u64;
        let pending =
            |s: &Single| matches!(s.client.status(), Status::Connecting | Status::Handshaking);
        while pending(&s) {
            s.wait(deadline)?;
            if !pending(&s) {
                // Open: what came with the 101 (even the server's close) is for the caller.
                break;
            }
            s.ended()?;
            if now_ns() >= deadline {
                return Err(if s.client.status() == Status::Connecting {
                    "connect: timed out".into()
                } else {
                    "handshake: timed out".into()
                });
            }
        }
        Ok(s)
    }

    /// Waits for events until `deadline` (at most), and handles the ones that came.
    fn wait(&mut self, deadline: u64) -> Result<(), String> {
        let timeout = Duration::from_nanos(deadline.saturating_sub(now_ns()));
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        let mut ready = (false, false, false);
        for ev in self.events.iter() {
            let hup = ev.is_read_closed() || ev.is_error();
            ready.0 |= ev.is_readable() || hup;
            ready.1 |= ev.is_writable() || ev.is_error();
            ready.2 |= hup;
        }
        if (ready.0 || ready.1) && self.end.is_none() {
            let (readable, writable, hup) = ready;
            let r = self
                .client
                .on_event(readable, writable, hup, &mut self.io, &mut self.inbox);
            self.end = r.err();
        }
        Ok(())
    }

    /// `Err` with the cause once the connection has ended.
    fn ended(&self) -> Result<(), String> {
        match &self.end {
            None => Ok(()),
            Some(End::Clean) => Err("the connection is closed".into()),
            Some(End::Failed(cause)) => Err(cause.to_string()),
        }
    }

    /// Handles whatever has arrived, without waiting.
    pub fn pump(&mut self) -> Result<(), String> {
        self.wait(0)?;
        self.ended()
    }

    /// Sends a message; waits (until `timeout`) for the socket to take it all.
    pub fn send(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(), String> {
        self.ended()?;
        if !self.client.send(kind, payload, &mut self.io.cork) {
            return Err("the connection is closing".into());
        }
        if let Err(end) = self.client.flush_cork(&mut self.io.cork) {
            self.end = Some(end);
        }
        let deadline = now_ns() + timeout.as_nanos() as u64;
        while self.client.has_output() {
            self.ended()?;
            if now_ns() >= deadline {
                return Err("the socket took nothing before the timeout".into());
            }
            self.wait(deadline)?;
        }
        self.ended()
    }

    /// Messages received so far (with `keep`).
    pub fn received(&self) -> u64 {
        self.inbox.received
    }

    /// The next message (with `keep`), waiting until `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<(MessageKind, Vec<u8>), String> {
        let deadline = now_ns() + timeout.as_nanos() as u64;
        loop {
            if let Some(m) = self.inbox.messages.pop_front() {
                return Ok(m);
            }
            self.ended()?;
            if now_ns() >= deadline {
                return Err("no message before the timeout".into());
            }
            self.wait(deadline)?;
        }
    }

    /// The close handshake: our close frame, then the server's and its end of stream, within
    /// `timeout`.
    pub fn close(mut self, timeout: Duration) -> Result<(), String> {
        self.ended()?;
        if self.client.close(&mut self.io.cork, now_ns())
            && let Err(end) = self.client.flush_cork(&mut self.io.cork)
        {
            self.end = Some(end);
        }
        let deadline = now_ns() + timeout.as_nanos() as u64;
        while self.end.is_none() {
            if now_ns() >= deadline {
                return Err("close: no close handshake before the timeout".into());
            }
            self.wait(deadline)?;
        }
        match self.end {
            Some(End::Failed(cause)) => Err(cause.into_owned()),
            _ => Ok(()),
        }
    }
}
