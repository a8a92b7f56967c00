//! What a token's claims allow: `/ws` subscribe (`topics`) and publish (`publish`), the chat,
//! file and log sockets (403 outside `topics`), chat messages (close 1008 outside `publish`),
//! and `POST /publish` with a JWT whose `publish` claim covers the topic.

use std::fs;
use std::path::PathBuf;

use serde_json::json;

use crate::util::{self, http_request, metric, wait_subscribers};
use crate::{SECRET, grant, hs256, open, read_json, refused, send_json, start_hs, upgrade};

#[test]
fn ws_subscribe_and_publish_follow_the_claims() {
    let server = start_hs();
    let addr = server.local_addr();
    let mut ws = open(addr, "/ws", &hs256(&grant(&["news/*"], &["chat/lobby"])));
    send_json(&mut ws, &json!({"type": "subscribe", "topic": "news/eu"}));
    assert_eq!(read_json(&mut ws)["type"], "subscribed");
    for topic in ["sport/eu", "news/eu/fr", "news"] {
        send_json(&mut ws, &json!({"type": "subscribe", "topic": topic}));
        let reply = read_json(&mut ws);
        assert_eq!(reply["type"], "error", "{topic}: {reply}");
        assert_eq!(reply["topic"], topic);
        assert!(
            reply["error"].as_str().unwrap().contains("topics claim"),
            "{reply}"
        );
        assert!(
            server.hub().find(topic).is_none(),
            "a refused name creates no topic"
        );
    }
    send_json(
        &mut ws,
        &json!({"type": "publish", "topic": "chat/lobby", "data": "hi"}),
    );
    assert_eq!(read_json(&mut ws)["type"], "published");
    send_json(
        &mut ws,
        &json!({"type": "publish", "topic": "chat/other", "data": "hi"}),
    );
    let reply = read_json(&mut ws);
    assert_eq!(reply["type"], "error");
    assert!(
        reply["error"].as_str().unwrap().contains("publish claim"),
        "{reply}"
    );
    assert_eq!(refused(addr, "forbidden"), 4);
    // The connection stays usable after its refusals; a message published to its topic
    // arrives.
    server.hub().publish(
        "news/eu",
        gateway::proto::MessageKind::Text,
        b"live".to_vec().into(),
    );
    let msg = read_json(&mut ws);
    assert_eq!(
        (msg["topic"].as_str(), msg["data"].as_str()),
        (Some("news/eu"), Some("live"))
    );
    // A token without the claims allows nothing.
    let mut bare = open(addr, "/ws", &hs256(&json!({"exp": crate::unix_now() + 60})));
    send_json(&mut bare, &json!({"type": "subscribe", "topic": "news/eu"}));
    assert_eq!(read_json(&mut bare)["type"], "error");
    send_json(
        &mut bare,
        &json!({"type": "publish", "topic": "chat/lobby", "data": "x"}),
    );
    assert_eq!(read_json(&mut bare)["type"], "error");
}

/// A scratch directory with a watched file and a tailed log, removed when dropped.
struct Feeds(PathBuf);

impl Feeds {
    fn new() -> Feeds {
        let dir = std::env::temp_dir().join(format!("gateway-jwt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.txt"), "setting = 1\n").unwrap();
        fs::write(dir.join("app.log"), "").unwrap();
        Feeds(dir)
    }
}

impl Drop for Feeds {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn feed_and_chat_sockets_outside_topics_are_403() {
    let dir = Feeds::new();
    let server = util::start(util::Config {
        jwt_secret: Some(SECRET.to_owned()),
        watch: vec![("config".into(), dir.0.join("config.txt"))],
        tail: vec![("app".into(), dir.0.join("app.log"))],
        ..util::config()
    });
    let addr = server.local_addr();
    let news_only = hs256(&grant(&["news/*"], &["chat/*"]));
    for path in ["/ws/chat/lobby", "/ws/file/config", "/ws/log/app"] {
        let (_, head) = upgrade(addr, path, Some(&news_only));
        assert_eq!(head.status, 403, "{path}");
        assert!(head.body_text().contains("does not allow"), "{path}");
    }
    assert!(
        server.hub().find("chat/lobby").is_none(),
        "a refused room is not created"
    );
    assert_eq!(refused(addr, "forbidden"), 3);
    assert_eq!(metric(addr, "gateway_http_refused_403_total"), 3);
    let covering = hs256(&grant(&["chat/*", "file/config", "log/**"], &[]));
    for path in ["/ws/chat/lobby", "/ws/log/app"] {
        open(addr, path, &covering);
    }
    let mut file = open(addr, "/ws/file/config", &covering);
    file.expect_text("setting = 1\n");
}

#[test]
fn chat_messages_need_the_room_in_publish() {
    let server = start_hs();
    let addr = server.local_addr();
    let mut listener = open(addr, "/ws/chat/lobby", &hs256(&grant(&["chat/lobby"], &[])));
    let mut talker = open(
        addr,
        "/ws/chat/lobby",
        &hs256(&grant(&["chat/*"], &["chat/**"])),
    );
    wait_subscribers(&server, "chat/lobby", 2);
    talker.send_text("hello");
    talker.expect_text("hello");
    listener.expect_text("hello");
    listener.send_text("may I?");
    let reason = listener.expect_close(1008);
    assert!(reason.contains("publish claim"), "{reason}");
    assert_eq!(refused(addr, "forbidden"), 1);
    // Nothing of it reached the room: the talker's next message is the next it sees.
    talker.send_text("again");
    talker.expect_text("again");
}

/// `POST /publish/{topic}` of `hi` with `Authorization: Bearer {bearer}` (if any).
fn post(addr: std::net::SocketAddr, topic: &str, bearer: Option<&str>) -> util::Response {
    let auth = bearer.map_or(String::new(), |b| format!("Authorization: Bearer {b}\r\n"));
    let req = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 2\r\n\
         Connection: close\r\n\r\nhi"
    );
    http_request(addr, req.as_bytes())
}

#[test]
fn post_publish_accepts_a_jwt_that_covers_the_topic() {
    let server = util::start(util::Config {
        jwt_secret: Some(SECRET.to_owned()),
        publish_token: Some("publish-token".to_owned()),
        ..util::config()
    });
    let addr = server.local_addr();
    let mut sub = open(addr, "/ws", &hs256(&grant(&["news/**"], &[])));
    send_json(&mut sub, &json!({"type": "subscribe", "topic": "news/eu"}));
    assert_eq!(read_json(&mut sub)["type"], "subscribed");
    let jwt = hs256(&grant(&[], &["news/*"]));
    let r = post(addr, "news/eu", Some(&jwt));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let msg = read_json(&mut sub);
    assert_eq!(
        (msg["topic"].as_str(), msg["data"].as_str()),
        (Some("news/eu"), Some("hi"))
    );
    let r = post(addr, "chat/lobby", Some(&jwt));
    assert_eq!(
        r.status,
        403,
        "outside the publish claim: {}",
        r.body_text()
    );
    let expired = hs256(&json!({"exp": crate::unix_now() - 5, "publish": ["**"]}));
    let r = post(addr, "news/eu", Some(&expired));
    assert_eq!(r.status, 401, "{}", r.body_text());
    assert!(r.header("www-authenticate").is_some());
    let r = post(addr, "news/eu", Some("not.a.jwt"));
    assert_eq!(r.status, 401, "{}", r.body_text());
    // The publish token and the loopback trust work as before.
    assert_eq!(post(addr, "news/eu", Some("publish-token")).status, 200);
    assert_eq!(post(addr, "news/eu", None).status, 200);
    assert_eq!(refused(addr, "forbidden"), 1);
    assert_eq!(refused(addr, "expired"), 1);
    assert_eq!(refused(addr, "malformed"), 1);
}
