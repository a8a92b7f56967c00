//! Topics and push: chat rooms, the publish API, the multiplexed `/ws` protocol with `since`
//! recovery, and slow consumers. Subscribers are real clients on real sockets; a subscription
//! is known to be registered once the server has answered something on that connection.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::Message;

use crate::util::{self, http_request, metric, wait_subscribers, ws_connect};

/// `POST /publish/{topic}` with `body` and optional extra headers.
fn publish(addr: SocketAddr, topic: &str, body: &[u8], headers: &str) -> util::Response {
    let mut req = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    http_request(addr, &req)
}

fn json_body(r: &util::Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r.body_text()))
}

/// `v` without its `epoch`, which must be there: 12 hex digits.
fn without_epoch(mut v: Value) -> Value {
    let epoch = v.as_object_mut().and_then(|o| o.remove("epoch"));
    let epoch = epoch.as_ref().and_then(Value::as_str).unwrap_or_default();
    assert!(
        epoch.len() == 12 && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
        "epoch {epoch:?} in {v}"
    );
    v
}

fn next_text(ws: &mut tungstenite::WebSocket<std::net::TcpStream>) -> String {
    loop {
        match util::read_msg(ws).expect("read a message") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

fn next_json(ws: &mut tungstenite::WebSocket<std::net::TcpStream>) -> Value {
    serde_json::from_str(&next_text(ws)).expect("JSON from /ws")
}

#[test]
fn three_chat_clients_see_each_others_messages_in_order() {
    let server = util::start_default();
    let addr = server.local_addr();
    let mut clients: Vec<_> = (0..3).map(|_| ws_connect(addr, "/ws/chat/lobby")).collect();
    wait_subscribers(&server, "chat/lobby", 3);
    // Everyone talks at once; the room still has one order, and each speaker's own lines keep
    // the order they were said in.
    for round in 0..20 {
        for (i, c) in clients.iter_mut().enumerate() {
            let text = json!({"username": format!("user{i}"), "message": format!("line {round}")})
                .to_string();
            c.send(Message::text(text)).unwrap();
        }
    }
    let seen: Vec<Vec<String>> = clients
        .iter_mut()
        .map(|c| (0..60).map(|_| next_text(c)).collect())
        .collect();
    assert_eq!(seen[0], seen[1], "clients 0 and 1 saw different orders");
    assert_eq!(seen[0], seen[2], "clients 0 and 2 saw different orders");
    for i in 0..3 {
        let mine: Vec<String> = seen[0]
            .iter()
            .map(|t| serde_json::from_str::<Value>(t).unwrap())
            .filter(|v| v["username"] == format!("user{i}"))
            .map(|v| v["message"].as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (0..20).map(|r| format!("line {r}")).collect();
        assert_eq!(
            mine, expected,
            "user{i}'s lines, relayed unchanged and in order"
        );
    }
}

#[test]
fn a_publish_reaches_1000_subscribers_on_all_workers_exactly_once() {
    let server = util::start_default();
    let addr = server.local_addr();
    let mut subs: Vec<_> = (0..1000)
        .map(|_| ws_connect(addr, "/ws/chat/fanout"))
        .collect();
    wait_subscribers(&server, "chat/fanout", 1000);
    let r = publish(addr, "chat/fanout", b"{\"n\":1}", "");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        without_epoch(json_body(&r)),
        json!({"topic": "chat/fanout", "seq": 1, "subscribers": 1000})
    );
    let r = publish(addr, "chat/fanout", b"{\"n\":2}", "");
    assert_eq!(json_body(&r)["seq"], 2);
    for (i, ws) in subs.iter_mut().enumerate() {
        assert_eq!(next_text(ws), "{\"n\":1}", "subscriber {i}");
        assert_eq!(
            next_text(ws),
            "{\"n\":2}",
            "subscriber {i}: a duplicate or a loss"
        );
    }
    // Both workers served some of the subscribers, and each delivered its share once.
    assert_eq!(metric(addr, "gateway_deliveries_total"), 2000);
    for w in 0..2 {
        assert!(
            server
                .stats()
                .worker(w)
                .deliveries_total
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0,
            "worker {w} idle"
        );
    }
}

#[test]
fn since_recovers_with_no_gap_and_no_duplicate() {
    let server = util::start(util::Config {
        history: gateway::topics::HistoryConfig {
            messages: 5,
            bytes: 1 << 20,
        },
        ..util::config()
    });
    let addr = server.local_addr();
    for i in 1..=8 {
        publish(addr, "news/eu", format!("m{i}").as_bytes(), "");
    }
    let mut ws = ws_connect(addr, "/ws");
    // History holds 4..=8; since 5 replays 6, 7, 8 and then continues live.
    ws.send(Message::text(
        json!({"type": "subscribe", "topic": "news/eu", "since": 5}).to_string(),
    ))
    .unwrap();
    assert_eq!(
        without_epoch(next_json(&mut ws)),
        json!({"type": "subscribed", "topic": "news/eu", "seq": 8, "since": 5})
    );
    for i in 6..=8 {
        assert_eq!(
            next_json(&mut ws),
            json!({"topic": "news/eu", "seq": i, "data": format!("m{i}")})
        );
    }
    publish(addr, "news/eu", b"m9", "");
    assert_eq!(
        next_json(&mut ws),
        json!({"topic": "news/eu", "seq": 9, "data": "m9"})
    );

    // Asking for more than the history holds is answered with an explicit gap.
    let mut late = ws_connect(addr, "/ws");
    late.send(Message::text(
        json!({"type": "subscribe", "topic": "news/eu", "since": 1}).to_string(),
    ))
    .unwrap();
    assert_eq!(next_json(&mut late)["type"], "subscribed");
    assert_eq!(
        next_json(&mut late),
        json!({"type": "gap", "topic": "news/eu", "from": 2, "to": 4})
    );
    let seqs: Vec<u64> = (0..5)
        .map(|_| next_json(&mut late)["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [5, 6, 7, 8, 9]);
}

#[test]
fn since_under_concurrent_publishing_has_no_gap_or_duplicate() {
    let server = util::start(util::Config {
        history: gateway::topics::HistoryConfig {
            messages: 10_000,
            bytes: 16 << 20,
        },
        ..util::config()
    });
    let addr = server.local_addr();
    let hub_publisher = std::thread::scope(|s| {
        let h = s.spawn(|| {
            for i in 1..=2000u32 {
                server.hub().publish(
                    "t/live",
                    gateway::proto::MessageKind::Text,
                    i.to_string().into_bytes().into(),
                );
            }
        });
        std::thread::sleep(Duration::from_millis(2));
        let mut ws = ws_connect(addr, "/ws");
        ws.send(Message::text(
            json!({"type": "subscribe", "topic": "t/live", "since": 0}).to_string(),
        ))
        .unwrap();
        assert_eq!(next_json(&mut ws)["type"], "subscribed");
        h.join().unwrap();
        ws
    });
    let mut ws = hub_publisher;
    for expected in 1..=2000u64 {
        let v = next_json(&mut ws);
        assert_eq!(v["seq"], expected, "{v}");
        assert_eq!(v["data"], expected.to_string());
    }
}

#[test]
fn ws_protocol_errors_are_answered_and_the_connection_stays() {
    let server = util::start_default();
    let addr = server.local_addr();
    let mut ws = ws_connect(addr, "/ws");
    let cases = [
        ("not json", "invalid JSON"),
        (r#"{"type":"subscribe"}"#, "missing \"topic\""),
        (
            r#"{"type":"subscribe","topic":"bad//name"}"#,
            "invalid topic name",
        ),
        (
            r#"{"type":"publish","topic":"news/eu","data":"x"}"#,
            "clients may publish only to chat/* topics",
        ),
        (
            r#"{"type":"unsubscribe","topic":"news/eu"}"#,
            "not subscribed",
        ),
        (r#"{"type":"dance","topic":"news/eu"}"#, "unknown type"),
    ];
    for (cmd, err) in cases {
        ws.send(Message::text(cmd)).unwrap();
        let v = next_json(&mut ws);
        assert_eq!(v["type"], "error", "{cmd}: {v}");
        assert!(v["error"].as_str().unwrap().contains(err), "{cmd}: {v}");
    }
    // Still usable: publish to a chat topic and receive it as a subscriber.
    ws.send(Message::text(
        json!({"type": "subscribe", "topic": "chat/x"}).to_string(),
    ))
    .unwrap();
    assert_eq!(
        without_epoch(next_json(&mut ws)),
        json!({"type": "subscribed", "topic": "chat/x", "seq": 0})
    );
    ws.send(Message::text(
        json!({"type": "publish", "topic": "chat/x", "data": "hi"}).to_string(),
    ))
    .unwrap();
    let mut got = [next_json(&mut ws), next_json(&mut ws)];
    got.sort_by_key(|v| v.get("type").is_some());
    assert_eq!(got[0], json!({"topic": "chat/x", "seq": 1, "data": "hi"}));
    assert_eq!(
        without_epoch(got[1].clone()),
        json!({"type": "published", "topic": "chat/x", "seq": 1})
    );
    ws.send(Message::text(
        json!({"type": "unsubscribe", "topic": "chat/x"}).to_string(),
    ))
    .unwrap();
    assert_eq!(
        next_json(&mut ws),
        json!({"type": "unsubscribed", "topic": "chat/x"})
    );
}

#[test]
fn a_client_that_stops_reading_is_closed_while_a_reader_keeps_receiving() {
    let server = util::start(util::Config {
        max_queued: 64 * 1024,
        ..util::config()
    });
    let addr = server.local_addr();
    // The stalled client subscribes, then never reads again.
    let (mut stalled, resp) = util::try_raw_handshake(addr, "/ws/chat/slow", &[]);
    assert_eq!(resp.status, 101);
    let mut reader = ws_connect(addr, "/ws/chat/slow");
    wait_subscribers(&server, "chat/slow", 2);
    let payload = "x".repeat(4096);
    // Published in batches of 32 KiB that the reader keeps pace with, so only the stalled
    // client falls behind: 16 MiB in all, more than its socket buffers can hide.
    let total = 4000;
    let mut received = 0;
    while received < total {
        for _ in 0..8 {
            server.hub().publish(
                "chat/slow",
                gateway::proto::MessageKind::Text,
                payload.as_bytes().into(),
            );
        }
        for _ in 0..8 {
            assert_eq!(next_text(&mut reader).len(), 4096, "message {received}");
            received += 1;
        }
    }
    assert_eq!(received, total, "the reading subscriber got every message");
    assert_eq!(metric(addr, "gateway_slow_consumers_total"), 1);
    // The stalled client finds, after the frames it had not read, a close 1008.
    let reason = stalled.drain_until_close(1008);
    assert!(reason.contains("slow consumer"), "{reason}");
}

#[test]
fn publish_refusals() {
    let server = util::start(util::Config {
        max_message: 1000,
        publish_token: Some("s3cret".into()),
        trust_loopback: false,
        ..util::config()
    });
    let addr = server.local_addr();
    assert_eq!(publish(addr, "news/eu", b"x", "").status, 401);
    assert_eq!(
        publish(addr, "news/eu", b"x", "Authorization: Bearer nope\r\n").status,
        401
    );
    let ok = publish(addr, "news/eu", b"x", "Authorization: Bearer s3cret\r\n");
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    let auth = "Authorization: Bearer s3cret\r\n";
    assert_eq!(publish(addr, "news/eu", &[b'a'; 1001], auth).status, 413);
    assert_eq!(publish(addr, "news//eu", b"x", auth).status, 400);
    assert_eq!(publish(addr, "../etc", b"x", auth).status, 400);
    let get = http_request(
        addr,
        format!("GET /publish/news/eu HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    );
    assert_eq!(get.status, 405);
    assert_eq!(metric(addr, "gateway_http_refused_401_total"), 2);
    assert_eq!(metric(addr, "gateway_http_refused_413_total"), 1);
    let chunked = http_request(
        addr,
        format!("POST /publish/news/eu HTTP/1.1\r\nHost: {addr}\r\n{auth}Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n").as_bytes(),
    );
    assert_eq!(chunked.status, 411);
    assert_eq!(metric(addr, "gateway_http_refused_411_total"), 1);

    // Without a configured token, only loopback may publish: a "remote" client gets 403.
    let server = util::start(util::Config {
        trust_loopback: false,
        ..util::config()
    });
    assert_eq!(
        publish(server.local_addr(), "news/eu", b"x", "").status,
        403
    );
    // And loopback is trusted by default.
    let server = util::start_default();
    assert_eq!(
        publish(server.local_addr(), "news/eu", b"x", "").status,
        200
    );
}

#[test]
fn a_body_sent_in_pieces_is_published_whole() {
    let server = util::start_default();
    let addr = server.local_addr();
    let mut sub = ws_connect(addr, "/ws/chat/pieces");
    wait_subscribers(&server, "chat/pieces", 1);
    let body = "y".repeat(3000);
    let mut stream = util::tcp_connect(addr);
    write!(
        stream,
        "POST /publish/chat/pieces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body.as_bytes()[..1000]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(&body.as_bytes()[1000..]).unwrap();
    let mut resp = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut resp).unwrap();
    assert!(
        resp.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    assert_eq!(next_text(&mut sub), body);
}

#[test]
fn publish_keeps_the_connection_alive_for_the_next_request() {
    let server = util::start_default();
    let addr = server.local_addr();
    let mut sub = ws_connect(addr, "/ws/chat/keep");
    wait_subscribers(&server, "chat/keep", 1);
    let mut stream = util::tcp_connect(addr);
    // Two requests in one write (pipelined), then a third after the answers.
    let req = |body: &str| {
        format!(
            "POST /publish/chat/keep HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    stream
        .write_all(format!("{}{}", req("one"), req("two")).as_bytes())
        .unwrap();
    let mut answers = String::new();
    let mut buf = [0u8; 4096];
    while answers.matches("HTTP/1.1 200").count() < 2 {
        let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
        assert!(n > 0, "closed after {answers:?}");
        answers.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert!(answers.contains("Connection: keep-alive"), "{answers}");
    assert!(answers.contains("\"seq\":2"), "{answers}");
    stream.write_all(b"POST /publish/chat/keep HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nthree").unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut rest).unwrap();
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.contains("Connection: close"),
        "{rest}"
    );
    for expected in ["one", "two", "three"] {
        assert_eq!(next_text(&mut sub), expected);
    }
}

#[test]
fn clients_cannot_create_topics_past_max_topics() {
    let server = util::start(util::Config {
        max_topics: 2,
        ..util::config()
    });
    let addr = server.local_addr();
    let mut ws = ws_connect(addr, "/ws");
    for t in ["news/a", "news/b"] {
        ws.send(Message::text(
            json!({"type": "subscribe", "topic": t}).to_string(),
        ))
        .unwrap();
        assert_eq!(next_json(&mut ws)["type"], "subscribed");
    }
    ws.send(Message::text(
        json!({"type": "subscribe", "topic": "news/c"}).to_string(),
    ))
    .unwrap();
    let v = next_json(&mut ws);
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["error"].as_str().unwrap().contains("--max-topics"), "{v}");
    // Unsubscribing from an unknown topic creates nothing either.
    ws.send(Message::text(
        json!({"type": "unsubscribe", "topic": "news/d"}).to_string(),
    ))
    .unwrap();
    assert_eq!(next_json(&mut ws)["error"], "not subscribed");
    assert_eq!(publish(addr, "news/c", b"x", "").status, 503);
    assert_eq!(
        publish(addr, "news/a", b"x", "").status,
        200,
        "existing topics stay usable"
    );
    let (_ws, resp) = util::try_raw_handshake(addr, "/ws/chat/new-room", &[]);
    assert_eq!(resp.status, 503);
    assert_eq!(server.hub().snapshot().len(), 2);
}

#[test]
fn pages_and_index() {
    let server = util::start_default();
    let addr = server.local_addr();
    let _sub = ws_connect(addr, "/ws/chat/lobby");
    wait_subscribers(&server, "chat/lobby", 1);
    let page = util::http_get(addr, "/chat/lobby");
    assert_eq!(page.status, 200);
    assert!(page.body_text().contains("/ws/chat/"));
    let index = util::http_get(addr, "/");
    assert!(
        index.body_text().contains("<code>chat/lobby</code>"),
        "{}",
        index.body_text()
    );
    assert!(index.body_text().contains("<td>1</td>"));
    assert_eq!(util::http_get(addr, "/chat/a/b").status, 404);
}

#[test]
fn metrics_have_delivery_and_handshake_latency_histograms() {
    let server = util::start_default();
    let addr = server.local_addr();
    let mut subs: Vec<_> = (0..3).map(|_| ws_connect(addr, "/ws/chat/hist")).collect();
    wait_subscribers(&server, "chat/hist", 3);
    for i in 0..4 {
        let r = publish(addr, "chat/hist", format!("m{i}").as_bytes(), "");
        assert_eq!(r.status, 200);
    }
    for s in &mut subs {
        for i in 0..4 {
            assert_eq!(next_text(s), format!("m{i}"));
        }
    }
    let text = util::http::metrics_text(addr);
    let value = |line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in /metrics:\n{text}"))
    };
    assert_eq!(value("gateway_delivery_latency_seconds_count "), 12.0);
    assert_eq!(
        value("gateway_delivery_latency_seconds_bucket{le=\"+Inf\"} "),
        12.0
    );
    assert!(value("gateway_delivery_latency_seconds_sum ") > 0.0);
    assert_eq!(value("gateway_handshake_seconds_count "), 3.0);
}
