//! A connection's request head: the route it names, then an upgrade to a WebSocket, a refusal,
//! a plain answer, or a publish. Every HTTP answer leaves through [`Worker::respond`].

use std::io::{Read, Write};
use std::mem;
use std::net::Shutdown;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::cluster::Waiting;
use super::{Worker, feeds};
use crate::auth::{Refusal as TokenRefusal, unix_now};
use crate::http::command::Denied;
use crate::http::origin::OriginPolicy;
use crate::http::publish::{PublishCheck, PublishPolicy, check_publish};
use crate::http::response::{JSON, Response, TEXT, status_text, write_refusal};
use crate::http::{self as routes, PlainContext, Route};
use crate::proto::handshake::{self, HandshakeError, Request, ServerPolicy};
use crate::server::stats::WorkerStats;
use crate::topics::{INDEX_TOPICS, Joined, Refused, Resume, TopicKind, is_valid_topic};

/// The answer when a new topic would pass `--max-topics`.
pub(super) const TOO_MANY_TOPICS: &str = "the gateway holds its limit of topics (--max-topics)";
/// The answer when a connection creates new topics too fast (`--topic-burst`, `--topic-rate`).
pub(super) const CREATE_RATE: &str =
    "this connection creates new topics too fast (--topic-burst, --topic-rate): retry shortly";
/// The answer to a publish while the workers are behind (`--max-backlog`).
pub(super) const BUSY: &str = "the gateway is delivering a backlog (--max-backlog): retry shortly";

/// The answer over `--max-conns`.
pub(super) const RESPONSE_503_AT_CAPACITY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 31\r\nConnection: close\r\n\r\nserver at its connection limit\n";
/// The answer over `--max-conns-per-ip`.
pub(super) const RESPONSE_503_PER_IP: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 39\r\nConnection: close\r\nRetry-After: 1\r\n\r\ntoo many connections from your address\n";
/// The answer when the process has no file descriptor left (given through the reserve).
pub(super) const RESPONSE_503_NO_FDS: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 31\r\nConnection: close\r\nRetry-After: 1\r\n\r\nserver out of file descriptors\n";

/// What happens to the connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    /// The answer ends the connection (it lingers until the peer closes).
    Close,
    /// The connection waits for its next request (the handshake timeout is its idle timeout).
    KeepAlive,
}

impl Worker {
    /// Handles a request head if it is complete; returns the bytes consumed (0: need more).
    pub(super) fn on_request(&mut self, key: usize, input: &[u8]) -> usize {
        let mut storage = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
        let req = match Request::parse(input, &mut storage) {
            Ok(None) => return 0,
            Ok(Some(req)) => req,
            Err(e) => {
                self.refuse(key, &e);
                return input.len();
            }
        };
        if let Err(e) = req.check_framing() {
            self.refuse(key, &e);
            return input.len();
        }
        let (route, param) = routes::route(req.path());
        if route != Route::Publish && self.owes_publishes(key) {
            // Answers go out in request order: this one waits for the publishes before it.
            self.park(key);
            return 0;
        }
        let head_or_get = req.method == "GET" || req.method == "HEAD";
        if route == Route::Echo && head_or_get && routes::wants_echo_page(&req) {
            self.answer_plain(key, &req, Route::EchoPage, param);
            return input.len();
        }
        if route == Route::Publish {
            return self.publish_request(key, &req, param, input);
        }
        if !route.is_websocket() {
            if req.is_upgrade() {
                self.respond_status(key, 404);
            } else {
                self.answer_plain(key, &req, route, param);
            }
            return input.len();
        }
        match self.upgrade(key, &req, route, param) {
            Ok(()) => req.head_len,
            Err(Refusal::Status(status)) => {
                self.respond_status(key, status);
                input.len()
            }
            Err(Refusal::Handshake(e)) => {
                self.refuse(key, &e);
                input.len()
            }
            Err(Refusal::Token(r)) => {
                self.refuse_token(key, r);
                input.len()
            }
            Err(Refusal::Denied(denied)) => {
                self.respond_denied(key, denied);
                input.len()
            }
        }
    }

    /// Checks and accepts an upgrade, opens the WebSocket and subscribes it where its route
    /// says.
    fn upgrade(
        &mut self,
        key: usize,
        req: &Request<'_, '_>,
        route: Route,
        param: &str,
    ) -> Result<(), Refusal> {
        // A chat room is one topic segment; a file or log socket names a configured feed.
        if route == Route::Chat && (param.contains('/') || !is_valid_topic(param)) {
            return Err(Refusal::Status(404));
        }
        if matches!(route, Route::File | Route::Log)
            && !feeds::configured(&self.shared, route, param)
        {
            return Err(Refusal::Status(404));
        }
        // A command socket is authorized by the publish token or a token naming the command.
        let command_auth = if route == Route::Command {
            Some(self.check_command(req, param)?)
        } else {
            None
        };
        let cfg = &self.config;
        let origins = OriginPolicy {
            allowed: &cfg.allowed_origins,
        };
        let host = req.header("Host");
        let origin_check = |origin: &str| origins.allows(Some(origin), host);
        let policy = ServerPolicy {
            subprotocols: &cfg.subprotocols,
            origin: Some(&origin_check),
            deflate: cfg.deflate,
        };
        let accepted = handshake::accept(req, &policy).map_err(Refusal::Handshake)?;
        // With tokens on, the token must be valid and cover the socket's topic.
        let topic = match route {
            Route::Chat => Some(format!("chat/{param}")),
            Route::File => Some(format!("file/{param}")),
            Route::Log => Some(format!("log/{param}")),
            _ => None,
        };
        let authorized = match command_auth {
            Some(authorized) => authorized,
            None => self
                .check_upgrade_token(req, topic.as_deref())
                .map_err(Refusal::Token)?,
        };
        if route == Route::Command {
            self.reserve_command()?;
        }
        // The room's topic is created (and joined) only for an accepted upgrade, so refused
        // requests create nothing.
        let room = match route {
            Route::Chat => Some(self.chat_room(param)?),
            _ => None,
        };
        let mut resp = mem::take(&mut self.scratch);
        resp.clear();
        accepted.write_response(&mut resp);
        let room = match room {
            Some(Joined::Wait(topic)) => {
                // With a bus: the 101 waits until the room is followed ([`super::cluster`]).
                let response = resp.clone();
                self.scratch = resp;
                let deflate = accepted.deflate;
                let what = Waiting::Chat {
                    topic,
                    response,
                    deflate,
                    authorized,
                };
                let reply = self.wait_for_bus(key, what);
                let bus = self.shared.hub.bus().expect("a wait means a bus").clone();
                bus.follow(topic, format!("chat/{param}").into(), Some(reply), None);
                self.park(key);
                return Ok(());
            }
            Some(Joined::Now(sub)) => Some(sub),
            None => None,
        };
        self.send(key, &[&resp]);
        self.scratch = resp;
        if let Some(at) = self.accepted_at.remove(&key) {
            let handshake = &self.shared.stats.latencies(self.id).handshake;
            handshake.observe(at.elapsed(), 1);
            super::shrink_side(&mut self.accepted_at);
        }
        if let Some(a) = authorized {
            self.auth.insert(key, a);
        }
        self.open(key, route, accepted.deflate);
        match route {
            Route::Chat => self.subscribe_chat(key, room.expect("chat rooms have a topic")),
            Route::File | Route::Log => self.subscribe_feed(key, route, param, req.query()),
            Route::Command => self.start_command(key, param),
            _ => {}
        }
        Ok(())
    }

    /// Joins the room's topic, created now if new; refused (503) while the hub holds its
    /// limit. A chat socket creates at most its room, so it is not charged for it.
    fn chat_room(&self, room: &str) -> Result<Joined, Refusal> {
        let name = format!("chat/{room}");
        let hub = &self.shared.hub;
        match hub.join_or_wait(&name, TopicKind::Stream, Resume::default(), true) {
            Ok((joined, _)) => Ok(joined),
            Err(_) => {
                WorkerStats::add(&self.stats().topics_refused_limit_total, 1);
                Err(Refusal::Status(503))
            }
        }
    }

    fn answer_plain(&mut self, key: usize, req: &Request<'_, '_>, route: Route, param: &str) {
        let shared = self.shared.clone();
        let metrics = || {
            let (messages, bytes) = shared.hub.backlog();
            let mut out = shared.stats.render_prometheus(&[
                (
                    "open_connections",
                    "connections open now",
                    shared.open_conns.load(Ordering::Relaxed) as u64,
                ),
                (
                    "backlog_messages",
                    "published messages posted to workers and not yet delivered",
                    messages as u64,
                ),
                (
                    "backlog_bytes",
                    "bytes of those messages (payload plus a fixed overhead each)",
                    bytes as u64,
                ),
                (
                    "commands_running",
                    "command processes running (spawned, not yet reaped), against --max-commands",
                    shared.running_commands.load(Ordering::Relaxed) as u64,
                ),
                (
                    "topics",
                    "topics held (created by clients, backends or feeds, not yet forgotten)",
                    shared.hub.topic_counts().0 as u64,
                ),
                (
                    "topics_forgotten",
                    "topics forgotten so far after --topic-ttl with no subscriber and no publish",
                    shared.hub.topic_counts().1,
                ),
                (
                    "history_bytes",
                    "payload bytes held in the history of all stream topics (--history-memory)",
                    shared.hub.history_bytes() as u64,
                ),
            ]);
            if let Some(bus) = shared.hub.bus() {
                bus.render_metrics(&mut out);
            }
            out
        };
        let grace = self.config.bus_grace;
        let health = || match shared.hub.bus() {
            None => (200, "ok\n".to_string()),
            Some(bus) => match bus.down_for() {
                None => (200, "ok\nbus: connected\n".to_string()),
                Some(d) if d < grace => (
                    200,
                    format!("ok\nbus: reconnecting ({:.1} s)\n", d.as_secs_f64()),
                ),
                Some(d) => (
                    503,
                    format!("bus: unreachable for {:.1} s\n", d.as_secs_f64()),
                ),
            },
        };
        let topics = |prefix: &str| shared.hub.top_topics(prefix, INDEX_TOPICS);
        let file = |name: &str| feeds::file_view(&shared, name);
        let mut out = mem::take(&mut self.scratch);
        out.clear();
        let ctx = PlainContext {
            metrics: &metrics,
            health: &health,
            topics: &topics,
            file: &file,
            commands: &shared.config.commands,
        };
        let status = routes::respond(req, route, param, &ctx, &mut out);
        self.send_answer(key, status, &out, After::Close);
        self.scratch = out;
    }

    /// A refused handshake: its status, headers and explanation.
    fn refuse(&mut self, key: usize, e: &HandshakeError) {
        let mut out = mem::take(&mut self.scratch);
        out.clear();
        write_refusal(e, &mut out);
        self.send_answer(key, e.status(), &out, After::Close);
        self.scratch = out;
    }

    /// An upgrade refused for its token: 401 with a `WWW-Authenticate` challenge, or 403 for
    /// a topic the token does not cover; the body says which.
    fn refuse_token(&mut self, key: usize, r: TokenRefusal) {
        let challenge = match r {
            TokenRefusal::Missing => &[("WWW-Authenticate", "Bearer")][..],
            TokenRefusal::Forbidden => &[],
            _ => &[("WWW-Authenticate", "Bearer error=\"invalid_token\"")][..],
        };
        let body = format!("{}\n", r.message());
        let response = Response::new(r.status(), TEXT, body.as_bytes()).headers(challenge);
        self.respond(key, &response, After::Close);
    }

    /// A bare status with its reason phrase as the body.
    fn respond_status(&mut self, key: usize, status: u16) {
        let body = status_text(status);
        self.respond(
            key,
            &Response::new(status, TEXT, body.as_bytes()),
            After::Close,
        );
    }

    /// A refused command socket: its status and why, as text.
    fn respond_denied(&mut self, key: usize, denied: Denied) {
        let body = format!("{}\n", denied.reason);
        let headers: &[(&str, &str)] = match denied.status {
            401 => &[("WWW-Authenticate", "Bearer")],
            503 => &[("Retry-After", "1")],
            _ => &[],
        };
        let response = Response::new(denied.status, TEXT, body.as_bytes()).headers(headers);
        self.respond(key, &response, After::Close);
    }

    /// A JSON answer (the publish API).
    pub(super) fn respond_json(
        &mut self,
        key: usize,
        status: u16,
        headers: &[(&str, &str)],
        body: &Value,
        after: After,
    ) {
        let mut text = serde_json::to_vec(body).expect("JSON values serialize");
        text.push(b'\n');
        let mut response = Response::new(status, JSON, &text).headers(headers);
        response.keep_alive = after == After::KeepAlive;
        self.respond(key, &response, after);
    }

    /// Writes one response and counts it; then the connection closes or waits for the next
    /// request.
    fn respond(&mut self, key: usize, response: &Response<'_>, after: After) {
        let mut out = mem::take(&mut self.scratch);
        out.clear();
        response.write(&mut out);
        self.send_answer(key, response.status, &out, after);
        self.scratch = out;
    }

    /// Sends an encoded answer, counts it, and ends or re-arms the connection.
    fn send_answer(&mut self, key: usize, status: u16, bytes: &[u8], after: After) {
        self.count_status(status);
        WorkerStats::add(&self.stats().http_requests_total, 1);
        self.send(key, &[bytes]);
        match after {
            After::Close => self.linger(key),
            After::KeepAlive => {
                self.conns[key].since = self.now;
                self.arm_timer(key);
            }
        }
    }

    fn count_status(&self, status: u16) {
        let s = self.stats();
        let counter = match status {
            400 => &s.http_refused_400_total,
            401 => &s.http_refused_401_total,
            403 => &s.http_refused_403_total,
            411 => &s.http_refused_411_total,
            413 => &s.http_refused_413_total,
            404 => &s.http_refused_404_total,
            405 => &s.http_refused_405_total,
            426 => &s.http_refused_426_total,
            431 => &s.http_refused_431_total,
            other if other >= 400 => &s.http_refused_other_total,
            _ => return,
        };
        WorkerStats::add(counter, 1);
    }

    /// `POST /publish/{topic}`: checks, waits for the whole body, publishes, answers JSON.
    /// Returns the bytes consumed (0: the body is not complete yet).
    fn publish_request(
        &mut self,
        key: usize,
        req: &Request<'_, '_>,
        topic: &str,
        input: &[u8],
    ) -> usize {
        let shared = self.shared.clone();
        let cfg = self.config.clone();
        let verifier = shared.verifier();
        let stats = shared.stats.worker(self.id);
        // A JWT is accepted when its `publish` claim covers the topic.
        let jwt = |token: &str, topic: &str| {
            let checked = verifier
                .as_ref()
                .ok_or(TokenRefusal::Algorithm)?
                .verify(token, unix_now())
                .and_then(|c| {
                    c.allows_publish(topic)
                        .then_some(())
                        .ok_or(TokenRefusal::Forbidden)
                });
            if let Err(r) = checked {
                super::auth::count_refusal(stats, r);
            }
            checked
        };
        let policy = PublishPolicy {
            max_body: cfg.max_message,
            token: cfg.publish_token.as_deref(),
            trust_loopback: cfg.trust_loopback,
            origins: OriginPolicy {
                allowed: &cfg.allowed_origins,
            },
            jwt: verifier.is_some().then_some(&jwt as _),
        };
        let peer = self.conns[key].stream.peer_addr().ok().map(|a| a.ip());
        let (body, kind, end, keep_alive) = match check_publish(req, topic, input, peer, &policy) {
            PublishCheck::Incomplete => return 0,
            PublishCheck::Refused { .. } if self.owes_publishes(key) => {
                // Answers go out in request order: this refusal waits for the publishes before it.
                self.park(key);
                return 0;
            }
            PublishCheck::Refused {
                status,
                headers,
                body,
            } => {
                self.respond_json(key, status, headers, &body, After::Close);
                return input.len();
            }
            PublishCheck::Ready {
                body,
                kind,
                end,
                keep_alive,
            } => (body, kind, end, keep_alive),
        };
        if self.clustered() {
            let consumed = if keep_alive { end } else { input.len() };
            self.publish_clustered(key, topic, kind, body.into(), keep_alive);
            return consumed;
        }
        let may_create = self.may_create_topic(key);
        let r = match self
            .shared
            .hub
            .try_publish(topic, kind, body.into(), may_create)
        {
            Ok((r, created)) => {
                if created {
                    self.created_topic(key);
                }
                r
            }
            Err(Refused::TooManyTopics) => {
                WorkerStats::add(&self.stats().topics_refused_limit_total, 1);
                let body = json!({"error": TOO_MANY_TOPICS, "topic": topic});
                self.respond_json(key, 503, &[], &body, After::Close);
                return input.len();
            }
            Err(refused) => {
                // A backend pipelining publishes keeps its connection: it retries on it.
                let (counter, error) = if refused == Refused::Busy {
                    (&self.stats().publish_refused_busy_total, BUSY)
                } else {
                    (&self.stats().topics_refused_rate_total, CREATE_RATE)
                };
                WorkerStats::add(counter, 1);
                let body = json!({"error": error, "topic": topic});
                let retry = [("Retry-After", "1")];
                if keep_alive {
                    self.respond_json(key, 503, &retry, &body, After::KeepAlive);
                    return end;
                }
                self.respond_json(key, 503, &retry, &body, After::Close);
                return input.len();
            }
        };
        WorkerStats::add(&self.stats().published_total, 1);
        let answer = json!({
            "topic": topic,
            "seq": r.seq,
            "epoch": r.epoch.to_string(),
            "subscribers": r.subscribers,
        });
        if keep_alive {
            self.respond_json(key, 200, &[], &answer, After::KeepAlive);
            end
        } else {
            self.respond_json(key, 200, &[], &answer, After::Close);
            input.len()
        }
    }
}

/// Why an upgrade was not accepted.
pub(super) enum Refusal {
    /// Answered with a bare status (404 for an unknown room, feed or command, 503 at the topic
    /// limit).
    Status(u16),
    /// The handshake itself was refused.
    Handshake(HandshakeError),
    /// The token was missing, invalid, or does not cover the socket's topic (401 or 403).
    Token(TokenRefusal),
    /// A command socket refused (401, 403, 503), with the reason as the body.
    Denied(Denied),
}

/// Answers a connection (503) without giving it a slot: the answer (which fits a fresh
/// socket's send buffer), a FIN, and whatever request bytes already arrived are read, so
/// closing does not reset the connection and destroy the answer. Bytes arriving later can still
/// draw a reset; a client refused this way gets best effort, not a slot.
pub(super) fn refuse_without_slot(stream: &mio::net::TcpStream, response: &[u8]) {
    let mut s = stream;
    let _ = s.write(response);
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match s.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}
