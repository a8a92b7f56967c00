//! A fastwebsockets echo + broadcast server, written the way its examples do it: hyper serves
//! HTTP/1.1 and hands upgraded connections to fastwebsockets; one task per connection (two for
//! chat: a reader, and a writer fed by a broadcast channel, sharing the write half behind a
//! mutex with the reader's automatic pong and close replies); a global map of rooms behind a
//! mutex. Same URLs as the gateway for what scripts/compare.sh measures, and the same contract
//! as scripts/peers/tokio-tungstenite:
//!
//! - `GET /echo` (WebSocket): echoes every text or binary message;
//! - `GET /ws/chat/{room}` (WebSocket): every text or binary message is sent to everyone in
//!   the room, sender included;
//! - `POST /publish/chat/{room}`: the body is sent to the room; answers
//!   `{"topic":..,"seq":..,"subscribers":..}` like the gateway.
//!
//! Messages are limited to 64 KiB like the gateway's default --max-message. A subscriber that
//! falls more than 1024 messages behind skips the ones it missed.
//!
//! Usage: `peer-fastwebsockets 127.0.0.1:9400` (tokio's default: one worker thread per CPU).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fastwebsockets::{upgrade, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

const MAX_MESSAGE: usize = 64 * 1024;

struct Room {
    tx: broadcast::Sender<(OpCode, Bytes)>,
    seq: u64,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

fn room_sender(rooms: &Rooms, room: &str) -> broadcast::Sender<(OpCode, Bytes)> {
    rooms
        .lock()
        .unwrap()
        .entry(room.to_string())
        .or_insert_with(|| Room { tx: broadcast::channel(1024).0, seq: 0 })
        .tx
        .clone()
}

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
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, rooms.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

async fn handle(
    mut req: Request<Incoming>,
    rooms: Rooms,
) -> Result<Response<Full<Bytes>>, WebSocketError> {
    let path = req.uri().path().to_string();
    if req.method() == Method::POST {
        let Some(room) = path.strip_prefix("/publish/chat/").map(str::to_string) else {
            return Ok(answer(StatusCode::NOT_FOUND, "not found\n".into()));
        };
        let Ok(body) = Limited::new(req.into_body(), MAX_MESSAGE).collect().await else {
            return Ok(answer(StatusCode::PAYLOAD_TOO_LARGE, String::new()));
        };
        let body = body.to_bytes();
        let op = if std::str::from_utf8(&body).is_ok() { OpCode::Text } else { OpCode::Binary };
        let sender = room_sender(&rooms, &room);
        let subscribers = sender.send((op, body)).unwrap_or(0);
        let seq = {
            let mut map = rooms.lock().unwrap();
            let r = map.get_mut(&room).expect("room exists");
            r.seq += 1;
            r.seq
        };
        let mut r = answer(
            StatusCode::OK,
            format!("{{\"topic\":\"chat/{room}\",\"seq\":{seq},\"subscribers\":{subscribers}}}"),
        );
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return Ok(r);
    }
    let chat = path.strip_prefix("/ws/chat/").map(str::to_string);
    if path != "/echo" && chat.is_none() {
        return Ok(answer(StatusCode::NOT_FOUND, "not found\n".into()));
    }
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let _ = match chat {
            None => echo(fut).await,
            Some(room) => chat_client(fut, rooms, room).await,
        };
    });
    Ok(response.map(|_| Full::new(Bytes::new())))
}

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_max_message_size(MAX_MESSAGE);
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn chat_client(
    fut: upgrade::UpgradeFut,
    rooms: Rooms,
    room: String,
) -> Result<(), WebSocketError> {
    let sender = room_sender(&rooms, &room);
    let mut feed = sender.subscribe();
    let mut ws = fut.await?;
    ws.set_max_message_size(MAX_MESSAGE);
    let (rx, tx) = ws.split(tokio::io::split);
    let tx = Arc::new(tokio::sync::Mutex::new(tx));
    let writer = {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match feed.recv().await {
                    Ok((op, msg)) => {
                        let frame = Frame::new(true, op, None, Payload::Borrowed(&msg));
                        if tx.lock().await.write_frame(frame).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    };
    let mut rx = FragmentCollectorRead::new(rx);
    let result = loop {
        let frame = match rx
            .read_frame(&mut |f| {
                let tx = tx.clone();
                async move { tx.lock().await.write_frame(f).await }
            })
            .await
        {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        match frame.opcode {
            OpCode::Close => break Ok(()),
            OpCode::Text | OpCode::Binary => {
                let _ = sender.send((frame.opcode, Bytes::copy_from_slice(&frame.payload)));
            }
            _ => {}
        }
    };
    writer.abort();
    result
}
