//! A tokio-tungstenite echo + broadcast server, the way a typical Rust user writes one: one
//! task per connection (two for chat: a reader and a writer fed by a broadcast channel), a
//! global map of rooms behind a mutex, default buffer sizes. It serves the same URLs as the
//! gateway for what scripts/compare.sh measures:
//!
//! - `GET /echo` (WebSocket): echoes every text or binary message;
//! - `GET /ws/chat/{room}` (WebSocket): every text message is sent to everyone in the room,
//!   sender included.
//!
//! Usage: `peer-tokio-tungstenite 127.0.0.1:9400` (tokio's default: one worker thread per CPU).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

type Rooms = Arc<Mutex<HashMap<String, broadcast::Sender<Message>>>>;

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9400".into());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    eprintln!("peer: listening on {addr}");
    let rooms: Rooms = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, rooms.clone()));
    }
}

async fn serve(stream: TcpStream, rooms: Rooms) {
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    if path == "/echo" {
        let (mut tx, mut rx) = ws.split();
        // Reading on after a close frame lets tungstenite send its close reply; the stream
        // then ends by itself.
        while let Some(Ok(msg)) = rx.next().await {
            if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                break;
            }
        }
    } else if let Some(room) = path.strip_prefix("/ws/chat/") {
        let sender = rooms
            .lock()
            .unwrap()
            .entry(room.to_string())
            .or_insert_with(|| broadcast::channel(1024).0)
            .clone();
        let mut feed = sender.subscribe();
        let (mut tx, mut rx) = ws.split();
        let writer = tokio::spawn(async move {
            while let Ok(msg) = feed.recv().await {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_text() {
                let _ = sender.send(msg);
            }
        }
        writer.abort();
    }
}
