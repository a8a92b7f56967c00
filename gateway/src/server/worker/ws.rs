//! An open WebSocket: the worker drives the connection's [`Session`] with the socket's bytes
//! and sends what it owes; messages go to the endpoint (echo, chat, `/ws`, a command). The close handshake,
//! owed pongs and protocol failures are the session's; this file only moves their bytes and
//! ends the connection when the session says so.

use std::mem;

use super::Worker;
use crate::http::Route;
use crate::proto::{
    CloseCode, DeflateParams, Event, MessageKind, ProtocolError, ServerSession, Unmasked,
};
use crate::server::ConnId;
use crate::server::conn::{FirstTopic, Phase, Ws};
use crate::server::stats::WorkerStats;

impl Worker {
    /// The upgrade was accepted: the connection becomes an open WebSocket.
    pub(super) fn open(&mut self, key: usize, route: Route, deflate: Option<DeflateParams>) {
        let max_message = self.config.max_message;
        let conn = &mut self.conns[key];
        conn.phase = Phase::Open(Ws {
            session: ServerSession::new(Unmasked, max_message, deflate, self.now),
            route,
            first_topic: FirstTopic::NONE,
        });
        conn.since = self.now;
        WorkerStats::add(&self.stats().ws_opened_total, 1);
        self.arm_timer(key);
    }

    /// Reads frames, within the turn's budget of steps; returns the bytes consumed. The message
    /// buffer comes from the pool, or from the side table when a message spans reads, and goes
    /// back to one of them.
    pub(super) fn read_frames(&mut self, key: usize, input: &mut [u8]) -> usize {
        let mut msg = match self.partial_msgs.remove(&key) {
            Some(buf) => buf,
            None => self.pool.get(),
        };
        let pos = self.read_frames_into(key, input, &mut msg);
        match &self.conns[key].phase {
            Phase::Open(ws) if ws.session.in_message() && !self.conns[key].dead => {
                self.partial_msgs.insert(key, msg);
            }
            _ => self.pool.put(msg),
        }
        pos
    }

    fn read_frames_into(&mut self, key: usize, input: &mut [u8], msg: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        loop {
            let conn = &mut self.conns[key];
            let Phase::Open(ws) = &mut conn.phase else {
                return input.len();
            };
            if conn.dead {
                return input.len();
            }
            // The turn's frame budget is spent: the rest waits for the next turn.
            if self.steps_left == 0 {
                return pos;
            }
            self.steps_left -= 1;
            let now = self.now;
            let step = match ws
                .session
                .handle_input(&mut input[pos..], msg, now, &mut self.ctl)
            {
                Ok(step) => step,
                Err(e) => {
                    self.count_failure(&e);
                    self.send_ctl(key);
                    self.linger(key);
                    return input.len();
                }
            };
            pos += step.consumed;
            match step.event {
                None if step.consumed == 0 => return pos,
                None | Some(Event::Pong(_)) => {}
                Some(Event::Ping(_)) => self.send_ctl(key),
                Some(Event::Message(kind)) => {
                    let route = ws.route;
                    WorkerStats::add(&self.stats().messages_in_total, 1);
                    self.on_message(key, route, kind, msg);
                    msg.clear();
                }
                Some(Event::Close(_)) => {
                    self.send_ctl(key);
                    self.close_after_handshake(key);
                    return input.len();
                }
            }
        }
    }

    fn on_message(&mut self, key: usize, route: Route, kind: MessageKind, payload: &[u8]) {
        match route {
            Route::Echo => self.send_data(key, kind, payload),
            Route::Chat => self.chat_message(key, kind, payload),
            Route::Multiplex => self.multiplex_message(key, kind, payload),
            Route::Command => self.command_message(key, kind, payload),
            // Only WebSocket routes reach the open phase.
            _ => {}
        }
    }

    /// Sends one data message, compressed when negotiated and worth it; nothing after a close.
    pub(super) fn send_data(&mut self, key: usize, kind: MessageKind, payload: &[u8]) {
        let Phase::Open(ws) = &self.conns[key].phase else {
            return;
        };
        let bits = ws
            .session
            .send_deflate()
            .filter(|_| self.compressor.worth_trying(payload.len()));
        if bits.is_none() {
            // The common path: no compression to try, nothing to move out of the way.
            if let Some(header) = ws.session.data_header(kind, false, payload.len()) {
                self.send(key, &[header.as_bytes(), payload]);
                WorkerStats::add(&self.stats().messages_out_total, 1);
            }
            return;
        }
        // The compressed body lives in the compressor: take it out of `self` while sending.
        let mut compressor = mem::take(&mut self.compressor);
        let (rsv1, body) = compressor.encode(bits, payload);
        if let Some(header) = ws.session.data_header(kind, rsv1, body.len()) {
            self.send(key, &[header.as_bytes(), body]);
            WorkerStats::add(&self.stats().messages_out_total, 1);
        }
        self.compressor = compressor;
    }

    /// Sends the control frames the session wrote (a pong, a close frame, a ping).
    pub(super) fn send_ctl(&mut self, key: usize) {
        if self.ctl.is_empty() {
            return;
        }
        let ctl = mem::take(&mut self.ctl);
        self.send(key, &[&ctl]);
        self.ctl = ctl;
        self.ctl.clear();
    }

    /// Starts the close handshake (once) and lets the connection linger until the peer answers.
    pub(super) fn close_ws(&mut self, key: usize, code: CloseCode, reason: &str) {
        let Phase::Open(ws) = &mut self.conns[key].phase else {
            return;
        };
        ws.session.close(code, reason, self.now, &mut self.ctl);
        self.send_ctl(key);
        self.linger(key);
    }

    fn count_failure(&self, e: &ProtocolError) {
        let s = self.stats();
        let counter = match e.close_code() {
            CloseCode::INVALID_DATA => &s.close_1007_total,
            CloseCode::TOO_BIG => &s.close_1009_total,
            CloseCode::POLICY => &s.close_1008_total,
            _ => &s.close_1002_total,
        };
        WorkerStats::add(counter, 1);
    }

    /// Releases what an open WebSocket held: a message in progress and its subscriptions.
    pub(super) fn end_ws(&mut self, id: ConnId, ws: Ws) {
        WorkerStats::add(&self.stats().ws_closed_total, 1);
        if ws.route == Route::Command {
            self.command_detached(id);
        }
        if let Some(buf) = self.partial_msgs.remove(&id.slot()) {
            self.pool.put(buf);
        }
        let more = self.more_topics.remove(&id.slot()).unwrap_or_default();
        let first = ws.first_topic.slot().and_then(|s| self.local.id_of_slot(s));
        for topic in first.into_iter().chain(more) {
            self.local.remove(topic, id);
            self.shared.hub.unsubscribe(topic);
        }
    }
}
