//! permessage-deflate (RFC 7692): negotiation and the per-message codec.
//!
//! Compression is raw DEFLATE through flate2's zlib-rs backend, which (unlike the default
//! miniz_oxide backend) honours window sizes below 15 bits.
//!
//! The gateway always answers with `server_no_context_takeover`: every message it sends is
//! compressed on its own, so one compressor per worker serves every connection and a published
//! message can be compressed once for all its subscribers. What clients send is decompressed with
//! the server's default asks clients for `client_no_context_takeover` too, so no connection keeps
//! an inflate window between its messages (about 48 KiB with zlib-rs: the 32 KiB window and the
//! decoder's state); an operator may let clients keep their context (see [`DeflateConfig`]).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::Role;
use super::error::ProtocolError;

/// The extension token.
pub const EXTENSION: &str = "permessage-deflate";
/// Every message is compressed as if followed by these four bytes, which are removed on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The server's deflate policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Accept permessage-deflate offers at all. Default: true.
    pub enabled: bool,
    /// Ask clients to compress each message on its own even when they did not offer it, so no
    /// connection keeps an inflate window (about 48 KiB) between messages: the decoder lives
    /// only while a compressed message is being read. Default: true. False lets clients keep
    /// their context, which compresses repetitive client messages better but costs every
    /// connection that ever sent a compressed message those 48 KiB until it closes (see
    /// docs/OPERATIONS.md, "permessage-deflate memory").
    pub request_client_no_context_takeover: bool,
    /// Compression level 0-9 for what the server sends. Default: 1 (fast; chat-sized messages
    /// gain little from more effort).
    pub level: u32,
    /// Messages shorter than this are sent uncompressed (RFC 7692 allows mixing), and so is any
    /// message whose compressed form is not smaller. Default: 64 (at level 1, chat-sized
    /// messages of 70-100 bytes rarely shrink; see docs/BENCHMARKS.md, group `deflate`).
    pub min_size: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            enabled: true,
            request_client_no_context_takeover: true,
            level: 1,
            min_size: 64,
        }
    }
}

/// The agreed parameters of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    /// Window the server compresses with (8-15).
    pub server_max_window_bits: u8,
    /// Window the client compresses with (8-15).
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// (window bits, no context takeover) of what `role` sends.
    pub fn sending(&self, role: Role) -> (u8, bool) {
        match role {
            Role::Server => (self.server_max_window_bits, self.server_no_context_takeover),
            Role::Client => (self.client_max_window_bits, self.client_no_context_takeover),
        }
    }

    /// (window bits, no context takeover) of what `role` receives.
    pub fn receiving(&self, role: Role) -> (u8, bool) {
        match role {
            Role::Server => self.sending(Role::Client),
            Role::Client => self.sending(Role::Server),
        }
    }

    /// The `Sec-WebSocket-Extensions` value that states these parameters.
    pub fn to_header(&self) -> String {
        let mut s = String::from(EXTENSION);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if self.client_max_window_bits < 15 {
            s.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        s
    }
}

/// Parameters of one offer (or of a response) as written by the peer.
#[derive(Debug, Default, Clone, Copy)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: the parameter without a value ("I can limit my window if you ask").
    client_max_window_bits: Option<Option<u8>>,
}

/// Parses the parameters after `permessage-deflate`; `None` if any is unknown, repeated or malformed.
fn parse_params<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut offer = Offer::default();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param.trim(), None),
        };
        match (name, value) {
            ("server_no_context_takeover", None) if !offer.server_no_context_takeover => {
                offer.server_no_context_takeover = true
            }
            ("client_no_context_takeover", None) if !offer.client_no_context_takeover => {
                offer.client_no_context_takeover = true
            }
            ("server_max_window_bits", Some(v)) if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(window_bits(v)?)
            }
            ("client_max_window_bits", v) if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match v {
                    Some(v) => Some(window_bits(v)?),
                    None => None,
                })
            }
            _ => return None,
        }
    }
    Some(offer)
}

/// A window size: decimal 8 to 15, no sign, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// Splits one extension element into its name and parameters.
fn split_element(element: &str) -> (&str, impl Iterator<Item = &str>) {
    let mut parts = element.split(';');
    let name = parts.next().unwrap_or("").trim();
    (name, parts.filter(|p| !p.trim().is_empty()))
}

/// Server side: picks the first acceptable permessage-deflate offer from the request's
/// `Sec-WebSocket-Extensions` header values; `None` declines the extension.
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
    cfg: &DeflateConfig,
) -> Option<DeflateParams> {
    if !cfg.enabled {
        return None;
    }
    for value in header_values {
        for element in value.split(',') {
            let (name, params) = split_element(element);
            if !name.eq_ignore_ascii_case(EXTENSION) {
                continue;
            }
            let Some(offer) = parse_params(params) else {
                continue;
            };
            return Some(DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: offer.client_no_context_takeover
                    || cfg.request_client_no_context_takeover,
                server_max_window_bits: offer.server_max_window_bits.unwrap_or(15),
                // We may only name client_max_window_bits if the client offered it; we accept
                // whatever limit it proposed.
                client_max_window_bits: offer.client_max_window_bits.flatten().unwrap_or(15),
            });
        }
    }
    None
}

/// Client side: the offer a client sends.
pub fn client_offer() -> &'static str {
    "permessage-deflate; client_max_window_bits"
}

/// Client side: validates the server's response to [`client_offer`].
pub fn parse_response(value: &str) -> Option<DeflateParams> {
    let (name, params) = split_element(value.split(',').next()?);
    if !name.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let r = parse_params(params)?;
    Some(DeflateParams {
        server_no_context_takeover: r.server_no_context_takeover,
        client_no_context_takeover: r.client_no_context_takeover,
        server_max_window_bits: r.server_max_window_bits.unwrap_or(15),
        client_max_window_bits: match r.client_max_window_bits {
            Some(Some(bits)) => bits,
            Some(None) => return None, // a response must give a value
            None => 15,
        },
    })
}

/// Compresses whole messages.
#[derive(Debug)]
pub struct Deflater {
    inner: Compress,
    no_context_takeover: bool,
}

impl Deflater {
    /// A compressor for a peer that decodes with a `window_bits` window.
    ///
    /// zlib cannot produce raw DEFLATE with an 8-bit window; for that window the compressor
    /// emits stored blocks, which any window decodes.
    pub fn new(window_bits: u8, no_context_takeover: bool, level: u32) -> Deflater {
        // Written as two expressions on purpose: the equivalent tuple-returning `if` was
        // miscompiled in release test builds with rustc 1.95 (a window of 8 reached flate2 as 8).
        let bits = window_bits.clamp(9, 15);
        let level = if window_bits < 9 { 0 } else { level.min(9) };
        Deflater {
            inner: Compress::new_with_window_bits(Compression::new(level), false, bits),
            no_context_takeover,
        }
    }

    /// Appends the compressed form of `input` (without the 4-byte tail) to `out`.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            // RFC 7692 7.2.3.6: an empty stored block, tail removed. zlib would emit nothing for
            // a second flush in a row with no input, so it is written here.
            out.push(0x00);
            return;
        }
        let start_in = self.inner.total_in();
        let start_len = out.len();
        loop {
            let consumed = (self.inner.total_in() - start_in) as usize;
            out.reserve((input.len() - consumed) / 2 + 64);
            self.inner
                .compress_vec(&input[consumed..], out, FlushCompress::Sync)
                .expect("deflate of in-memory input cannot fail");
            let consumed = (self.inner.total_in() - start_in) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        debug_assert!(out[start_len..].ends_with(&TAIL));
        if out[start_len..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if self.no_context_takeover {
            self.inner.reset();
        }
    }
}

/// What the server sends compressed: one [`Deflater`] per window size, shared by every
/// connection of a worker (each message is compressed on its own, `server_no_context_takeover`),
/// and the rule "compress only if it is worth it" in one place for echoes and published frames.
#[derive(Debug)]
pub struct Compressor {
    level: u32,
    min_size: usize,
    /// Indexed by window bits - 8.
    deflaters: [Option<Deflater>; 8],
    /// Holds the last compressed body; shrunk back after a large message.
    scratch: Vec<u8>,
}

impl Default for Compressor {
    /// A compressor with the default policy; allocates nothing until it compresses.
    fn default() -> Self {
        Compressor::new(&DeflateConfig::default())
    }
}

/// The scratch buffer is freed after a message compressed past this size.
const SCRATCH_KEEP: usize = 256 * 1024;

impl Compressor {
    pub fn new(cfg: &DeflateConfig) -> Compressor {
        Compressor {
            level: cfg.level,
            min_size: cfg.min_size,
            deflaters: Default::default(),
            scratch: Vec::new(),
        }
    }

    /// The body to send for `payload` to a peer that negotiated a `bits` window (`None`: no
    /// compression): `(true, compressed)` when compression was tried and shrank it, else
    /// `(false, payload)`. Short messages are not tried, and incompressible ones go out as they
    /// are: same bytes, no work for the client.
    pub fn encode<'a>(&'a mut self, bits: Option<u8>, payload: &'a [u8]) -> (bool, &'a [u8]) {
        let Some(bits) = bits.filter(|_| self.worth_trying(payload.len())) else {
            return (false, payload);
        };
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
        self.scratch.clear();
        let level = self.level;
        self.deflaters[usize::from(bits.clamp(8, 15) - 8)]
            .get_or_insert_with(|| Deflater::new(bits, true, level))
            .compress(payload, &mut self.scratch);
        if self.scratch.len() < payload.len() {
            (true, &self.scratch)
        } else {
            (false, payload)
        }
    }

    /// Whether a message of `len` bytes is long enough to try compressing.
    pub fn worth_trying(&self, len: usize) -> bool {
        len >= self.min_size
    }
}

/// Decompresses messages, possibly with context kept between them.
#[derive(Debug)]
pub struct Inflater {
    inner: Decompress,
    no_context_takeover: bool,
    /// The peer ended the DEFLATE stream (a BFINAL block) inside the current message.
    ended: bool,
}

impl Inflater {
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Inflater {
        // A decoder with a larger window reads every stream of a smaller one; 9 is zlib's floor.
        Inflater {
            inner: Decompress::new_with_window_bits(false, window_bits.clamp(9, 15)),
            no_context_takeover,
            ended: false,
        }
    }

    /// Whether the inflater must live on between messages.
    pub fn keeps_context(&self) -> bool {
        !self.no_context_takeover
    }

    /// Decompresses a piece of a message, appending to `out`, which may not grow past `limit`.
    ///
    /// A peer may end the DEFLATE stream with a final block (RFC 7692 allows BFINAL). Whatever
    /// follows it in the same message, the 4-byte tail included, is ignored, and the next
    /// message starts a new stream, however the bytes were split across reads.
    pub fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        loop {
            if self.ended {
                return Ok(());
            }
            if out.len() == out.capacity() {
                let room = (limit + 1)
                    .saturating_sub(out.len())
                    .min(64 * 1024)
                    .max(input.len().min(4096));
                out.reserve(room.max(1));
            }
            let (in_before, out_before) = (self.inner.total_in(), out.len());
            let status = self
                .inner
                .decompress_vec(input, out, FlushDecompress::None)
                .map_err(|_| ProtocolError::BadCompressedData)?;
            if out.len() > limit {
                return Err(ProtocolError::MessageTooBig { limit });
            }
            input = &input[(self.inner.total_in() - in_before) as usize..];
            if status == Status::StreamEnd {
                self.inner.reset(false);
                self.ended = true;
                return Ok(());
            }
            let progressed = out.len() != out_before || self.inner.total_in() != in_before;
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
            if !progressed && out.len() < out.capacity() {
                return Err(ProtocolError::BadCompressedData);
            }
        }
    }

    /// Ends a message: feeds the removed tail and forgets the window if context is not kept.
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), ProtocolError> {
        let r = self.inflate(&TAIL, out, limit);
        if self.no_context_takeover || r.is_err() {
            self.inner.reset(false);
        }
        self.ended = false;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Negotiation with the client's context allowed (`--deflate-client-context`), so the
    /// table shows what each offer asks for.
    fn neg(value: &str) -> Option<DeflateParams> {
        let cfg = DeflateConfig {
            request_client_no_context_takeover: false,
            ..Default::default()
        };
        negotiate([value], &cfg)
    }

    #[test]
    fn the_default_asks_clients_for_no_context_takeover() {
        for offer in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_no_context_takeover",
        ] {
            let p = negotiate([offer], &DeflateConfig::default()).unwrap();
            assert!(p.client_no_context_takeover, "{offer}");
            assert!(
                p.to_header().contains("; client_no_context_takeover"),
                "{offer}"
            );
            assert_eq!(p.receiving(Role::Server), (15, true));
        }
    }

    #[test]
    fn negotiation_table() {
        let p = neg("permessage-deflate").unwrap();
        assert_eq!(
            p.to_header(),
            "permessage-deflate; server_no_context_takeover"
        );
        let p = neg("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(p.client_max_window_bits, 15);
        let p =
            neg("permessage-deflate; client_max_window_bits=10; server_max_window_bits=9").unwrap();
        assert_eq!(
            (p.client_max_window_bits, p.server_max_window_bits),
            (10, 9)
        );
        assert_eq!(
            p.to_header(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9; client_max_window_bits=10"
        );
        let p = neg("permessage-deflate; client_no_context_takeover").unwrap();
        assert!(p.client_no_context_takeover);
        // Invalid offers are skipped, the next acceptable one is taken.
        let p = neg("permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=8").unwrap();
        assert_eq!(p.server_max_window_bits, 8);
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(neg(bad), None, "{bad}");
        }
        assert_eq!(
            negotiate(
                ["permessage-deflate"],
                &DeflateConfig {
                    enabled: false,
                    ..Default::default()
                }
            ),
            None
        );
    }

    #[test]
    fn client_reads_server_response() {
        let p = parse_response(
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=12",
        )
        .unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 12);
        assert_eq!(
            parse_response("permessage-deflate; client_max_window_bits"),
            None
        );
    }

    #[test]
    fn roundtrip_with_and_without_context_and_every_window() {
        let msgs: Vec<Vec<u8>> = vec![
            b"{\"username\":\"ann\",\"message\":\"hello hello hello\"}".to_vec(),
            Vec::new(),
            (0..100_000u32).map(|i| (i % 251) as u8).collect(),
            b"{\"username\":\"ann\",\"message\":\"hello hello hello\"}".to_vec(),
        ];
        for bits in 8..=15 {
            for no_ctx in [false, true] {
                let mut d = Deflater::new(bits, no_ctx, 6);
                let mut i = Inflater::new(bits, no_ctx);
                for m in &msgs {
                    let mut wire = Vec::new();
                    d.compress(m, &mut wire);
                    let mut out = Vec::new();
                    // Feed in awkward pieces, as the network would.
                    for piece in wire.chunks(7) {
                        i.inflate(piece, &mut out, 1 << 20).unwrap();
                    }
                    i.finish(&mut out, 1 << 20).unwrap();
                    assert_eq!(&out, m, "bits {bits} no_ctx {no_ctx}");
                }
            }
        }
    }

    #[test]
    fn empty_message_is_one_zero_byte() {
        let mut d = Deflater::new(15, true, 1);
        let mut wire = Vec::new();
        d.compress(b"", &mut wire);
        assert_eq!(wire, [0x00]);
    }

    #[test]
    fn inflate_stops_at_the_limit() {
        let big = vec![b'a'; 1 << 20];
        let mut d = Deflater::new(15, true, 9);
        let mut wire = Vec::new();
        d.compress(&big, &mut wire);
        assert!(wire.len() < 10_000);
        let mut i = Inflater::new(15, true);
        let mut out = Vec::new();
        assert_eq!(
            i.inflate(&wire, &mut out, 1000),
            Err(ProtocolError::MessageTooBig { limit: 1000 })
        );
        assert!(out.capacity() < 70_000, "reserved {} bytes", out.capacity());
    }

    #[test]
    fn a_final_block_ends_the_message_however_the_input_is_split() {
        // A raw DEFLATE stream ending in a final block, then trailing junk in the same message.
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut wire = Vec::with_capacity(64);
        c.compress_vec(b"final block", &mut wire, FlushCompress::Finish)
            .unwrap();
        wire.extend_from_slice(&[0xde, 0xad]);
        for split in 1..wire.len() {
            let mut i = Inflater::new(15, false);
            let mut out = Vec::new();
            let (a, b) = wire.split_at(split);
            i.inflate(a, &mut out, 1 << 20).unwrap();
            i.inflate(b, &mut out, 1 << 20).unwrap();
            i.finish(&mut out, 1 << 20).unwrap();
            assert_eq!(out, b"final block", "split {split}");
            // The next message starts a fresh stream.
            let mut d = Deflater::new(15, true, 6);
            let mut next = Vec::new();
            d.compress(b"next", &mut next);
            let mut out = Vec::new();
            i.inflate(&next, &mut out, 1 << 20).unwrap();
            i.finish(&mut out, 1 << 20).unwrap();
            assert_eq!(out, b"next");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut i = Inflater::new(15, false);
        let mut out = Vec::new();
        let r = i
            .inflate(&[0xff, 0xff, 0xff, 0xff, 0xff], &mut out, 1 << 20)
            .and_then(|_| i.finish(&mut out, 1 << 20));
        assert_eq!(r, Err(ProtocolError::BadCompressedData));
    }
}
