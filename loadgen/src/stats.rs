//! What a run measured, in a form that merges: latency histograms, counters, failures by cause
//! and per-sequence delivery counts.
//!
//! Each event-loop thread fills its own [`Results`]; a process merges its threads', and the
//! parent merges its worker processes' after they travel as JSON over a pipe. Histograms travel
//! in HdrHistogram's V2 serialization (base64 in the JSON), so the parent merges the exact
//! recorded distributions, never percentiles of percentiles.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::nodes::NodeResults;

/// Largest latency recorded: one hour in nanoseconds. Larger values are clamped to it.
const MAX_NS: u64 = 3_600_000_000_000;
/// Three significant digits: 0.1% resolution at every magnitude.
const SIGFIG: u8 = 3;

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, MAX_NS, SIGFIG).expect("valid histogram bounds"))
    }
}

impl PartialEq for Hist {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Hist {
    /// Records one latency (values out of range are clamped, never dropped).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Hist) {
        // Both have the same bounds (or were deserialized from histograms that had them), and
        // `add` only fails when a value does not fit.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// HdrHistogram V2 encoding, base64.
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut bytes)
            .expect("serializing into memory cannot fail");
        B64.encode(bytes)
    }

    pub fn from_base64(text: &str) -> Result<Hist, String> {
        let bytes = B64
            .decode(text)
            .map_err(|e| format!("histogram is not base64: {e}"))?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| format!("histogram does not decode: {e:?}"))?;
        let mut out = Hist::default();
        out.merge(&Hist(h));
        Ok(out)
    }

    /// The summary every report shows, in microseconds.
    pub fn percentiles(&self) -> Percentiles {
        let h = &self.0;
        let us = |ns: u64| ns as f64 / 1e3;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min_us: us(h.min()),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1e3,
        }
    }

    /// Points of the percentile curve: (percentile, microseconds), from 0 to 100 with ever
    /// finer steps toward the tail (each decade of "nines" gets the same number of points).
    pub fn curve(&self) -> Vec<(f64, f64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        // x = -log10(1 - q): 0 at the median's left, 1 at p90, 2 at p99, ... up to 5 nines.
        let steps = 10;
        for i in 0..=(5 * steps) {
            let x = i as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-x);
            out.push((q * 100.0, self.0.value_at_quantile(q) as f64 / 1e3));
        }
        out.push((100.0, self.0.max() as f64 / 1e3));
        out
    }
}

impl Serialize for Hist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hist, D::Error> {
        let text = String::deserialize(d)?;
        Hist::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// Failures by cause ("connect: refused", "handshake: HTTP 503", ...), counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Failures(pub BTreeMap<String, u64>);

impl Failures {
    pub fn add(&mut self, cause: &str, n: u64) {
        if n == 0 {
            return;
        }
        match self.0.get_mut(cause) {
            Some(c) => *c += n,
            None => {
                self.0.insert(cause.to_string(), n);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn merge(&mut self, other: &Failures) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }
}

/// Counters of one thread, process or run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Connections started (socket created and connect issued, or failed trying).
    pub attempted: u64,
    /// Connections that completed the WebSocket handshake.
    pub connected: u64,
    /// Connections that ended in failure (any phase).
    pub failed: u64,
    /// Connections closed with a full close handshake.
    pub closed_clean: u64,
    /// Echo: messages sent.
    pub sent: u64,
    /// Echo: echoes received and verified byte for byte.
    pub verified: u64,
    /// Echo: verified echoes received while the run phase lasted (for msgs/s).
    pub verified_in_run: u64,
    /// Echo: echoes that did not match what was sent.
    pub mismatched: u64,
    /// Echo: messages never answered (connection lost, or the drain timed out).
    pub unanswered: u64,
    /// Fanout: messages received by subscribers and parsed.
    pub deliveries: u64,
    /// Fanout: deliveries of a sequence number a subscriber had already seen.
    pub duplicates: u64,
    /// Fanout: first deliveries of a sequence number after a higher one (not lost, but out
    /// of order).
    #[serde(default)]
    pub out_of_order: u64,
    /// Fanout: messages a subscriber could not parse as a loadgen payload.
    pub malformed: u64,
    /// Fanout: subscribers open when publishing started.
    pub subscribers: u64,
}

impl Counts {
    pub fn merge(&mut self, o: &Counts) {
        self.attempted += o.attempted;
        self.connected += o.connected;
        self.failed += o.failed;
        self.closed_clean += o.closed_clean;
        self.sent += o.sent;
        self.verified += o.verified;
        self.verified_in_run += o.verified_in_run;
        self.mismatched += o.mismatched;
        self.unanswered += o.unanswered;
        self.deliveries += o.deliveries;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.malformed += o.malformed;
        self.subscribers += o.subscribers;
    }
}

/// Everything one thread (or, merged, one process or the whole run) measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub counts: Counts,
    pub failures: Failures,
    /// Time from starting the TCP connect to a verified 101 response.
    pub handshake: Hist,
    /// Echo round trips.
    pub rtt: Hist,
    /// Fanout delivery latency from the intended send time (corrected for coordinated omission).
    pub delivery: Hist,
    /// Fanout delivery latency from the actual send time (not corrected).
    pub delivery_uncorrected: Hist,
    /// Fanout: first-time deliveries per sequence number, summed over subscribers.
    #[serde(with = "rle")]
    pub per_seq: Vec<u32>,
    /// Fanout, flood: for each subscriber that ended during the run or the drain (closed by the
    /// server, say), how far it got: the sequence number after the last one it received.
    pub cut_off: Vec<u64>,
    /// Wall time this process spent ramping up (max over merged processes).
    pub ramp_s: f64,
    /// Several `--url`s: the same figures per node, in `--url` order (empty with one node).
    #[serde(default)]
    pub nodes: Vec<NodeResults>,
}

impl Results {
    pub fn merge(&mut self, o: &Results) {
        self.counts.merge(&o.counts);
        self.failures.merge(&o.failures);
        self.handshake.merge(&o.handshake);
        self.rtt.merge(&o.rtt);
        self.delivery.merge(&o.delivery);
        self.delivery_uncorrected.merge(&o.delivery_uncorrected);
        add_per_seq(&mut self.per_seq, &o.per_seq);
        self.cut_off.extend_from_slice(&o.cut_off);
        self.ramp_s = self.ramp_s.max(o.ramp_s);
        crate::nodes::merge_all(&mut self.nodes, &o.nodes);
    }
}

/// Adds per-sequence counts `b` into `a`, index by index.
pub(crate) fn add_per_seq(a: &mut Vec<u32>, b: &[u32]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Counts one first-time delivery of `seq` in per-sequence counts.
pub(crate) fn count_first(per_seq: &mut Vec<u32>, seq: usize) {
    if per_seq.len() <= seq {
        per_seq.resize((seq + 1).max(per_seq.len() * 2), 0);
    }
    per_seq[seq] += 1;
}

/// Per-sequence counts are long runs of one value (every subscriber got every message), so
/// they travel run-length encoded as [[value, repeat], ...].
pub(crate) mod rle {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for &x in v {
            match runs.last_mut() {
                Some((val, n)) if *val == x => *n += 1,
                _ => runs.push((x, 1)),
            }
        }
        runs.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let runs: Vec<(u32, u32)> = Vec::deserialize(d)?;
        let mut out = Vec::new();
        for (val, n) in runs {
            out.extend(std::iter::repeat_n(val, n as usize));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: impl IntoIterator<Item = u64>) -> Hist {
        let mut h = Hist::default();
        for v in values {
            h.record(v);
        }
        h
    }

    #[test]
    fn histograms_merge_exactly_across_serialization() {
        // Three "processes" with different distributions; the merge of their serialized forms
        // must equal one histogram that saw every value.
        let parts = [
            hist((1..=1000).map(|i| i * 1000)),
            hist((1..=10).map(|i| i * 1_000_000)),
            hist([5, 50_000_000_000, MAX_NS * 2]),
        ];
        let mut all = Hist::default();
        let mut merged = Hist::default();
        for p in &parts {
            all.merge(p);
            let json = serde_json::to_string(p).unwrap();
            let back: Hist = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, p);
            merged.merge(&back);
        }
        assert_eq!(merged, all);
        assert_eq!(merged.count(), 1013);
        let p = merged.percentiles();
        assert_eq!(p.count, 1013);
        assert!((p.p50_us - 507.0).abs() < 2.0, "{p:?}");
        assert!(
            p.max_us >= MAX_NS as f64 / 1e3 * 0.999,
            "clamped, not dropped: {p:?}"
        );
        assert!(p.min_us <= 0.006);
    }

    #[test]
    fn empty_histogram_has_zero_percentiles_and_no_curve() {
        let h = Hist::default();
        assert_eq!(h.percentiles(), Percentiles::default());
        assert!(h.curve().is_empty());
        let h = hist(1..=100_000);
        let c = h.curve();
        assert_eq!(c.first().unwrap().0, 0.0);
        assert_eq!(c.last().unwrap().0, 100.0);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn bad_histogram_text_is_an_error() {
        assert!(Hist::from_base64("!!!").is_err());
        assert!(Hist::from_base64("AAAA").is_err());
    }

    #[test]
    fn results_merge_counts_failures_and_sequences() {
        let mut a = Results::default();
        a.counts.connected = 3;
        a.failures.add("connect: refused", 2);
        a.per_seq = vec![3, 3, 2];
        a.ramp_s = 1.5;
        let mut b = Results::default();
        b.counts.connected = 4;
        b.failures.add("connect: refused", 1);
        b.failures.add("handshake: HTTP 503", 5);
        b.per_seq = vec![4, 4, 4, 4, 1];
        b.ramp_s = 1.0;
        b.rtt.record(42_000);
        b.cut_off = vec![7];
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.contains("[[4,4],[1,1]]"), "run-length encoded: {json}");
        let b: Results = serde_json::from_str(&json).unwrap();
        a.merge(&b);
        assert_eq!(a.counts.connected, 7);
        assert_eq!(a.failures.0["connect: refused"], 3);
        assert_eq!(a.failures.total(), 8);
        assert_eq!(a.per_seq, [7, 7, 6, 4, 1]);
        assert_eq!(a.ramp_s, 1.5);
        assert_eq!(a.rtt.count(), 1);
        assert_eq!(a.cut_off, [7]);
    }
}
