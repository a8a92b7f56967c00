//! A published message and its frames: each shape (raw, `/ws` envelope) encoded lazily, once,
//! and once per negotiated deflate window, then shared by every subscriber that gets it.

use std::sync::{Arc, OnceLock};

use super::{TopicId, TopicKind};
use crate::proto::{Compressor, HeaderBuf, MessageKind};

/// The frame shapes a subscriber can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// The payload as it was published, in a text or binary frame.
    Raw,
    /// `{"topic":..,"seq":..,"data":..}` in a text frame (the `/ws` protocol).
    Envelope,
}

/// A notice about a topic's stream that travels with its messages, in order: only `/ws`
/// subscribers are sent it (as a JSON message); raw sockets skip it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A message (the normal case).
    None,
    /// Messages `from..=seq` are lost (a node missed them and the bus's history no longer held
    /// them): `{"type":"gap",..}`.
    Gap { from: u64 },
    /// The topic's numbering started over (Redis lost it): `{"type":"reset",..}` with the new
    /// epoch (the payload); every subscriber continues after `seq`.
    Reset,
}

/// One published message, shared by every worker and subscriber that holds it.
#[derive(Debug)]
pub struct Published {
    pub topic: TopicId,
    pub name: Arc<str>,
    pub seq: u64,
    pub kind: MessageKind,
    pub topic_kind: TopicKind,
    pub payload: Box<[u8]>,
    /// A version stamp the publisher may set (0 when unused): for `file/..` topics, the file's
    /// modification time in nanoseconds, which `/ws/file/{name}?lastMod=` compares against.
    pub stamp: u64,
    /// When it was published (for the delivery latency histogram).
    pub at: std::time::Instant,
    pub control: Control,
    /// Encoded frames: [style][0 = uncompressed, 1..=8 = window bits 8..=15].
    frames: [[OnceLock<Arc<[u8]>>; 9]; 2],
}

impl Published {
    pub(super) fn new(
        topic: TopicId,
        name: Arc<str>,
        seq: u64,
        kind: MessageKind,
        topic_kind: TopicKind,
        payload: Box<[u8]>,
        stamp: u64,
    ) -> Self {
        Published {
            topic,
            name,
            seq,
            kind,
            topic_kind,
            payload,
            stamp,
            at: std::time::Instant::now(),
            control: Control::None,
            frames: Default::default(),
        }
    }

    /// A notice for a topic's `/ws` subscribers ([`Control`]); a reset's payload is the new
    /// epoch.
    pub(super) fn notice(
        topic: TopicId,
        name: Arc<str>,
        seq: u64,
        control: Control,
        payload: Box<[u8]>,
    ) -> Self {
        let mut p = Self::new(
            topic,
            name,
            seq,
            MessageKind::Text,
            TopicKind::Stream,
            payload,
            0,
        );
        p.control = control;
        p
    }

    /// Sets when it was published (a message from the bus: when its node published it).
    pub(super) fn published_at(mut self, at: std::time::Instant) -> Self {
        self.at = at;
        self
    }

    /// The message body of a shape, before framing.
    fn body(&self, style: Style) -> (MessageKind, std::borrow::Cow<'_, [u8]>) {
        match style {
            Style::Raw => (self.kind, std::borrow::Cow::Borrowed(&self.payload)),
            Style::Envelope => (MessageKind::Text, std::borrow::Cow::Owned(self.envelope())),
        }
    }

    /// The `/ws` envelope. Text payloads travel as a JSON string; binary ones as base64 with
    /// `"binary":true`.
    pub fn envelope(&self) -> Vec<u8> {
        let name = &*self.name;
        let data = match self.control {
            Control::Gap { from } => {
                serde_json::json!({"type": "gap", "topic": name, "from": from, "to": self.seq})
            }
            Control::Reset => {
                let epoch = String::from_utf8_lossy(&self.payload);
                serde_json::json!({"type": "reset", "topic": name, "epoch": epoch, "seq": self.seq})
            }
            Control::None => self.message_envelope(),
        };
        serde_json::to_vec(&data).expect("JSON of strings and numbers")
    }

    fn message_envelope(&self) -> serde_json::Value {
        match (self.kind, std::str::from_utf8(&self.payload)) {
            (MessageKind::Text, Ok(text)) => {
                serde_json::json!({"topic": &*self.name, "seq": self.seq, "data": text})
            }
            _ => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&self.payload);
                serde_json::json!({"topic": &*self.name, "seq": self.seq, "data": b64, "binary": true})
            }
        }
    }

    /// The frame for `style`, encoded on first use and shared afterwards. With `deflate`
    /// (window bits and the worker's compressor) the frame is compressed when that is worth it
    /// ([`Compressor::encode`]).
    pub fn frame(&self, style: Style, deflate: Option<(u8, &mut Compressor)>) -> Arc<[u8]> {
        let col = deflate
            .as_ref()
            .map_or(0, |(bits, _)| usize::from(bits.clamp(&8, &15) - 7));
        let slot = &self.frames[style as usize][col];
        slot.get_or_init(|| {
            let (kind, body) = self.body(style);
            let (rsv1, bytes) = match deflate {
                Some((bits, c)) => c.encode(Some(bits), &body),
                None => (false, &body[..]),
            };
            let header = HeaderBuf::new(kind.opcode(), rsv1, None, bytes.len());
            let mut out = Vec::with_capacity(header.as_bytes().len() + bytes.len());
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(bytes);
            out.into()
        })
        .clone()
    }
}
