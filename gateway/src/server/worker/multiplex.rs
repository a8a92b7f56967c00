//! The multiplexed `/ws` JSON protocol (docs/PROTOCOL.md): a client message is parsed into a
//! [`Command`] (a pure function, tested alone), then executed against the hub and the worker's
//! subscriptions. Every command gets exactly one reply: `subscribed`, `unsubscribed`,
//! `published` or `error`. With tokens on, a subscribe needs the token's `topics` claim and a
//! publish its `publish` claim to cover the topic; otherwise the reply is an `error`.

use serde_json::{Value, json};

use super::Worker;
use super::delivery::{Replay, Subscribe};
use super::http::{BUSY, CREATE_RATE, TOO_MANY_TOPICS};
use crate::proto::MessageKind;
use crate::server::conn::Phase;
use crate::server::stats::WorkerStats;
use crate::topics::{Joined, Refused, Resume, Style, TopicKind, is_valid_topic};

/// The answer to a subscribe outside the token's `topics` claim.
const NOT_IN_TOPICS: &str = "the token's topics claim does not cover this topic";
/// The answer to a publish outside the token's `publish` claim.
const NOT_IN_PUBLISH: &str = "the token's publish claim does not cover this topic";

/// Topics one `/ws` connection may subscribe to at once.
const MAX_SUBSCRIPTIONS: usize = 64;

/// One client request of the `/ws` protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe {
        topic: String,
        since: Option<u64>,
        epoch: Option<String>,
    },
    Unsubscribe {
        topic: String,
    },
    Publish {
        topic: String,
        data: String,
    },
}

/// Why a message is not a command: the `error` reply's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct BadCommand {
    pub error: String,
    /// The `type` asked for, when the problem is the topic.
    pub request: Option<String>,
    pub topic: Option<String>,
}

fn bad(error: impl Into<String>, topic: Option<&str>) -> BadCommand {
    BadCommand {
        error: error.into(),
        request: None,
        topic: topic.map(str::to_owned),
    }
}

/// Whether clients may publish to a topic over WebSockets (backends use the HTTP API).
fn client_may_publish(topic: &str) -> bool {
    topic.starts_with("chat/")
}

impl Command {
    /// Parses one message of the protocol.
    pub fn parse(kind: MessageKind, payload: &[u8]) -> Result<Command, BadCommand> {
        if kind != MessageKind::Text {
            return Err(bad("commands are JSON text messages", None));
        }
        let cmd: Value =
            serde_json::from_slice(payload).map_err(|e| bad(format!("invalid JSON: {e}"), None))?;
        let ty = cmd.get("type").and_then(Value::as_str).unwrap_or("");
        let Some(topic) = cmd.get("topic").and_then(Value::as_str) else {
            let mut e = bad("missing \"topic\"", None);
            e.request = Some(ty.to_owned());
            return Err(e);
        };
        if !is_valid_topic(topic) {
            return Err(bad("invalid topic name", Some(topic)));
        }
        let topic = topic.to_owned();
        match ty {
            "subscribe" => {
                let since =
                    match cmd.get("since") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(v.as_u64().ok_or_else(|| {
                            bad("\"since\" must be a sequence number", Some(&topic))
                        })?),
                    };
                let epoch = match cmd.get("epoch") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(e)) => Some(e.clone()),
                    Some(_) => return Err(bad("\"epoch\" must be a string", Some(&topic))),
                };
                Ok(Command::Subscribe {
                    topic,
                    since,
                    epoch,
                })
            }
            "unsubscribe" => Ok(Command::Unsubscribe { topic }),
            "publish" => {
                if !client_may_publish(&topic) {
                    return Err(bad(
                        "clients may publish only to chat/* topics",
                        Some(&topic),
                    ));
                }
                let Some(data) = cmd.get("data").and_then(Value::as_str) else {
                    return Err(bad("\"data\" must be a string", Some(&topic)));
                };
                Ok(Command::Publish {
                    topic,
                    data: data.to_owned(),
                })
            }
            other => Err(bad(format!("unknown type {other:?}"), Some(&topic))),
        }
    }
}

impl Worker {
    /// Sends a JSON reply on a `/ws` connection.
    pub(super) fn reply(&mut self, key: usize, value: &Value) {
        let text = serde_json::to_vec(value).expect("JSON values serialize");
        self.send_data(key, MessageKind::Text, &text);
    }

    pub(super) fn reply_error(&mut self, key: usize, error: &str, topic: &str) {
        self.reply(
            key,
            &json!({"type": "error", "error": error, "topic": topic}),
        );
    }

    /// One message of the `/ws` protocol.
    pub(super) fn multiplex_message(&mut self, key: usize, kind: MessageKind, payload: &[u8]) {
        match Command::parse(kind, payload) {
            Ok(cmd) => self.execute(key, cmd),
            Err(e) => {
                let mut reply = json!({"type": "error", "error": e.error});
                if let Some(request) = e.request {
                    reply["request"] = json!(request);
                }
                if let Some(topic) = e.topic {
                    reply["topic"] = json!(topic);
                }
                self.reply(key, &reply);
            }
        }
    }

    fn execute(&mut self, key: usize, cmd: Command) {
        match cmd {
            Command::Subscribe {
                topic,
                since,
                epoch,
            } => {
                let resume = Resume {
                    since,
                    epoch: epoch.as_deref(),
                };
                self.subscribe_command(key, &topic, resume);
            }
            Command::Unsubscribe { topic } => {
                let found = self.shared.hub.find(&topic);
                if found.is_some_and(|id| self.unsubscribe(key, id)) {
                    self.reply(key, &json!({"type": "unsubscribed", "topic": topic}));
                } else {
                    self.reply_error(key, "not subscribed", &topic);
                }
            }
            Command::Publish { topic, data } => {
                if !self.may_publish(key, &topic) {
                    return self.reply_error(key, NOT_IN_PUBLISH, &topic);
                }
                let payload = data.into_bytes().into();
                if self.clustered() {
                    return self.ws_publish_clustered(key, topic, payload);
                }
                let may_create = self.may_create_topic(key);
                let hub = &self.shared.hub;
                let r = match hub.try_publish(&topic, MessageKind::Text, payload, may_create) {
                    Ok((r, created)) => {
                        if created {
                            self.created_topic(key);
                        }
                        r
                    }
                    Err(Refused::TooManyTopics) => {
                        WorkerStats::add(&self.stats().topics_refused_limit_total, 1);
                        return self.reply_error(key, TOO_MANY_TOPICS, &topic);
                    }
                    Err(Refused::CreateRate) => {
                        WorkerStats::add(&self.stats().topics_refused_rate_total, 1);
                        return self.reply_error(key, CREATE_RATE, &topic);
                    }
                    Err(Refused::Busy) => {
                        WorkerStats::add(&self.stats().publish_refused_busy_total, 1);
                        return self.reply_error(key, BUSY, &topic);
                    }
                };
                WorkerStats::add(&self.stats().published_total, 1);
                self.reply(
                    key,
                    &json!({
                        "type": "published",
                        "topic": topic,
                        "epoch": r.epoch.to_string(),
                        "seq": r.seq,
                    }),
                );
            }
        }
    }

    fn subscribe_command(&mut self, key: usize, topic: &str, resume: Resume<'_>) {
        // Everything is checked before the topic is joined, so a refused name creates nothing.
        if !self.may_subscribe(key, topic) {
            return self.reply_error(key, NOT_IN_TOPICS, topic);
        }
        if !matches!(self.conns[key].phase, Phase::Open(_)) {
            return;
        }
        // A topic this connection follows has a subscriber, so it cannot be forgotten (and its
        // id reused by nobody) between this lookup and the join.
        let held = self.shared.hub.find(topic);
        if held.is_some_and(|id| self.topics_of(key).any(|t| t == id)) {
            return self.reply_error(key, "already subscribed", topic);
        }
        if self.topics_of(key).count() + self.subscribes_waiting(key) >= MAX_SUBSCRIPTIONS {
            let error = format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection");
            return self.reply_error(key, &error, topic);
        }
        let may_create = self.may_create_topic(key);
        let hub = &self.shared.hub;
        let sub = match hub.join_or_wait(topic, TopicKind::Stream, resume, may_create) {
            Ok((joined, created)) => {
                if created {
                    self.created_topic(key);
                }
                match joined {
                    Joined::Now(sub) => sub,
                    Joined::Wait(id) => return self.subscribe_waiting(key, id, topic, resume),
                }
            }
            Err(Refused::CreateRate) => {
                WorkerStats::add(&self.stats().topics_refused_rate_total, 1);
                return self.reply_error(key, CREATE_RATE, topic);
            }
            Err(_) => {
                WorkerStats::add(&self.stats().topics_refused_limit_total, 1);
                return self.reply_error(key, TOO_MANY_TOPICS, topic);
            }
        };
        let replay = resume.since.map_or(Replay::None, Replay::Since);
        self.subscribe(
            key,
            sub,
            Subscribe {
                replay,
                style: Style::Envelope,
                announce: Some(topic),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Command, BadCommand> {
        Command::parse(MessageKind::Text, text.as_bytes())
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"news/eu","since":4}"#),
            Ok(Command::Subscribe {
                topic: "news/eu".into(),
                since: Some(4),
                epoch: None,
            })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"a","since":null}"#),
            Ok(Command::Subscribe {
                topic: "a".into(),
                since: None,
                epoch: None,
            })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"a","since":3,"epoch":"0123456789ab"}"#),
            Ok(Command::Subscribe {
                topic: "a".into(),
                since: Some(3),
                epoch: Some("0123456789ab".into()),
            })
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","topic":"a"}"#),
            Ok(Command::Unsubscribe { topic: "a".into() })
        );
        assert_eq!(
            parse(r#"{"type":"publish","topic":"chat/x","data":"hi"}"#),
            Ok(Command::Publish {
                topic: "chat/x".into(),
                data: "hi".into()
            })
        );
    }

    #[test]
    fn bad_commands_say_why() {
        let err = |text: &str| parse(text).unwrap_err().error;
        assert!(err("{").starts_with("invalid JSON"));
        assert_eq!(err(r#"{"type":"subscribe"}"#), "missing \"topic\"");
        assert_eq!(
            parse(r#"{"type":"subscribe"}"#)
                .unwrap_err()
                .request
                .as_deref(),
            Some("subscribe")
        );
        assert_eq!(
            err(r#"{"type":"subscribe","topic":"a//b"}"#),
            "invalid topic name"
        );
        assert_eq!(
            err(r#"{"type":"subscribe","topic":"a","since":-1}"#),
            "\"since\" must be a sequence number"
        );
        assert_eq!(
            err(r#"{"type":"subscribe","topic":"a","since":1,"epoch":7}"#),
            "\"epoch\" must be a string"
        );
        assert_eq!(
            err(r#"{"type":"publish","topic":"news/eu","data":"x"}"#),
            "clients may publish only to chat/* topics"
        );
        assert_eq!(
            err(r#"{"type":"publish","topic":"chat/a","data":1}"#),
            "\"data\" must be a string"
        );
        assert_eq!(
            err(r#"{"type":"nope","topic":"a"}"#),
            "unknown type \"nope\""
        );
        assert_eq!(
            Command::parse(MessageKind::Binary, b"{}")
                .unwrap_err()
                .error,
            "commands are JSON text messages"
        );
    }
}
