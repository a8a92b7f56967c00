//! The history of all topics together is capped (`--history-memory`, issue 9 finding 2): far
//! more history published than the cap leaves at most the cap held (`gateway_history_bytes`),
//! the oldest history across topics goes first, and a `since` that needed it gets `gap`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::util::{self, metric};

/// Publishes `bodies` to `topic`s in order over one kept-alive connection (pipelined).
fn publish_all(addr: SocketAddr, messages: &[(String, Vec<u8>)]) {
    let mut stream = util::tcp_connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let mut reqs = Vec::new();
    for (i, (topic, body)) in messages.iter().enumerate() {
        let close = if i + 1 == messages.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        let head = format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\n{close}Content-Length: {}\r\n\r\n",
            body.len()
        );
        reqs.extend_from_slice(head.as_bytes());
        reqs.extend_from_slice(body);
    }
    let sender = std::thread::spawn(move || writer.write_all(&reqs).unwrap());
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    sender.join().unwrap();
    let ok = raw.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert_eq!(ok, messages.len(), "every publish answered 200");
}

/// Subscribes with `since` on `/ws`; returns the `gap` notice if one came, and the sequence
/// numbers replayed.
fn since(ws: &mut WebSocket<TcpStream>, topic: &str, since: u64) -> (Option<Value>, Vec<u64>) {
    let cmd = json!({"type": "subscribe", "topic": topic, "since": since});
    ws.send(Message::text(cmd.to_string())).unwrap();
    let mut gap = None;
    let mut seqs = Vec::new();
    let mut last = None;
    loop {
        let Message::Text(t) = util::read_msg(ws).expect("read /ws") else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str() {
            Some("subscribed") => last = v["seq"].as_u64(),
            Some("gap") => gap = Some(v),
            _ => seqs.push(v["seq"].as_u64().unwrap()),
        }
        // Done once the gap and the replay reach the last sequence number.
        let gap_to = gap.as_ref().and_then(|g| g["to"].as_u64());
        let covered = seqs.last().copied().max(gap_to).unwrap_or(since);
        if last.is_some_and(|l| covered >= l) {
            return (gap, seqs);
        }
    }
}

#[test]
fn history_of_all_topics_together_stays_under_the_cap() {
    let cap = 256 * 1024;
    let server = util::start(util::Config {
        history_memory: cap,
        ..util::config()
    });
    let addr = server.local_addr();
    // 40 topics x 8 messages x 8 KiB = 2.5 MiB, ten times the cap; topic by topic, so the
    // first topics hold the oldest history.
    let messages: Vec<(String, Vec<u8>)> = (0..40)
        .flat_map(|t| (0..8).map(move |m| (format!("h/{t}"), vec![b'a' + m as u8; 8192])))
        .collect();
    publish_all(addr, &messages);
    let held = metric(addr, "gateway_history_bytes");
    eprintln!("history bytes after publishing 2.5 MiB under a 256 KiB cap: {held}");
    assert!(held <= cap as u64, "history holds {held} bytes, cap {cap}");
    assert!(
        held >= cap as u64 / 2,
        "the cap evicts only what it must: {held}"
    );
    let mut ws = util::ws_connect(addr, "/ws");
    let (gap, seqs) = since(&mut ws, "h/0", 0);
    let gap = gap.expect("the oldest topic's history is gone: a gap notice");
    assert_eq!(
        (gap["from"].as_u64(), gap["to"].as_u64()),
        (Some(1), Some(8))
    );
    assert!(seqs.is_empty(), "nothing left to replay: {seqs:?}");
    let (gap, seqs) = since(&mut ws, "h/39", 0);
    assert_eq!(gap, None, "the newest topic keeps its history");
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
}
