//! Criterion benchmarks of the gateway's frame codec (`gateway::proto`).
//!
//! Every group pairs the gateway's code with a physical reference measured in the same run (a
//! plain copy of the same bytes, `std::str::from_utf8`, a naive byte loop, a peer crate), because
//! on a shared 2-core machine only ratios within one run mean anything; see docs/BENCHMARKS.md
//! for the machine, the command and the figures. Every group sets a throughput so criterion
//! prints bytes/s or elements/s beside the time.
//!
//! Groups:
//! - `header`: `FrameHeader::parse`, `FrameHeader::encode` and `HeaderBuf::new` for the three
//!   payload-length forms, masked and unmasked (headers/s).
//! - `unmask`: `apply_mask` against `copy_from_slice`, `apply_mask_bytewise`,
//!   `fastwebsockets::unmask` and a wider variant from this crate, 16 B to 1 MiB (bytes/s).
//! - `utf8`: `Utf8Validator::feed` against `std::str::from_utf8` on ASCII and multibyte text.
//! - `deflate`: `Deflater::compress` and `Inflater::inflate` on a chat message and a 16 KiB
//!   JSON document, with the server's settings (window 15, no context takeover, level 1).
//! - `reader_bytes` / `reader_messages`: `Reader::read` over a stream of masked client frames.
//! - `fanout` / `fanout_deflate`: one publish delivered to N subscriber queues, encoded (and
//!   compressed) once and shared through an `Arc`, against once per subscriber.
//!
//! The run times are set per group so the whole `cargo bench` stays within a few minutes on two
//! cores; `cargo test --benches` runs each benchmark once as a smoke test.

use std::collections::VecDeque;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};
use gateway::proto::frame::write_frame;
use gateway::proto::mask::{apply_mask, apply_mask_bytewise};
use gateway::proto::utf8::Utf8Validator;
use gateway::proto::{
    Deflater, Event, FrameHeader, HeaderBuf, Inflater, OpCode, Reader, Role, frame,
};

/// The mask key of every masked frame built here (the RFC 6455 section 5.7 example key).
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The chat message the deflate group compresses: 71 bytes, the size most pushes have.
const CHAT: &[u8] = br#"{"username":"alice","message":"hello everyone, how is it going today?"}"#;

/// The 100-byte text message of the fan-out and reader groups.
const MESSAGE_100: &[u8; 100] =
    br#"{"room":"lobby","username":"alice","message":"hello everyone, how is it going today? see you at 10"}"#;

/// Sets warm-up and measurement times for a group. Short on purpose: the suite has 77
/// benchmarks and must finish in a few minutes; ratios inside a group are what we read.
fn timing(group: &mut BenchmarkGroup<'_, WallTime>, warm_up_ms: u64, measure_ms: u64) {
    group.warm_up_time(Duration::from_millis(warm_up_ms));
    group.measurement_time(Duration::from_millis(measure_ms));
}

/// A human label for a byte size: "16B", "1KiB", "64KiB", "1MiB".
fn size_label(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

/// Deterministic, not-too-regular bytes (an LCG), so nothing can be special-cased on zeros.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// ASCII prose of exactly `len` bytes.
fn ascii_text(len: usize) -> Vec<u8> {
    let words = b"the quick brown fox jumps over the lazy dog while everyone says hello ";
    words.iter().copied().cycle().take(len).collect()
}

/// Mostly multibyte text (2-, 3- and 4-byte sequences) of exactly `len` bytes: whole code points
/// up to `len`, then ASCII spaces to fill the last few bytes.
fn multibyte_text(len: usize) -> Vec<u8> {
    let sample = "κόσμε 你好，世界 Привет 🙂🚀 ünïcödé ";
    let mut out = String::with_capacity(len);
    'fill: loop {
        for ch in sample.chars() {
            if out.len() + ch.len_utf8() > len {
                break 'fill;
            }
            out.push(ch);
        }
    }
    while out.len() < len {
        out.push(' ');
    }
    out.into_bytes()
}

/// A JSON array of chat-like records, cut to exactly `len` bytes, with varying numbers and names
/// so deflate has real work (it compresses to roughly a fifth, like real feeds).
fn json_document(len: usize) -> Vec<u8> {
    let names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"];
    let rooms = ["lobby", "support", "random", "dev", "ops"];
    let rand = noise(4096);
    let mut out = String::from("[");
    let mut i = 0usize;
    while out.len() < len {
        let r = rand[i % rand.len()] as usize;
        out.push_str(&format!(
            r#"{{"id":{},"ts":{},"room":"{}","user":"{}","text":"message {} about topic {}","score":{}.{}}},"#,
            1000 + i * 7,
            1_700_000_000 + i * 13 + r,
            rooms[r % rooms.len()],
            names[(r / 7) % names.len()],
            i,
            r % 17,
            r,
            i % 10,
        ));
        i += 1;
    }
    out.truncate(len);
    out.into_bytes()
}

/// Group `header`: one frame header parsed or encoded per iteration, for each length form.
///
/// The reference is a 14-byte copy (the longest header): a parser cannot be cheaper than
/// reading its bytes once.
fn header(c: &mut Criterion) {
    let mut g = c.benchmark_group("header");
    timing(&mut g, 200, 600);
    g.throughput(Throughput::Elements(1));
    let forms = [("7bit", 100usize), ("16bit", 1000), ("64bit", 100_000)];
    for (form, len) in forms {
        for (masking, mask) in [("unmasked", None), ("masked", Some(KEY))] {
            let id = format!("{form}/{masking}");
            let wire = HeaderBuf::new(OpCode::Binary, false, mask, len);
            let wire = wire.as_bytes();
            let parsed = FrameHeader::parse(wire)
                .expect("valid header")
                .expect("complete header")
                .0;
            g.bench_function(BenchmarkId::new("parse", &id), |b| {
                b.iter(|| FrameHeader::parse(black_box(wire)))
            });
            g.bench_function(BenchmarkId::new("encode", &id), |b| {
                b.iter(|| {
                    let mut out = [0u8; frame::MAX_HEADER_LEN];
                    let n = black_box(&parsed).encode(&mut out);
                    (black_box(out), n)
                })
            });
            g.bench_function(BenchmarkId::new("HeaderBuf::new", &id), |b| {
                b.iter(|| {
                    HeaderBuf::new(
                        black_box(OpCode::Binary),
                        false,
                        black_box(mask),
                        black_box(len),
                    )
                })
            });
        }
    }
    let longest = [0x82u8, 0xff, 0, 0, 0, 0, 0, 1, 0x86, 0xa0, 1, 2, 3, 4];
    g.bench_function("reference/copy_14B", |b| {
        b.iter(|| {
            let mut out = [0u8; frame::MAX_HEADER_LEN];
            out.copy_from_slice(black_box(&longest));
            black_box(out)
        })
    });
    g.finish();
}

/// Group `unmask`: XOR of a payload with the mask key, in place, at four sizes.
///
/// `copy_from_slice` of the same size is the physical reference (one read and one write of
/// every byte, done by the libc memcpy), `apply_mask_bytewise` the naive one, and
/// `fastwebsockets::unmask` a peer. `apply_mask_wide` is this crate's proposed variant.
fn unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    timing(&mut g, 300, 900);
    for size in [16usize, 1 << 10, 64 << 10, 1 << 20] {
        let label = size_label(size);
        g.throughput(Throughput::Bytes(size as u64));
        let src = noise(size);
        let mut dst = vec![0u8; size];
        let mut buf = src.clone();
        g.bench_function(BenchmarkId::new("copy_from_slice", &label), |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
        // Masking is its own inverse, so unmasking the same buffer over and over needs no reset.
        g.bench_function(BenchmarkId::new("apply_mask", &label), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), 0))
        });
        g.bench_function(BenchmarkId::new("apply_mask_wide", &label), |b| {
            b.iter(|| benches::apply_mask_wide(black_box(&mut buf), black_box(KEY), 0))
        });
        g.bench_function(BenchmarkId::new("fastwebsockets::unmask", &label), |b| {
            b.iter(|| fastwebsockets::unmask(black_box(&mut buf), black_box(KEY)))
        });
        g.bench_function(BenchmarkId::new("apply_mask_bytewise", &label), |b| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), black_box(KEY), 0))
        });
    }
    g.finish();
}

/// Group `utf8`: a whole text payload validated in one call, against `std::str::from_utf8`.
fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    timing(&mut g, 300, 900);
    for size in [1usize << 10, 64 << 10] {
        for (kind, text) in [
            ("ascii", ascii_text(size)),
            ("multibyte", multibyte_text(size)),
        ] {
            assert!(std::str::from_utf8(&text).is_ok());
            let id = format!("{kind}/{}", size_label(size));
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.bench_function(BenchmarkId::new("Utf8Validator::feed", &id), |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::default();
                    let r = v.feed(black_box(&text));
                    (r, v.is_complete())
                })
            });
            g.bench_function(BenchmarkId::new("std::str::from_utf8", &id), |b| {
                b.iter(|| std::str::from_utf8(black_box(&text)).is_ok())
            });
        }
    }
    g.finish();
}

/// Group `deflate`: one message compressed or decompressed per iteration, with the settings the
/// gateway sends with (window 15, server_no_context_takeover, level 1). Throughput counts the
/// uncompressed bytes both ways; a copy of those bytes is the reference.
fn deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    timing(&mut g, 300, 1000);
    let doc = json_document(16 << 10);
    // Above every output here, so the limit check runs but never fires.
    let limit = 1 << 20;
    for (name, input) in [("chat_71B", CHAT), ("json_16KiB", doc.as_slice())] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        let mut deflater = Deflater::new(15, true, 1);
        let mut compressed = Vec::new();
        deflater.compress(input, &mut compressed);
        eprintln!(
            "deflate: {name}: {} B -> {} B at level 1",
            input.len(),
            compressed.len()
        );
        let mut out = Vec::with_capacity(input.len() + 64);
        g.bench_function(BenchmarkId::new("Deflater::compress", name), |b| {
            b.iter(|| {
                out.clear();
                deflater.compress(black_box(input), &mut out);
                black_box(&out);
            })
        });
        // No context takeover on the inflater too, so every iteration starts from a fresh window
        // and decodes the same bytes (with context, the second pass would be garbage).
        let mut inflater = Inflater::new(15, true);
        let mut plain = Vec::with_capacity(input.len() + 64);
        g.bench_function(BenchmarkId::new("Inflater::inflate", name), |b| {
            b.iter(|| {
                plain.clear();
                inflater
                    .inflate(black_box(&compressed), &mut plain, limit)
                    .expect("valid stream");
                inflater.finish(&mut plain, limit).expect("valid stream");
                debug_assert_eq!(plain, input);
                black_box(&plain);
            })
        });
        let mut copy = vec![0u8; input.len()];
        g.bench_function(BenchmarkId::new("reference/copy_from_slice", name), |b| {
            b.iter(|| {
                copy.copy_from_slice(black_box(input));
                black_box(&mut copy);
            })
        });
    }
    g.finish();
}

/// A stream of `count` masked single-frame messages of `size` bytes, as a client sends them.
/// Every frame has its own key, as RFC 6455 asks of clients.
fn client_stream(count: usize, size: usize, opcode: OpCode) -> Vec<u8> {
    let payload = if opcode == OpCode::Text {
        ascii_text(size)
    } else {
        noise(size)
    };
    let keys = noise(4 * count);
    let mut wire = Vec::new();
    for key in keys.chunks_exact(4) {
        let key = [key[0], key[1], key[2], key[3]];
        write_frame(&mut wire, true, opcode, false, Some(key), &payload);
    }
    wire
}

/// Decodes every message in `wire` the way the event loop does; returns how many it saw.
fn read_all(reader: &mut Reader, wire: &mut [u8], message: &mut Vec<u8>) -> usize {
    let mut inflater = None;
    let mut pos = 0;
    let mut messages = 0;
    loop {
        let step = reader
            .read(&mut wire[pos..], message, &mut inflater)
            .expect("a valid client stream");
        pos += step.consumed;
        match step.event {
            Some(Event::Message(kind)) => {
                black_box((kind, &message));
                message.clear();
                messages += 1;
            }
            Some(other) => unreachable!("data frames only: {other:?}"),
            None if step.consumed == 0 => return messages,
            None => {}
        }
    }
}

/// The reader streams: (name, messages, bytes per message, opcode).
const READER_STREAMS: [(&str, usize, usize, OpCode); 3] = [
    ("1000x100B_text", 1000, 100, OpCode::Text),
    ("16x64KiB_binary", 16, 64 << 10, OpCode::Binary),
    ("16x64KiB_text", 16, 64 << 10, OpCode::Text),
];

/// Times `Reader::read` over a fresh copy of `wire` per iteration.
///
/// The reader unmasks in place, so every iteration needs the masked bytes back; the copy that
/// restores them stands for the socket read and is left out of the time (`iter_custom`).
fn bench_reader(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, wire: &[u8], count: usize) {
    let mut buf = wire.to_vec();
    // A 1 MiB message limit: above every message here (the gateway's default is 64 KiB, which
    // the 64 KiB messages would just fit).
    let mut reader = Reader::new(Role::Server, 1 << 20, None);
    let mut message = Vec::new();
    g.bench_function(BenchmarkId::new("Reader::read", name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                buf.copy_from_slice(wire);
                let start = Instant::now();
                let seen = read_all(&mut reader, &mut buf, &mut message);
                total += start.elapsed();
                assert_eq!(seen, count);
            }
            total
        })
    });
}

/// Groups `reader_bytes` and `reader_messages`: the same runs, one reported in wire bytes/s
/// (with a copy of the stream as the reference), one in messages/s.
fn reader(c: &mut Criterion) {
    let streams: Vec<_> = READER_STREAMS
        .iter()
        .map(|&(name, count, size, op)| (name, count, client_stream(count, size, op)))
        .collect();

    let mut g = c.benchmark_group("reader_bytes");
    timing(&mut g, 300, 1000);
    for (name, count, wire) in &streams {
        g.throughput(Throughput::Bytes(wire.len() as u64));
        bench_reader(&mut g, name, wire, *count);
        let mut copy = vec![0u8; wire.len()];
        g.bench_function(BenchmarkId::new("reference/copy_from_slice", name), |b| {
            b.iter(|| {
                copy.copy_from_slice(black_box(wire));
                black_box(&mut copy);
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("reader_messages");
    timing(&mut g, 300, 1000);
    for (name, count, wire) in &streams {
        g.throughput(Throughput::Elements(*count as u64));
        bench_reader(&mut g, name, wire, *count);
    }
    g.finish();
}

/// One subscriber's outgoing queue in the naive scheme: a private copy per subscriber.
type OwnedQueue = VecDeque<Vec<u8>>;

/// Encodes a whole frame (header via `HeaderBuf`, then the payload) into the worker's reused
/// `scratch` buffer and returns it as one shared allocation (`Arc<[u8]>` or `Rc<[u8]>`).
///
/// `From<&[u8]>` allocates once and copies with memcpy. Collecting the header and payload
/// iterators straight into an `Arc` also allocates once, but copies byte by byte through the
/// chained iterator: about 200 ns against 30 ns for this 100-byte frame in one run.
fn shared_frame<P: for<'a> From<&'a [u8]>>(rsv1: bool, payload: &[u8], scratch: &mut Vec<u8>) -> P {
    let header = HeaderBuf::new(OpCode::Text, rsv1, None, payload.len());
    scratch.clear();
    scratch.extend_from_slice(header.as_bytes());
    scratch.extend_from_slice(payload);
    P::from(scratch.as_slice())
}

/// Hands one shared frame to every queue, then drains them all.
///
/// The drain is timed too: each delivery is released once its write completes, and leaving that
/// out would hide the naive scheme's frees and the shared scheme's reference-count decrements.
fn deliver_shared<P: Clone>(queues: &mut [VecDeque<P>], frame: P) {
    for q in queues.iter_mut() {
        q.push_back(frame.clone());
    }
    drop(frame);
    drain(queues);
}

/// Releases every queued delivery (see [`deliver_shared`] for why this is timed).
fn drain<T>(queues: &mut [VecDeque<T>]) {
    for q in queues.iter_mut() {
        black_box(q.pop_front());
    }
}

/// Subscriber queues, one per subscriber, with room for a few frames each.
fn queues<T>(n: usize) -> Vec<VecDeque<T>> {
    (0..n).map(|_| VecDeque::with_capacity(4)).collect()
}

const FANOUT: [usize; 3] = [1, 100, 10_000];

/// Group `fanout`: a 100-byte text message published to N subscribers. Throughput counts
/// deliveries (N per iteration).
///
/// `encode_once_rc` is the same as `encode_once_arc` with a non-atomic reference count: what a
/// publish confined to one worker thread could use; the difference is the price of the atomics.
fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    timing(&mut g, 300, 1000);
    let mut scratch = Vec::with_capacity(256);
    for n in FANOUT {
        g.throughput(Throughput::Elements(n as u64));
        let mut shared: Vec<VecDeque<Arc<[u8]>>> = queues(n);
        g.bench_function(BenchmarkId::new("encode_once_arc", n), |b| {
            b.iter(|| {
                let frame: Arc<[u8]> = shared_frame(false, black_box(MESSAGE_100), &mut scratch);
                deliver_shared(&mut shared, frame);
            })
        });
        let mut local: Vec<VecDeque<Rc<[u8]>>> = queues(n);
        g.bench_function(BenchmarkId::new("encode_once_rc", n), |b| {
            b.iter(|| {
                let frame: Rc<[u8]> = shared_frame(false, black_box(MESSAGE_100), &mut scratch);
                deliver_shared(&mut local, frame);
            })
        });
        let mut owned: Vec<OwnedQueue> = queues(n);
        g.bench_function(BenchmarkId::new("encode_per_subscriber", n), |b| {
            b.iter(|| {
                for q in owned.iter_mut() {
                    let mut frame = Vec::with_capacity(2 + MESSAGE_100.len());
                    write_frame(
                        &mut frame,
                        true,
                        OpCode::Text,
                        false,
                        None,
                        black_box(MESSAGE_100),
                    );
                    q.push_back(frame);
                }
                drain(&mut owned);
            })
        });
    }
    g.finish();
}

/// Group `fanout_deflate`: the same publish with permessage-deflate, compressed once for all
/// subscribers (what `server_no_context_takeover` allows) or once per subscriber. Both use one
/// compressor: a naive server with one per connection would also pay ~256 KiB of zlib state per
/// connection, which this does not measure.
fn fanout_deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_deflate");
    timing(&mut g, 300, 1500);
    // Compress-per-subscriber at N = 10,000 takes tens of milliseconds per iteration: flat
    // sampling and few samples keep it to a couple of seconds.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(20);
    let mut deflater = Deflater::new(15, true, 1);
    let mut compressed = Vec::with_capacity(256);
    let mut scratch = Vec::with_capacity(256);
    deflater.compress(MESSAGE_100, &mut compressed);
    eprintln!(
        "fanout_deflate: {} B -> {} B at level 1",
        MESSAGE_100.len(),
        compressed.len()
    );
    for n in FANOUT {
        g.throughput(Throughput::Elements(n as u64));
        let mut shared: Vec<VecDeque<Arc<[u8]>>> = queues(n);
        g.bench_function(BenchmarkId::new("compress_once_arc", n), |b| {
            b.iter(|| {
                compressed.clear();
                deflater.compress(black_box(MESSAGE_100), &mut compressed);
                let frame: Arc<[u8]> = shared_frame(true, &compressed, &mut scratch);
                deliver_shared(&mut shared, frame);
            })
        });
        let mut owned: Vec<OwnedQueue> = queues(n);
        g.bench_function(BenchmarkId::new("compress_per_subscriber", n), |b| {
            b.iter(|| {
                for q in owned.iter_mut() {
                    compressed.clear();
                    deflater.compress(black_box(MESSAGE_100), &mut compressed);
                    let mut frame = Vec::with_capacity(2 + compressed.len());
                    write_frame(&mut frame, true, OpCode::Text, true, None, &compressed);
                    q.push_back(frame);
                }
                drain(&mut owned);
            })
        });
    }
    g.finish();
}

criterion_group!(
    codec,
    header,
    unmask,
    utf8,
    deflate,
    reader,
    fanout,
    fanout_deflate
);
criterion_main!(codec);
