//! The bus's subscriber thread: this node's one pub/sub connection to Redis, on its own mio
//! `Poll`, and a second, ordinary connection for reading topics' state.
//!
//! The workers (through the hub) ask it to follow and unfollow topics ([`super::Follow`]); it
//! subscribes, and when Redis confirms a subscription it reads the topic's epoch, last number
//! and history ([`wire::SYNC_SCRIPT`]) *before reading anything more from the pub/sub socket*:
//! every message published after the confirmation is then either in what was read or still
//! to come on the socket, and [`Hub::apply`] drops the numbers already held. Only then are the
//! subscribers waiting for the topic answered. A message that is not the next number of its
//! topic, or of another epoch, makes the topic sync again the same way.
//!
//! A lost connection (an error, EOF, nothing back within 5 s of a PING sent after 5 s of
//! silence) fails the waiting subscribers and puts the topics it carried out of step in the hub
//! (new subscribers wait for the bus again); the thread reconnects with backoff and jitter, subscribes to every topic it
//! follows again, and syncs each: messages published elsewhere meanwhile are delivered from
//! Redis's history, or announced as a `gap`; a topic Redis lost gets a `reset`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use redis::Value;

use super::{Bus, BusReply, Follow, Outcome, ReplyTo, backoff, unix_millis, wire};
use crate::topics::{Epoch, Hub, TopicId, cluster::Applied};

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);
/// A PING after this long without input; the connection is given up after three.
const PING_AFTER: Duration = Duration::from_secs(5);
/// Channels per SUBSCRIBE command when subscribing again after a reconnect.
const SUBSCRIBE_CHUNK: usize = 256;

/// A topic this node follows.
#[derive(Debug)]
struct Followed {
    id: TopicId,
    /// Confirmed and synced.
    ready: bool,
    /// SUBSCRIBE confirmations still to come for it: it syncs on the last one.
    confirms: u32,
    /// Workers waiting for it to be ready, with the `since` each resumes from.
    waiters: Vec<(ReplyTo, Option<u64>)>,
}

/// The state of the subscriber thread.
pub struct Subscriber {
    bus: Arc<Bus>,
    hub: Arc<Hub>,
    poll: Poll,
    waker: Arc<Waker>,
    stream: Option<TcpStream>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// The ordinary connection, with the sync script's SHA-1.
    sync: Option<(redis::Connection, String)>,
    topics: HashMap<Arc<str>, Followed>,
    attempt: u32,
    retry_at: Instant,
    ever_connected: bool,
    last_input: Instant,
    /// When the PING now unanswered was sent.
    ping_sent: Option<Instant>,
    /// SUBSCRIBE confirmations still to come for topics unfollowed since (they must not make a
    /// later follow of the same name sync early).
    stale: HashMap<Arc<str>, u32>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("connected", &self.stream.is_some())
            .field("topics", &self.topics.len())
            .finish()
    }
}

type Fallible<T> = Result<T, String>;

impl Subscriber {
    pub fn new(bus: Arc<Bus>, hub: Arc<Hub>) -> io::Result<Subscriber> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        Ok(Subscriber {
            bus,
            hub,
            poll,
            waker,
            stream: None,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            sync: None,
            topics: HashMap::new(),
            attempt: 0,
            retry_at: Instant::now(),
            ever_connected: false,
            last_input: Instant::now(),
            ping_sent: None,
            stale: HashMap::new(),
        })
    }

    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(64);
        while !self.bus.stop.load(Ordering::Relaxed) {
            if self.stream.is_none()
                && Instant::now() >= self.retry_at
                && let Err(e) = self.connect()
            {
                self.lost(&e);
            }
            let timeout = if self.stream.is_none() {
                self.retry_at.saturating_duration_since(Instant::now())
            } else {
                PING_AFTER / 2
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                log::error!("bus: subscriber poll failed: {e}");
                return;
            }
            self.take_requests();
            if self.stream.is_some()
                && let Err(e) = self.turn()
            {
                self.lost(&e);
            }
        }
        if let Some(mut s) = self.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
    }

    /// Reads and handles what came, writes what is owed, pings a quiet connection.
    fn turn(&mut self) -> Fallible<()> {
        self.read()?;
        // A PING after PING_AFTER of silence; the connection is given up when nothing at all
        // (not even the PONG) came back PING_AFTER after it.
        match self.ping_sent {
            Some(at) if at.elapsed() >= PING_AFTER => return Err("no answer to PING".into()),
            Some(_) => {}
            None if self.last_input.elapsed() >= PING_AFTER => {
                self.queue(&redis::cmd("PING"));
                self.ping_sent = Some(Instant::now());
            }
            None => {}
        }
        self.flush()
    }

    fn connect(&mut self) -> Fallible<()> {
        let info = self.bus.client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Err("only redis:// (TCP) URLs are supported".into());
        };
        let addr = (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?;
        let std = std::net::TcpStream::connect_timeout(&addr, super::IO_TIMEOUT)
            .map_err(|e| e.to_string())?;
        std.set_nodelay(true).map_err(|e| e.to_string())?;
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut stream = TcpStream::from_std(std);
        self.poll
            .registry()
            .register(&mut stream, SOCKET, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| e.to_string())?;
        let mut con = self
            .bus
            .client
            .get_connection_with_timeout(super::IO_TIMEOUT)
            .map_err(|e| e.to_string())?;
        con.set_read_timeout(Some(super::IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        con.set_write_timeout(Some(super::IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        self.bus
            .client_name("sync")
            .query::<()>(&mut con)
            .map_err(|e| e.to_string())?;
        let sha = super::publisher::load_script(&mut con, wire::SYNC_SCRIPT)
            .map_err(|e| e.to_string())?;
        self.sync = Some((con, sha));
        self.stream = Some(stream);
        self.rbuf.clear();
        self.wbuf.clear();
        self.last_input = Instant::now();
        self.ping_sent = None;
        self.stale.clear();
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            self.queue(auth.arg(password));
        }
        let name = self.bus.client_name("sub");
        self.queue(&name);
        // Everything followed is subscribed again (and synced when confirmed).
        for (id, name) in self.hub.followed() {
            if !self.bus.owns(&name) {
                continue;
            }
            self.topics.entry(name).or_insert(Followed {
                id,
                ready: false,
                confirms: 0,
                waiters: Vec::new(),
            });
        }
        let names: Vec<String> = self.topics.keys().map(|n| wire::channel(n)).collect();
        for chunk in names.chunks(SUBSCRIBE_CHUNK) {
            self.queue(redis::cmd("SUBSCRIBE").arg(chunk));
        }
        for f in self.topics.values_mut() {
            f.ready = false;
            f.confirms = 1;
        }
        if self.ever_connected {
            self.bus
                .stats
                .reconnects_total
                .fetch_add(1, Ordering::Relaxed);
            log::info!("bus: subscriber connected again to {}", self.bus.shown);
        }
        self.ever_connected = true;
        self.attempt = 0;
        self.bus.set_up(&self.bus.subscriber_up, true);
        self.flush()
    }

    /// The connection is lost (or could not be made): waiting subscribers fail, and a
    /// reconnect is scheduled.
    fn lost(&mut self, why: &str) {
        if self.attempt == 0 {
            log::warn!("bus: subscriber lost {}: {why}", self.bus.shown);
        }
        self.bus.stats.errors_total.fetch_add(1, Ordering::Relaxed);
        if let Some(mut s) = self.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        self.sync = None;
        self.bus.set_up(&self.bus.subscriber_up, false);
        let bus = self.bus.clone();
        self.hub.bus_lost(|name| bus.owns(name));
        for f in self.topics.values_mut() {
            f.ready = false;
            for (w, _) in f.waiters.drain(..) {
                answer(&self.hub, w, Outcome::Failed("the bus is unavailable"));
            }
        }
        self.retry_at = Instant::now() + backoff(self.attempt);
        self.attempt += 1;
    }

    /// Follow and unfollow requests from the hub and the workers.
    fn take_requests(&mut self) {
        while let Ok(req) = self.bus.follow_rx.try_recv() {
            match req {
                Follow::Follow {
                    id,
                    name,
                    reply,
                    since,
                } => {
                    if let Err(e) = self.follow(id, name, reply, since) {
                        self.lost(&e);
                    }
                }
                Follow::Unfollow { id, name } => {
                    if self.topics.get(&name).is_none_or(|f| f.id != id) {
                        continue;
                    }
                    let f = self.topics.remove(&name).expect("checked");
                    for (w, _) in f.waiters {
                        answer(&self.hub, w, Outcome::Failed("the topic was left"));
                    }
                    if self.stream.is_some() {
                        if f.confirms > 0 {
                            *self.stale.entry(name.clone()).or_default() += f.confirms;
                        }
                        self.queue(redis::cmd("UNSUBSCRIBE").arg(wire::channel(&name)));
                    }
                }
            }
        }
    }

    fn follow(
        &mut self,
        id: TopicId,
        name: Arc<str>,
        reply: Option<ReplyTo>,
        since: Option<u64>,
    ) -> Fallible<()> {
        let connected = self.stream.is_some();
        if self.topics.get(&name).is_none_or(|f| f.id != id) {
            if connected {
                self.queue(redis::cmd("SUBSCRIBE").arg(wire::channel(&name)));
            }
            self.topics.insert(
                name.clone(),
                Followed {
                    id,
                    ready: false,
                    confirms: u32::from(connected),
                    waiters: Vec::new(),
                },
            );
        }
        let Some(to) = reply else { return Ok(()) };
        let f = self.topics.get_mut(&name).expect("inserted above");
        if !connected {
            answer(&self.hub, to, Outcome::Failed("the bus is unavailable"));
        } else if !f.ready {
            f.waiters.push((to, since));
        } else {
            self.answer_follow(&name, id, to, since)?;
        }
        Ok(())
    }

    /// Answers a subscriber waiting for a followed, synced topic; with `since`, with what
    /// Redis's history holds after it. On an error the subscriber is answered `Failed`.
    fn answer_follow(
        &mut self,
        name: &str,
        id: TopicId,
        to: ReplyTo,
        since: Option<u64>,
    ) -> Fallible<()> {
        let history = match since {
            Some(since) => match self.fetch(name, id, since) {
                Ok(h) => h,
                Err(e) => {
                    answer(&self.hub, to, Outcome::Failed("the bus is unavailable"));
                    return Err(e);
                }
            },
            None => Vec::new(),
        };
        answer_with(&self.hub, to, Outcome::Followed, history);
        Ok(())
    }

    /// The messages of a followed topic's history in Redis after `since`, for a subscriber
    /// whose `since` the history here no longer reaches.
    fn fetch(
        &mut self,
        name: &str,
        id: TopicId,
        since: u64,
    ) -> Fallible<Vec<Arc<crate::topics::Published>>> {
        let Some((Some(epoch), _)) = self.hub.bus_view(id) else {
            return Ok(Vec::new());
        };
        let value = self.sync_call(name, since, Some(epoch), 0)?;
        let (_, _, msgs) = wire::sync_reply(&value)?;
        let history: Vec<wire::Message<'_>> = msgs.iter().filter_map(|b| wire::parse(b)).collect();
        Ok(self.hub.recovered(id, &history))
    }

    /// The sync script for `name`: the topic's epoch, last number and the history after
    /// `since` (all of it if `epoch` is not Redis's).
    fn sync_call(
        &mut self,
        name: &str,
        since: u64,
        epoch: Option<Epoch>,
        last: u64,
    ) -> Fallible<Value> {
        let (con, sha) = self.sync.as_mut().ok_or("no connection")?;
        let [meta, hist] = wire::keys(name);
        let expected = epoch.map_or_else(String::new, |e| e.to_string());
        redis::cmd("EVALSHA")
            .arg(&*sha)
            .arg(2)
            .arg(meta)
            .arg(hist)
            .arg(Epoch::random().to_string())
            .arg(self.bus.ttl_secs)
            .arg(since)
            .arg(expected)
            .arg(last)
            .query(con)
            .map_err(|e| e.to_string())
    }

    fn queue(&mut self, cmd: &redis::Cmd) {
        self.wbuf.extend_from_slice(&cmd.get_packed_command());
    }

    fn flush(&mut self) -> Fallible<()> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        while !self.wbuf.is_empty() {
            match s.write(&self.wbuf) {
                Ok(0) => return Err("the connection closed".into()),
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Reads everything available, handling each complete reply as it is found.
    fn read(&mut self) -> Fallible<()> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let Some(s) = self.stream.as_mut() else {
                return Ok(());
            };
            match s.read(&mut chunk) {
                Ok(0) => return Err("Redis closed the connection".into()),
                Ok(n) => {
                    self.last_input = Instant::now();
                    self.ping_sent = None;
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    self.handle_input()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn handle_input(&mut self) -> Fallible<()> {
        let mut at = 0;
        while let Some(len) = wire::frame_len(&self.rbuf[at..])? {
            let value =
                redis::parse_redis_value(&self.rbuf[at..at + len]).map_err(|e| e.to_string())?;
            at += len;
            self.on_value(value)?;
        }
        self.rbuf.drain(..at);
        Ok(())
    }

    fn on_value(&mut self, value: Value) -> Fallible<()> {
        let items = match value {
            Value::Array(items) => items,
            Value::Push { data, .. } => data,
            Value::ServerError(e) => return Err(format!("Redis: {e:?}")),
            _ => return Ok(()),
        };
        let bulk = |v: Option<&Value>| match v {
            Some(Value::BulkString(b)) => Some(b.clone()),
            _ => None,
        };
        let (Some(kind), Some(channel)) = (bulk(items.first()), bulk(items.get(1))) else {
            return Ok(());
        };
        let Some(name) = wire::topic_of_channel(&channel).map(Arc::<str>::from) else {
            return Ok(());
        };
        match &kind[..] {
            b"message" => {
                let Some(payload) = bulk(items.get(2)) else {
                    return Ok(());
                };
                self.on_message(&name, &payload)
            }
            b"subscribe" => {
                if let Some(n) = self.stale.get_mut(&name) {
                    // The confirmation of a SUBSCRIBE sent before an unfollow.
                    *n -= 1;
                    if *n == 0 {
                        self.stale.remove(&name);
                    }
                    return Ok(());
                }
                let Some(f) = self.topics.get_mut(&name) else {
                    return Ok(());
                };
                f.confirms = f.confirms.saturating_sub(1);
                if f.confirms == 0 && !f.ready {
                    self.sync_topic(&name)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_message(&mut self, name: &Arc<str>, payload: &[u8]) -> Fallible<()> {
        let Some(m) = wire::parse(payload) else {
            log::warn!("bus: a message on {name} is not one of ours; ignored");
            return Ok(());
        };
        self.bus
            .stats
            .received_total
            .fetch_add(1, Ordering::Relaxed);
        let lag = unix_millis().saturating_sub(m.millis);
        self.bus.stats.lag.observe(Duration::from_millis(lag), 1);
        if self.hub.apply(name, &m) == Applied::Behind && self.topics.contains_key(name) {
            self.sync_topic(name)?;
        }
        Ok(())
    }

    /// Brings a topic in step with Redis (see the module doc); then answers its waiters.
    fn sync_topic(&mut self, name: &Arc<str>) -> Fallible<()> {
        let Some(id) = self.topics.get(name).map(|f| f.id) else {
            return Ok(());
        };
        let Some((epoch, last)) = self.hub.bus_view(id) else {
            return Ok(());
        };
        let last = if epoch.is_some() { last } else { 0 };
        let value = self.sync_call(name, last, epoch, last)?;
        let (new_epoch, seq, msgs) = wire::sync_reply(&value)?;
        let history: Vec<wire::Message<'_>> = msgs.iter().filter_map(|b| wire::parse(b)).collect();
        let stats = &self.bus.stats;
        stats.syncs_total.fetch_add(1, Ordering::Relaxed);
        let (gap, reset) = self.hub.synced(id, new_epoch, seq, &history);
        stats
            .gaps_total
            .fetch_add(u64::from(gap), Ordering::Relaxed);
        stats
            .resets_total
            .fetch_add(u64::from(reset), Ordering::Relaxed);
        let waiters = match self.topics.get_mut(name) {
            Some(f) => {
                f.ready = true;
                std::mem::take(&mut f.waiters)
            }
            None => Vec::new(),
        };
        let mut failed = None;
        for (w, since) in waiters {
            if failed.is_some() {
                answer(&self.hub, w, Outcome::Failed("the bus is unavailable"));
            } else if let Err(e) = self.answer_follow(name, id, w, since) {
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

fn answer(hub: &Hub, to: ReplyTo, outcome: Outcome) {
    answer_with(hub, to, outcome, Vec::new());
}

fn answer_with(
    hub: &Hub,
    to: ReplyTo,
    outcome: Outcome,
    history: Vec<Arc<crate::topics::Published>>,
) {
    hub.reply(
        to.worker,
        BusReply {
            wait: to.wait,
            outcome,
            history,
        },
    );
}
