//! The worker's side of topics: delivering published messages to local subscribers, slow
//! consumers, chat rooms, the publish API and the multiplexed `/ws` JSON protocol
//! (docs/PROTOCOL.md).

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::Worker;
use crate::proto::close::encode_close_payload;
use crate::proto::handshake::{Request, write_http_response};
use crate::proto::{CloseCode, Deflater, HeaderBuf, MessageKind, OpCode};
use crate::server::conn::Phase;
use crate::server::stats::WorkerStats;
use crate::topics::local::Sub;
use crate::topics::{Published, Style, ToWorker, TopicId, TopicKind, is_valid_topic};

/// The answer when a new topic would pass `--max-topics`.
const TOO_MANY_TOPICS: &str = "the gateway holds its limit of topics (--max-topics)";

/// Topics one `/ws` connection may subscribe to at once.
const MAX_SUBSCRIPTIONS: usize = 64;

/// Whether clients may publish to a topic over WebSockets (backends use the HTTP API).
fn client_may_publish(topic: &str) -> bool {
    topic.starts_with("chat/")
}

impl Worker {
    /// Delivers everything the hub has sent since the last turn.
    pub(super) fn drain_mailbox(&mut self) {
        while let Ok(ToWorker::Publish(msg)) = self.mailbox.try_recv() {
            self.deliver(&msg);
        }
    }

    fn deliver(&mut self, msg: &Arc<Published>) {
        let mut due = std::mem::take(&mut self.due_subs);
        due.clear();
        self.local.deliver(msg, &mut due);
        for sub in &due {
            self.deliver_to(sub, msg);
        }
        WorkerStats::add(
            &self.shared.stats.worker(self.id).deliveries_total,
            due.len() as u64,
        );
        self.due_subs = due;
    }

    /// Queues (or writes) one message's frame to one subscriber.
    pub(super) fn deliver_to(&mut self, sub: &Sub, msg: &Arc<Published>) {
        let key = sub.key as usize;
        if !self.is_live(key, sub.generation) {
            return;
        }
        let Phase::Open(ws) = &self.conns[key].phase else {
            return;
        };
        if ws.close_sent {
            return;
        }
        let min = self.shared.config.deflate.min_size;
        let level = self.shared.config.deflate.level;
        let frame = match ws.send_deflate {
            Some(bits) if msg.payload.len() >= min => {
                let d = self.deflaters[usize::from(bits.clamp(8, 15) - 8)]
                    .get_or_insert_with(|| Deflater::new(bits, true, level));
                msg.frame(sub.style, Some((bits, d)))
            }
            _ => msg.frame(sub.style, None),
        };
        self.send_shared(key, frame, msg.topic, msg.topic_kind == TopicKind::Latest);
        self.reap(key);
    }

    /// Sends a shared frame: written now if nothing is queued, else queued by reference.
    fn send_shared(&mut self, key: usize, frame: Arc<[u8]>, topic: TopicId, latest: bool) {
        self.flush_cork(key);
        let max_queued = self.shared.config.max_queued;
        let conn = &mut self.conns[key];
        if conn.dead || conn.write_shut {
            return;
        }
        let mut written = 0;
        if conn.queued() == 0 {
            match self.write_direct(key, &[&frame]) {
                Some(n) if n == frame.len() => return,
                Some(n) => written = n,
                None => return,
            }
        }
        let conn = &mut self.conns[key];
        let out = conn
            .out
            .get_or_insert_with(|| self.outboxes.pop().unwrap_or_default());
        out.push_shared(frame, topic, latest, written);
        // "Latest value" topics replace what is queued, so only stream topics can fall behind.
        if !latest && out.queued() > max_queued {
            self.close_slow(key);
        }
    }

    /// Closes a subscriber that fell more than `--max-queued` bytes behind: what it has not
    /// started receiving is dropped, and a close 1008 follows the frame in progress.
    fn close_slow(&mut self, key: usize) {
        WorkerStats::add(&self.shared.stats.worker(self.id).slow_consumers_total, 1);
        let queued = self.conns[key].queued();
        if let Some(out) = self.conns[key].out.as_mut() {
            out.discard_unstarted(&mut self.pool);
        }
        let reason = format!(
            "slow consumer: over {} bytes queued",
            queued.min(self.shared.config.max_queued)
        );
        self.send_close(key, CloseCode::POLICY, &reason);
    }

    /// Sends a close frame (once) and lets the connection linger until the peer answers.
    pub(super) fn send_close(&mut self, key: usize, code: CloseCode, reason: &str) {
        let Phase::Open(ws) = &mut self.conns[key].phase else {
            return;
        };
        if !ws.close_sent {
            ws.close_sent = true;
            let mut payload = [0u8; 125];
            let n = encode_close_payload(&mut payload, code, reason);
            self.send_parts(
                key,
                &[
                    HeaderBuf::new(OpCode::Close, false, None, n).as_bytes(),
                    &payload[..n],
                ],
            );
        }
        self.linger(key);
    }

    /// Subscribes a fresh `/ws/chat/{room}` connection to its room's topic.
    pub(super) fn subscribe_chat(&mut self, key: usize, room: TopicId) {
        self.subscribe(key, room, None, Style::Raw, None);
    }

    /// Registers a subscription. On `/ws` (`announce` names the topic) the client is told the
    /// sequence number the live stream continues after, and of any gap in the history; then the
    /// history after `since` is replayed, then live delivery starts with no gap or duplicate.
    fn subscribe(
        &mut self,
        key: usize,
        topic: TopicId,
        since: Option<u64>,
        style: Style,
        announce: Option<&str>,
    ) {
        let sub = self.shared.hub.subscribe(topic, since);
        let generation = self.conns[key].generation;
        if let Phase::Open(ws) = &mut self.conns[key].phase {
            ws.topics.push(topic);
        }
        if let Some(name) = announce {
            let mut ack = json!({"type": "subscribed", "topic": name, "seq": sub.last_seq});
            if let Some(since) = since {
                ack["since"] = json!(since);
            }
            self.reply(key, &ack);
            if let Some(first_available) = sub.gap_until {
                let from = since.unwrap_or(0) + 1;
                self.reply(
                    key,
                    &json!({"type": "gap", "topic": name, "from": from, "to": first_available - 1}),
                );
            }
        }
        for msg in &sub.replay {
            self.deliver_to(
                &Sub {
                    key: key as u32,
                    generation,
                    last_seq: 0,
                    style,
                },
                msg,
            );
        }
        self.local.add(
            topic,
            Sub {
                key: key as u32,
                generation,
                last_seq: sub.last_seq,
                style,
            },
        );
    }

    fn unsubscribe(&mut self, key: usize, topic: TopicId) -> bool {
        let generation = self.conns[key].generation;
        let Phase::Open(ws) = &mut self.conns[key].phase else {
            return false;
        };
        let Some(i) = ws.topics.iter().position(|&t| t == topic) else {
            return false;
        };
        ws.topics.swap_remove(i);
        self.local.remove(topic, key as u32, generation);
        self.shared.hub.unsubscribe(topic);
        true
    }

    /// A chat client said something: everyone in the room hears it, the sender included.
    pub(super) fn chat_message(&mut self, key: usize, kind: MessageKind, payload: &[u8]) {
        let Phase::Open(ws) = &self.conns[key].phase else {
            return;
        };
        let Some(&room) = ws.topics.first() else {
            return;
        };
        self.shared.hub.publish_id(room, kind, payload.into());
        WorkerStats::add(&self.shared.stats.worker(self.id).published_total, 1);
    }

    /// Sends a JSON reply on a `/ws` connection.
    fn reply(&mut self, key: usize, value: &Value) {
        let text = serde_json::to_vec(value).expect("JSON values serialize");
        self.send_message(key, MessageKind::Text, &text);
    }

    /// One command of the `/ws` protocol.
    pub(super) fn multiplex_message(&mut self, key: usize, kind: MessageKind, payload: &[u8]) {
        if kind != MessageKind::Text {
            return self.reply(
                key,
                &json!({"type": "error", "error": "commands are JSON text messages"}),
            );
        }
        let cmd: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                return self.reply(
                    key,
                    &json!({"type": "error", "error": format!("invalid JSON: {e}")}),
                );
            }
        };
        let ty = cmd.get("type").and_then(Value::as_str).unwrap_or("");
        let Some(topic) = cmd.get("topic").and_then(Value::as_str).map(str::to_owned) else {
            return self.reply(
                key,
                &json!({"type": "error", "error": "missing \"topic\"", "request": ty}),
            );
        };
        if !is_valid_topic(&topic) {
            return self.reply(
                key,
                &json!({"type": "error", "error": "invalid topic name", "topic": topic}),
            );
        }
        match ty {
            "subscribe" => {
                let since = match cmd.get("since") {
                    None | Some(Value::Null) => None,
                    Some(v) => match v.as_u64() {
                        Some(n) => Some(n),
                        None => {
                            return self.reply(key, &json!({"type": "error", "error": "\"since\" must be a sequence number", "topic": topic}));
                        }
                    },
                };
                let Some(hub_id) = self.shared.hub.try_topic(&topic, TopicKind::Stream) else {
                    return self.reply(key, &json!({"type": "error", "error": TOO_MANY_TOPICS, "topic": topic}));
                };
                let Phase::Open(ws) = &self.conns[key].phase else { return };
                if ws.topics.contains(&hub_id) {
                    return self.reply(key, &json!({"type": "error", "error": "already subscribed", "topic": topic}));
                }
                if ws.topics.len() >= MAX_SUBSCRIPTIONS {
                    return self.reply(key, &json!({"type": "error", "error": format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"), "topic": topic}));
                }
                self.subscribe(key, hub_id, since, Style::Envelope, Some(&topic));
            }
            "unsubscribe" => {
                let found = self.shared.hub.find(&topic);
                if found.is_some_and(|id| self.unsubscribe(key, id)) {
                    self.reply(key, &json!({"type": "unsubscribed", "topic": topic}));
                } else {
                    self.reply(key, &json!({"type": "error", "error": "not subscribed", "topic": topic}));
                }
            }
            "publish" => {
                if !client_may_publish(&topic) {
                    return self.reply(key, &json!({"type": "error", "error": "clients may publish only to chat/* topics", "topic": topic}));
                }
                let Some(data) = cmd.get("data").and_then(Value::as_str) else {
                    return self.reply(key, &json!({"type": "error", "error": "\"data\" must be a string", "topic": topic}));
                };
                let Some(r) = self.shared.hub.try_publish(&topic, MessageKind::Text, data.as_bytes().into()) else {
                    return self.reply(key, &json!({"type": "error", "error": TOO_MANY_TOPICS, "topic": topic}));
                };
                WorkerStats::add(&self.shared.stats.worker(self.id).published_total, 1);
                self.reply(key, &json!({"type": "published", "topic": topic, "seq": r.seq}));
            }
            other => self.reply(key, &json!({"type": "error", "error": format!("unknown type {other:?}"), "topic": topic})),
        }
    }

    /// `POST /publish/{topic}`: checks, waits for the whole body, publishes, answers JSON.
    /// Returns the bytes consumed (0: the body is not complete yet).
    pub(super) fn publish_request(
        &mut self,
        key: usize,
        req: &Request<'_, '_>,
        topic: &str,
        input: &[u8],
    ) -> usize {
        let cfg = &self.shared.config;
        if req.method != "POST" {
            self.answer(
                key,
                405,
                &[("Allow", "POST")],
                &json!({"error": "publish with POST"}),
            );
            return input.len();
        }
        if let Err(status) = self.authorize(key, req) {
            let headers: &[(&str, &str)] = if status == 401 {
                &[("WWW-Authenticate", "Bearer")]
            } else {
                &[]
            };
            let why = if status == 401 {
                "missing or wrong bearer token"
            } else {
                "only loopback clients may publish (no token configured)"
            };
            self.answer(key, status, headers, &json!({"error": why}));
            return input.len();
        }
        if !is_valid_topic(topic) {
            self.answer(
                key,
                400,
                &[],
                &json!({"error": "invalid topic name", "topic": topic}),
            );
            return input.len();
        }
        if req.header("Transfer-Encoding").is_some() {
            self.answer(
                key,
                411,
                &[],
                &json!({"error": "send the body with Content-Length"}),
            );
            return input.len();
        }
        let len = match req.content_length() {
            Ok(n) => n,
            Err(e) => {
                self.answer(key, 400, &[], &json!({"error": e.to_string()}));
                return input.len();
            }
        };
        if len > cfg.max_message {
            let limit = cfg.max_message;
            self.answer(
                key,
                413,
                &[],
                &json!({"error": format!("body over the {limit}-byte limit")}),
            );
            return input.len();
        }
        let end = req.head_len + len;
        if input.len() < end {
            return 0;
        }
        let body = &input[req.head_len..end];
        let kind = if std::str::from_utf8(body).is_ok() {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        let Some(r) = self.shared.hub.try_publish(topic, kind, body.into()) else {
            self.answer(
                key,
                503,
                &[],
                &json!({"error": TOO_MANY_TOPICS, "topic": topic}),
            );
            return input.len();
        };
        WorkerStats::add(&self.shared.stats.worker(self.id).published_total, 1);
        let body = json!({"topic": topic, "seq": r.seq, "subscribers": r.subscribers});
        // HTTP/1.1 keeps the connection unless the client says close: a backend publishing a
        // stream of messages pays for one TCP handshake, not one per message.
        if req.version >= 1 && !req.has_token("Connection", "close") {
            self.answer_keep_alive(key, &body);
            return end;
        }
        self.answer(key, 200, &[], &body);
        input.len()
    }

    /// A 200 JSON answer after which the connection waits for the next request. The handshake
    /// timeout doubles as the idle timeout of such a connection.
    fn answer_keep_alive(&mut self, key: usize, body: &Value) {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let mut text = serde_json::to_vec(body).expect("JSON values serialize");
        text.push(b'\n');
        write_http_response(&mut out, 200, &[], "application/json", &text, true);
        WorkerStats::add(&self.shared.stats.worker(self.id).http_requests_total, 1);
        self.send_parts(key, &[&out]);
        self.scratch = out;
        self.conns[key].since = self.now;
        self.arm_timer(key);
    }

    /// Loopback clients are trusted (unless configured otherwise); others need the token.
    fn authorize(&self, key: usize, req: &Request<'_, '_>) -> Result<(), u16> {
        let cfg = &self.shared.config;
        let presented = req
            .header("Authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let loopback = self.conns[key]
            .stream
            .peer_addr()
            .map(|a| is_loopback(a.ip()))
            .unwrap_or(false);
        match (&cfg.publish_token, presented) {
            (Some(token), Some(p)) if constant_time_eq(token.as_bytes(), p.as_bytes()) => Ok(()),
            (Some(_), Some(_)) => Err(401),
            _ if loopback && cfg.trust_loopback => Ok(()),
            (Some(_), None) => Err(401),
            (None, _) => Err(403),
        }
    }

    /// A JSON answer to a plain request; the connection then closes.
    fn answer(&mut self, key: usize, status: u16, headers: &[(&str, &str)], body: &Value) {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let mut text = serde_json::to_vec(body).expect("JSON values serialize");
        text.push(b'\n');
        write_http_response(&mut out, status, headers, "application/json", &text, false);
        self.count_status(status);
        WorkerStats::add(&self.shared.stats.worker(self.id).http_requests_total, 1);
        self.send_parts(key, &[&out]);
        self.scratch = out;
        self.linger(key);
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Compares secrets without an early exit that would leak how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
