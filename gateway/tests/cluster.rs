//! The cluster bus over a real `redis-server`: several gateways sharing topics.
//!
//! - three nodes, one topic: every subscriber on every node gets every message, in order,
//!   with the same `seq` the publisher was answered; chat rooms span nodes;
//! - a node killed with SIGKILL mid-stream: its client resumes on another node with `since`
//!   and gets everything after it exactly once;
//! - Redis stopped: 503 within 2 s, a `/ws` publish error, `/healthz` 503 after the grace,
//!   clients stay connected; Redis restarted empty: publishing resumes within 10 s, live
//!   subscribers get `reset` then the new stream, a stale `since` gets `reset`.

#[path = "cluster/support.rs"]
mod cluster_support;
#[path = "cluster/redis.rs"]
mod redis;
#[path = "util/mod.rs"]
#[allow(dead_code, unused_imports)]
mod util;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use gateway::server::ServerHandle;
use redis::Redis;
use util::{config, eventually, http_get, http_request, start, ws_connect};

fn node(redis: &Redis) -> ServerHandle {
    let server = start(gateway::server::Config {
        bus: vec![redis.url()],
        bus_grace: Duration::from_secs(1),
        ..config()
    });
    wait_connected(server.local_addr());
    server
}

fn wait_connected(addr: SocketAddr) {
    eventually("the bus connected", Duration::from_secs(10), || {
        http_get(addr, "/healthz")
            .body_text()
            .contains("bus: connected")
            .then_some(())
    });
}

/// POST /publish; returns (status, JSON answer).
fn publish(addr: SocketAddr, topic: &str, body: &str) -> (u16, Value) {
    let req = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = http_request(addr, req.as_bytes());
    let v = serde_json::from_str(resp.body_text()).unwrap_or(Value::Null);
    (resp.status, v)
}

fn next_json(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match util::read_msg(ws).expect("read a message") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A `/ws` client subscribed to `topic` (with `since`/`epoch` if given); returns the
/// `subscribed` answer too.
fn subscriber(
    addr: SocketAddr,
    topic: &str,
    resume: Option<(u64, &str)>,
) -> (WebSocket<TcpStream>, Value) {
    let mut ws = ws_connect(addr, "/ws");
    let mut cmd = json!({"type": "subscribe", "topic": topic});
    if let Some((since, epoch)) = resume {
        cmd["since"] = json!(since);
        cmd["epoch"] = json!(epoch);
    }
    ws.send(Message::text(cmd.to_string())).unwrap();
    let ack = next_json(&mut ws);
    assert_eq!(ack["type"], "subscribed", "{ack}");
    (ws, ack)
}

#[test]
fn three_nodes_one_topic_every_subscriber_gets_every_message_with_the_same_seq() {
    let redis = Redis::start();
    let nodes: Vec<ServerHandle> = (0..3).map(|_| node(&redis)).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.local_addr()).collect();
    let mut subs: Vec<_> = addrs
        .iter()
        .flat_map(|&a| [subscriber(a, "news", None).0, subscriber(a, "news", None).0])
        .collect();
    // Publishers on every node, in turn: one order, one numbering.
    let mut sent = Vec::new();
    for i in 0..30 {
        let body = format!("message {i}");
        let (status, answer) = publish(addrs[i % 3], "news", &body);
        assert_eq!(status, 200, "{answer}");
        sent.push((
            answer["seq"].as_u64().unwrap(),
            answer["epoch"].clone(),
            body,
        ));
    }
    let seqs: Vec<u64> = sent.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    assert!(sent.iter().all(|s| s.1 == sent[0].1), "one epoch");
    for (i, ws) in subs.iter_mut().enumerate() {
        for (seq, _, body) in &sent {
            let m = next_json(ws);
            assert_eq!(
                (m["seq"].as_u64(), m["data"].as_str()),
                (Some(*seq), Some(body.as_str())),
                "subscriber {i}"
            );
        }
    }
    // A chat room spans the nodes too.
    let mut a = ws_connect(addrs[0], "/ws/chat/lobby");
    let mut c = ws_connect(addrs[2], "/ws/chat/lobby");
    a.send(Message::text("hello from node 0")).unwrap();
    for ws in [&mut a, &mut c] {
        match util::read_msg(ws).unwrap() {
            Message::Text(t) => assert_eq!(t.as_str(), "hello from node 0"),
            other => panic!("{other:?}"),
        }
    }
    let metrics = util::http::metrics_text(addrs[1]);
    assert!(
        metrics.contains("gateway_bus_publishes_total"),
        "bus figures in /metrics"
    );
}

#[test]
fn a_client_of_a_killed_node_resumes_on_another_with_since_and_loses_nothing() {
    let redis = Redis::start();
    let mut killed = cluster_support::spawn_node(&redis.url());
    let survivor = node(&redis);
    let b = survivor.local_addr();
    let (mut ws, ack) = subscriber(killed.addr, "orders", None);
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    let mut got = Vec::new();
    for i in 1..=20 {
        let (status, _) = publish(b, "orders", &format!("order {i}"));
        assert_eq!(status, 200);
    }
    // The client processes ten, then its node dies.
    for _ in 0..10 {
        got.push(next_json(&mut ws)["seq"].as_u64().unwrap());
    }
    killed.kill9();
    drop(ws);
    for i in 21..=40 {
        assert_eq!(publish(b, "orders", &format!("order {i}")).0, 200);
    }
    let (mut ws, ack) = subscriber(b, "orders", Some((10, &epoch)));
    assert_eq!(
        ack["epoch"],
        epoch.as_str(),
        "the same numbering on every node"
    );
    assert_eq!(ack["seq"], 40);
    for _ in 11..=40 {
        let m = next_json(&mut ws);
        got.push(m["seq"].as_u64().unwrap());
        assert_eq!(m["data"], format!("order {}", m["seq"]));
    }
    assert_eq!(publish(b, "orders", "order 41").0, 200);
    got.push(next_json(&mut ws)["seq"].as_u64().unwrap());
    assert_eq!(
        got,
        (1..=41).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
}

#[test]
fn redis_down_gives_503s_and_an_empty_restart_resumes_with_a_reset() {
    let mut redis = Redis::start();
    let server = node(&redis);
    let addr = server.local_addr();
    let (mut live, ack) = subscriber(addr, "prices", None);
    let old_epoch = ack["epoch"].as_str().unwrap().to_string();
    for i in 1..=5 {
        assert_eq!(publish(addr, "prices", &format!("p{i}")).0, 200);
    }
    for i in 1..=5 {
        assert_eq!(next_json(&mut live)["seq"], i);
    }
    redis.stop();
    // Publishing fails fast, never hangs, and is never answered 200.
    let t = Instant::now();
    let (status, answer) = publish(addr, "prices", "during the outage");
    assert_eq!(status, 503, "{answer}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "answered in {:?}",
        t.elapsed()
    );
    let mut ws = ws_connect(addr, "/ws");
    ws.send(Message::text(
        json!({"type": "publish", "topic": "prices", "data": "x"}).to_string(),
    ))
    .unwrap();
    let e = next_json(&mut ws);
    assert_eq!(e["type"], "error", "{e}");
    eventually(
        "healthz 503 after the grace",
        Duration::from_secs(5),
        || (http_get(addr, "/healthz").status == 503).then_some(()),
    );
    // Connected clients stay connected.
    live.send(Message::Ping(b"still here".to_vec().into()))
        .unwrap();
    loop {
        if let Message::Pong(p) = util::read_msg(&mut live).unwrap() {
            assert_eq!(&p[..], b"still here");
            break;
        }
    }
    redis.restart();
    let resumed = Instant::now();
    let answer = eventually("publishing resumes", Duration::from_secs(10), || {
        let (status, answer) = publish(addr, "prices", "after");
        (status == 200).then_some(answer)
    });
    assert!(resumed.elapsed() < Duration::from_secs(10));
    let new_epoch = answer["epoch"].as_str().unwrap().to_string();
    assert_ne!(
        new_epoch, old_epoch,
        "Redis lost the numbering: a new epoch"
    );
    // The live subscriber is told, then gets the new stream.
    let reset = next_json(&mut live);
    assert_eq!(
        (reset["type"].as_str(), reset["epoch"].as_str()),
        (Some("reset"), Some(new_epoch.as_str())),
        "{reset}"
    );
    let m = next_json(&mut live);
    assert_eq!(
        (m["seq"].as_u64(), m["data"].as_str()),
        (Some(answer["seq"].as_u64().unwrap()), Some("after"))
    );
    // A client resuming with the old epoch is told to start over, not replayed numbers that
    // now mean other messages.
    let mut stale = ws_connect(addr, "/ws");
    let cmd = json!({"type": "subscribe", "topic": "prices", "since": 3, "epoch": old_epoch});
    stale.send(Message::text(cmd.to_string())).unwrap();
    assert_eq!(next_json(&mut stale)["type"], "subscribed");
    assert_eq!(next_json(&mut stale)["type"], "reset");
    assert!(
        http_get(addr, "/healthz")
            .body_text()
            .contains("bus: connected")
    );
}

#[test]
fn topics_spread_over_several_redis_and_reach_every_node() {
    let shards = [Redis::start(), Redis::start()];
    let urls: Vec<String> = shards.iter().map(Redis::url).collect();
    let nodes: Vec<ServerHandle> = (0..2)
        .map(|_| {
            let server = start(gateway::server::Config {
                bus: urls.clone(),
                ..config()
            });
            wait_connected(server.local_addr());
            server
        })
        .collect();
    // One topic on each shard.
    let topic_on = |shard: usize| {
        (0..)
            .map(|i| format!("sharded/{i}"))
            .find(|t| gateway::bus::shard_of(t, 2) == shard)
            .unwrap()
    };
    let topics = [topic_on(0), topic_on(1)];
    let (a, b) = (nodes[0].local_addr(), nodes[1].local_addr());
    let mut subs: Vec<_> = topics.iter().map(|t| subscriber(a, t, None).0).collect();
    for (t, ws) in topics.iter().zip(&mut subs) {
        for i in 1..=3 {
            let (status, answer) = publish(b, t, &format!("{t} {i}"));
            assert_eq!((status, answer["seq"].as_u64()), (200, Some(i)));
        }
        for i in 1..=3 {
            let m = next_json(ws);
            assert_eq!(
                (m["seq"].as_u64(), m["data"].as_str()),
                (Some(i), Some(format!("{t} {i}").as_str()))
            );
        }
    }
    // Each topic's keys live on its own shard only.
    for (i, r) in shards.iter().enumerate() {
        let mut con = ::redis::Client::open(r.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let keys: Vec<String> = ::redis::cmd("KEYS").arg("gw:*").query(&mut con).unwrap();
        assert!(
            keys.iter().all(|k| k.contains(&topics[i])),
            "shard {i}: {keys:?}"
        );
        assert!(!keys.is_empty(), "shard {i} holds its topic");
    }
}

/// Kills a node's pub/sub and sync connections in Redis (found by their names,
/// `gw-ADDR-sub`, `gw-ADDR-sync`).
fn cut_subscriber(redis: &Redis, node: SocketAddr) {
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let list: String = ::redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
    let mut killed = 0;
    for line in list.lines() {
        let field = |k: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        };
        let name = field("name");
        if name == format!("gw-{node}-sub") || name == format!("gw-{node}-sync") {
            let _: () = ::redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(field("id"))
                .query(&mut con)
                .unwrap();
            killed += 1;
        }
    }
    assert_eq!(
        killed, 2,
        "the node's connections are named in CLIENT LIST:\n{list}"
    );
}

#[test]
fn messages_published_elsewhere_while_a_node_was_cut_off_are_recovered_once() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let (mut ws, _) = subscriber(a.local_addr(), "ticks", None);
    for i in 1..=3 {
        assert_eq!(publish(b.local_addr(), "ticks", &format!("t{i}")).0, 200);
        assert_eq!(next_json(&mut ws)["seq"], i);
    }
    cut_subscriber(&redis, a.local_addr());
    // Published on node b while node a is not subscribed (it reconnects after 50-100 ms).
    for i in 4..=8 {
        assert_eq!(publish(b.local_addr(), "ticks", &format!("t{i}")).0, 200);
    }
    eventually("node a reconnected", Duration::from_secs(10), || {
        (util::metric(a.local_addr(), "gateway_bus_reconnects_total") >= 1).then_some(())
    });
    assert_eq!(publish(b.local_addr(), "ticks", "t9").0, 200);
    for i in 4..=9 {
        let m = next_json(&mut ws);
        assert_eq!(
            (m["seq"].as_u64(), m["data"].as_str()),
            (Some(i), Some(format!("t{i}").as_str())),
            "{m}"
        );
    }
}

#[test]
fn a_hung_redis_gets_publishers_a_503_within_two_seconds_and_then_recovers() {
    let redis = Redis::start();
    let server = node(&redis);
    let addr = server.local_addr();
    assert_eq!(publish(addr, "slow", "before").0, 200);
    // SIGSTOP: Redis keeps its connections and answers nothing.
    redis.freeze(true);
    for _ in 0..3 {
        let t = Instant::now();
        let (status, answer) = publish(addr, "slow", "while Redis hangs");
        assert_eq!(status, 503, "{answer}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "answered in {:?}",
            t.elapsed()
        );
    }
    redis.freeze(false);
    eventually("publishing resumes", Duration::from_secs(10), || {
        (publish(addr, "slow", "after").0 == 200).then_some(())
    });
}

#[test]
fn a_since_older_than_this_nodes_history_is_read_from_redis() {
    let redis = Redis::start();
    // Node a keeps two messages per topic; node b (the publisher) has Redis keep 256.
    let a = start(gateway::server::Config {
        bus: vec![redis.url()],
        history: gateway::topics::HistoryConfig {
            messages: 2,
            ..Default::default()
        },
        ..config()
    });
    wait_connected(a.local_addr());
    let b = node(&redis);
    let (mut first, ack) = subscriber(a.local_addr(), "log/x", None);
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    for i in 1..=10 {
        assert_eq!(
            publish(b.local_addr(), "log/x", &format!("line {i}")).0,
            200
        );
    }
    for i in 1..=10 {
        assert_eq!(next_json(&mut first)["seq"], i);
    }
    // Node a's ring holds 9 and 10; 2 to 8 come from Redis, with no gap and no duplicate.
    let (mut late, ack) = subscriber(a.local_addr(), "log/x", Some((1, &epoch)));
    assert_eq!(ack["seq"], 10);
    for i in 2..=10 {
        let m = next_json(&mut late);
        assert_eq!(
            (m["seq"].as_u64(), m["data"].as_str()),
            (Some(i), Some(format!("line {i}").as_str())),
            "{m}"
        );
    }
    assert_eq!(publish(b.local_addr(), "log/x", "line 11").0, 200);
    assert_eq!(next_json(&mut late)["seq"], 11);
}

#[test]
fn a_backend_pipelines_publishes_on_one_connection_and_gets_every_answer_in_order() {
    use std::io::{BufRead, BufReader, Read, Write};
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let (mut ws, _) = subscriber(a.local_addr(), "backend/feed", None);
    // 150 publishes written at once on one kept-alive connection to node b, which has no
    // subscriber of the topic: more than the new-topic allowance (64) and the 64 a connection
    // may have at the bus, so answers must come in order and none may be refused.
    let mut conn = std::net::TcpStream::connect(b.local_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut batch = Vec::new();
    for i in 1..=150 {
        let body = format!("event {i}");
        batch.extend_from_slice(
            format!(
                "POST /publish/backend/feed HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    conn.write_all(&batch).unwrap();
    let mut reader = BufReader::new(conn);
    for i in 1..=150u64 {
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "answer {i}: {status}");
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["seq"], i, "answers in request order");
    }
    for i in 1..=150u64 {
        let m = next_json(&mut ws);
        assert_eq!(
            (m["seq"].as_u64(), m["data"].as_str()),
            (Some(i), Some(format!("event {i}").as_str()))
        );
    }
}

#[test]
fn numbers_going_back_in_redis_start_a_new_epoch_with_a_reset() {
    let redis = Redis::start();
    let server = node(&redis);
    let addr = server.local_addr();
    let (mut live, ack) = subscriber(addr, "rollback", None);
    let old_epoch = ack["epoch"].as_str().unwrap().to_string();
    for i in 1..=5 {
        assert_eq!(publish(addr, "rollback", &format!("r{i}")).0, 200);
        assert_eq!(next_json(&mut live)["seq"], i);
    }
    // As if Redis came back from an older snapshot: the same epoch, the number at 2.
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = ::redis::cmd("HSET")
        .arg("gw:{rollback}:m")
        .arg("s")
        .arg(2)
        .query(&mut con)
        .unwrap();
    cut_subscriber(&redis, addr);
    let reset = next_json(&mut live);
    assert_eq!(reset["type"], "reset", "{reset}");
    assert_ne!(reset["epoch"], old_epoch.as_str());
    let (status, answer) = publish(addr, "rollback", "after");
    assert_eq!((status, answer["seq"].as_u64()), (200, Some(1)), "{answer}");
    assert_eq!(answer["epoch"], reset["epoch"]);
    let m = next_json(&mut live);
    assert_eq!(
        (m["seq"].as_u64(), m["data"].as_str()),
        (Some(1), Some("after"))
    );
}

#[test]
fn a_watched_file_changed_while_redis_is_down_is_published_once_it_is_back() {
    let mut redis = Redis::start();
    let dir = std::env::temp_dir().join(format!("gw-cluster-feed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("conf.txt");
    std::fs::write(&path, "v1").unwrap();
    let server = start(gateway::server::Config {
        bus: vec![redis.url()],
        watch: vec![("conf".into(), path.clone())],
        ..config()
    });
    let addr = server.local_addr();
    wait_connected(addr);
    let mut ws = ws_connect(addr, "/ws/file/conf");
    let text = |ws: &mut WebSocket<TcpStream>| loop {
        match util::read_msg(ws).unwrap() {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(text(&mut ws), "v1");
    redis.stop();
    std::fs::write(&path, "v2").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    redis.restart();
    // The feed offers it again every second until the bus takes it.
    assert_eq!(text(&mut ws), "v2");
    let _ = std::fs::remove_dir_all(&dir);
}
