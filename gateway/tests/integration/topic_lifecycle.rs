//! Topics come and go (issue 9, finding 1): one client churning through names cannot keep
//! others from new topics (per-connection bound, idle topics forgotten), every topic has an
//! epoch, and a `since` from another epoch or beyond the last seq is answered `reset`.

use std::io::Write;
use std::time::{Duration, Instant};

use gateway::server::Config;
use serde_json::{Value, json};
use tungstenite::Message;

use crate::util::{self, http_request, metric, ws_connect};

type Ws = tungstenite::WebSocket<std::net::TcpStream>;

fn publish(addr: std::net::SocketAddr, topic: &str, body: &str) -> util::Response {
    let req = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_request(addr, req.as_bytes())
}

fn publish_json(addr: std::net::SocketAddr, topic: &str, body: &str) -> Value {
    let r = publish(addr, topic, body);
    assert_eq!(r.status, 200, "{}", r.body_text());
    serde_json::from_slice(&r.body).unwrap()
}

fn next_json(ws: &mut Ws) -> Value {
    loop {
        match util::read_msg(ws).expect("read a message") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON from /ws"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// Sends `count` subscribe/unsubscribe pairs to new names on one `/ws` connection, pipelined,
/// and reads every reply; returns (subscribed, refused for the rate, refused for the limit).
fn churn(addr: std::net::SocketAddr, count: usize) -> (usize, usize, usize) {
    let stream = util::tcp_connect(addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut ws = tungstenite::client(format!("ws://{addr}/ws"), stream.try_clone().unwrap())
        .expect("open /ws")
        .0;
    // Written raw on a clone of the socket while this thread reads the replies.
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        for i in 0..count {
            for cmd in [
                json!({"type": "subscribe", "topic": format!("churn/{i}")}),
                json!({"type": "unsubscribe", "topic": format!("churn/{i}")}),
            ] {
                let payload = cmd.to_string();
                bytes.extend_from_slice(&util::raw::masked(0x1, [1, 2, 3, 4], payload.as_bytes()));
            }
            if bytes.len() > 1 << 20 {
                writer.write_all(&bytes).unwrap();
                bytes.clear();
            }
        }
        writer.write_all(&bytes).unwrap();
    });
    let (mut subscribed, mut rate, mut limit) = (0, 0, 0);
    for _ in 0..count {
        let v = next_json(&mut ws);
        match v["type"].as_str() {
            Some("subscribed") => {
                subscribed += 1;
                assert_eq!(next_json(&mut ws)["type"], "unsubscribed");
            }
            Some("error") => {
                let e = v["error"].as_str().unwrap();
                if e.contains("--topic-rate") {
                    rate += 1;
                } else if e.contains("--max-topics") {
                    limit += 1;
                } else {
                    panic!("{v}");
                }
                // Its unsubscribe: not subscribed.
                assert_eq!(next_json(&mut ws)["type"], "error");
            }
            _ => panic!("{v}"),
        }
    }
    sender.join().unwrap();
    (subscribed, rate, limit)
}

/// A new chat room and a publish to a new topic, as another client and a backend do them.
fn others_are_served(addr: std::net::SocketAddr, n: usize) {
    let mut room = ws_connect(addr, &format!("/ws/chat/newroom{n}"));
    room.send(Message::text("hello")).unwrap();
    assert_eq!(util::read_msg(&mut room).unwrap(), Message::text("hello"));
    let r = publish(addr, &format!("backend/new{n}"), "x");
    assert_eq!(r.status, 200, "{}", r.body_text());
}

#[test]
fn one_client_churning_100k_names_leaves_room_for_others() {
    let server = util::start(Config {
        max_topics: 1000,
        topic_ttl: Duration::from_secs(60),
        topic_burst: 64,
        topic_rate: 10,
        ..util::config()
    });
    let addr = server.local_addr();
    let start = Instant::now();
    let (subscribed, rate, limit) = churn(addr, 100_000);
    let took = start.elapsed();
    eprintln!(
        "churn of 100,000 names on one connection: {took:?}; {subscribed} created, {rate} refused for the rate, {limit} for the limit; {} topics held",
        metric(addr, "gateway_topics")
    );
    assert!((64..1000).contains(&subscribed), "{subscribed} created");
    assert_eq!(subscribed + rate, 100_000);
    assert_eq!(
        metric(addr, "gateway_topics_refused_rate_total"),
        rate as u64
    );
    // The hub never filled: others are served at once.
    let start = Instant::now();
    others_are_served(addr, 0);
    eprintln!(
        "then a new room and a new publish topic: {:?}",
        start.elapsed()
    );
    let page = util::http_get(addr, "/");
    eprintln!("GET / after the churn: {} bytes", page.body.len());
    assert!(page.body.len() < 64 * 1024);
}

#[test]
fn names_a_client_filled_the_hub_with_are_forgotten_and_others_served_within_seconds() {
    // A connection allowed to create as fast as it likes fills the hub: new names are refused
    // until the idle ones are forgotten, a TTL later.
    let server = util::start(Config {
        max_topics: 1000,
        topic_ttl: Duration::from_millis(500),
        topic_burst: 1_000_000,
        ..util::config()
    });
    let addr = server.local_addr();
    let start = Instant::now();
    let (subscribed, rate, limit) = churn(addr, 100_000);
    eprintln!(
        "churn of 100,000 names, unbounded connection: {:?}; {subscribed} created, {limit} refused for the limit",
        start.elapsed()
    );
    assert_eq!(rate, 0);
    assert!(subscribed >= 1000 && limit > 0, "{subscribed} {limit}");
    let filled = Instant::now();
    let served = util::eventually("a new room after the TTL", Duration::from_secs(10), || {
        let r = publish(addr, "backend/new", "x");
        (r.status == 200).then_some(filled.elapsed())
    });
    others_are_served(addr, 1);
    eprintln!("a new publish topic served {served:?} after the hub was full");
    assert!(metric(addr, "gateway_topics") <= 1000);
    assert!(metric(addr, "gateway_topics_forgotten") > 0);
}

#[test]
fn a_forgotten_topic_loses_its_history_and_comes_back_in_a_new_epoch() {
    let server = util::start(Config {
        topic_ttl: Duration::from_millis(300),
        ..util::config()
    });
    let addr = server.local_addr();
    let body = "x".repeat(1000);
    let mut first = Value::Null;
    for seq in 1..=5 {
        first = publish_json(addr, "news/old", &body);
        assert_eq!(first["seq"], seq);
    }
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    assert_eq!(metric(addr, "gateway_history_bytes"), 5000);
    util::eventually("news/old forgotten", Duration::from_secs(10), || {
        (metric(addr, "gateway_topics_forgotten") >= 1).then_some(())
    });
    assert_eq!(
        metric(addr, "gateway_history_bytes"),
        0,
        "its history is freed"
    );
    assert!(server.hub().find("news/old").is_none());
    // A client resuming in the old epoch is told the stream restarted, nothing is replayed.
    let mut ws = ws_connect(addr, "/ws");
    send(
        &mut ws,
        &json!({"type": "subscribe", "topic": "news/old", "since": 5, "epoch": epoch}),
    );
    let ack = next_json(&mut ws);
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("subscribed"), Some(0))
    );
    let new_epoch = ack["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, epoch);
    assert_eq!(
        next_json(&mut ws),
        json!({"type": "reset", "topic": "news/old", "epoch": new_epoch, "seq": 0})
    );
    let again = publish_json(addr, "news/old", "new");
    assert_eq!(
        (again["seq"].as_u64(), again["epoch"].as_str()),
        (Some(1), Some(&*new_epoch))
    );
    let live = next_json(&mut ws);
    assert_eq!(
        (live["seq"].as_u64(), live["data"].as_str()),
        (Some(1), Some("new"))
    );
}

#[test]
fn a_since_from_another_epoch_or_beyond_the_last_seq_is_answered_reset() {
    let server = util::start_default();
    let addr = server.local_addr();
    let mut epoch = String::new();
    for i in 1..=3 {
        epoch = publish_json(addr, "news/eu", &format!("m{i}"))["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    // The right epoch: the replay.
    let mut ws = ws_connect(addr, "/ws");
    send(
        &mut ws,
        &json!({"type": "subscribe", "topic": "news/eu", "since": 1, "epoch": epoch}),
    );
    assert_eq!(
        next_json(&mut ws),
        json!({"type": "subscribed", "topic": "news/eu", "epoch": epoch, "seq": 3, "since": 1})
    );
    for seq in 2..=3 {
        assert_eq!(next_json(&mut ws)["seq"], seq);
    }
    // Another epoch, and a since beyond the last seq (with or without an epoch): reset, no
    // replay, then the live stream.
    let cases = [
        json!({"type": "subscribe", "topic": "news/eu", "since": 1, "epoch": "0123456789ab"}),
        json!({"type": "subscribe", "topic": "news/eu", "since": 7}),
        json!({"type": "subscribe", "topic": "news/eu", "since": 9, "epoch": epoch}),
    ];
    let mut clients = Vec::new();
    for cmd in cases {
        let mut ws = ws_connect(addr, "/ws");
        send(&mut ws, &cmd);
        let ack = next_json(&mut ws);
        assert_eq!(
            (ack["type"].as_str(), ack["seq"].as_u64()),
            (Some("subscribed"), Some(3))
        );
        assert_eq!(
            next_json(&mut ws),
            json!({"type": "reset", "topic": "news/eu", "epoch": epoch, "seq": 3}),
            "{cmd}"
        );
        clients.push(ws);
    }
    publish_json(addr, "news/eu", "m4");
    for ws in clients.iter_mut().chain([&mut ws]) {
        let live = next_json(ws);
        assert_eq!(
            (live["seq"].as_u64(), live["data"].as_str()),
            (Some(4), Some("m4"))
        );
    }
    assert_eq!(metric(addr, "gateway_topic_resets_total"), 3);
}

/// Publishes race the forgetting and re-creation of their topic on every worker: a subscriber
/// of the re-created topic only ever gets messages published to it, never one still in a
/// mailbox for the forgotten one (the ids differ by their generation).
#[test]
fn an_in_flight_message_to_a_forgotten_topic_never_reaches_a_later_one() {
    let server = util::start(Config {
        topic_ttl: Duration::from_millis(1),
        workers: 2,
        ..util::config()
    });
    let addr = server.local_addr();
    for round in 0..50 {
        // Old messages with no subscriber, then the topic goes idle and is forgotten.
        for _ in 0..5 {
            publish_json(addr, "race/t", &format!("old{round}"));
        }
        std::thread::sleep(Duration::from_millis(5));
        server.hub().expire_idle();
        let mut ws = ws_connect(addr, "/ws");
        send(&mut ws, &json!({"type": "subscribe", "topic": "race/t"}));
        let ack = next_json(&mut ws);
        assert_eq!(ack["type"], "subscribed");
        let epoch = ack["epoch"].as_str().unwrap().to_owned();
        let r = publish_json(addr, "race/t", &format!("new{round}"));
        assert_eq!(r["epoch"].as_str(), Some(&*epoch));
        let live = next_json(&mut ws);
        assert_eq!(
            live["data"].as_str(),
            Some(&*format!("new{round}")),
            "round {round}"
        );
        drop(ws);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Requests that are refused create no topic: publishes refused for any reason, upgrades
/// refused or answered without one, a 404.
#[test]
fn refused_requests_create_no_topic() {
    let server = util::start(Config {
        publish_token: Some("secret".into()),
        trust_loopback: false,
        max_message: 10,
        ..util::config()
    });
    let addr = server.local_addr();
    let requests: &[&[u8]] = &[
        b"POST /publish/p/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
        b"POST /publish/p/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: 1\r\n\r\nx",
        b"POST /publish/p/c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Length: 11\r\n\r\n01234567890",
        b"POST /publish/p/d HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n\r\n",
        b"POST /publish/p/e HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"GET /ws/chat/plain HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ws/chat/a/b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"GET /ws/chat/evil HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"GET /ws/file/nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ];
    for req in requests {
        let r = http_request(addr, req);
        assert!(
            r.status >= 400,
            "{} for {}",
            r.status,
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(
        metric(addr, "gateway_topics"),
        0,
        "{:?}",
        server.hub().snapshot()
    );
    // An accepted publish does create one.
    let ok = http_request(
        addr,
        b"POST /publish/p/ok HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    );
    assert_eq!(ok.status, 200);
    assert_eq!(metric(addr, "gateway_topics"), 1);
}
