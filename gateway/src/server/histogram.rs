//! Latency histograms for `/metrics`, Prometheus style: fixed buckets, one set per worker
//! (only that worker writes it, with plain loads and stores), summed when read.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket, `+Inf`, is implicit).
const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// One worker's histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl Histogram {
    /// Records `weight` observations of `d` (a batch of deliveries written at once).
    pub fn observe(&self, d: Duration, weight: u64) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        bump(&self.buckets[i], weight);
        bump(&self.sum_us, us.saturating_mul(weight));
    }
}

/// Appends the Prometheus text of the sum of `hists` as histogram `name` (in seconds).
pub fn render<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    hists: impl Iterator<Item = &'a Histogram>,
) {
    let mut buckets = [0u64; BOUNDS_US.len() + 1];
    let mut sum_us = 0u64;
    for h in hists {
        for (b, c) in buckets.iter_mut().zip(&h.buckets) {
            *b += c.load(Ordering::Relaxed);
        }
        sum_us += h.sum_us.load(Ordering::Relaxed);
    }
    let _ = writeln!(
        out,
        "# HELP gateway_{name} {help}\n# TYPE gateway_{name} histogram"
    );
    let mut cumulative = 0;
    for (i, count) in buckets.iter().enumerate() {
        cumulative += count;
        match BOUNDS_US.get(i) {
            Some(b) => {
                let le = *b as f64 / 1e6;
                let _ = writeln!(out, "gateway_{name}_bucket{{le=\"{le}\"}} {cumulative}");
            }
            None => {
                let _ = writeln!(out, "gateway_{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let _ = writeln!(out, "gateway_{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "gateway_{name}_count {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_weighted() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(80), 1);
        h.observe(Duration::from_millis(3), 10);
        h.observe(Duration::from_secs(60), 1);
        let mut out = String::new();
        render(&mut out, "x_seconds", "test", [&h].into_iter());
        assert!(
            out.contains("gateway_x_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_x_seconds_bucket{le=\"0.0025\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_x_seconds_bucket{le=\"0.005\"} 11\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_x_seconds_bucket{le=\"10\"} 11\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_x_seconds_bucket{le=\"+Inf\"} 12\n"),
            "{out}"
        );
        assert!(out.contains("gateway_x_seconds_count 12\n"), "{out}");
        assert!(out.contains("gateway_x_seconds_sum 60.03008\n"), "{out}");
    }
}
