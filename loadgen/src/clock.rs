//! The one clock loadgen reads: CLOCK_MONOTONIC, in nanoseconds.
//!
//! Every timestamp loadgen records or puts on the wire comes from here. CLOCK_MONOTONIC is one
//! clock for the whole machine, not per process, so a send time written by the publisher in the
//! parent process and a receive time read by a subscriber in a worker process are comparable:
//! fan-out latency across loadgen's worker processes needs no clock synchronisation. (It is not
//! comparable across machines; loadgen and the gateway are meant to share one.)

/// Nanoseconds since an arbitrary point (boot, on Linux), never going backwards.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available on Linux");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Seconds between two `now_ns` readings, as a float for reports.
pub fn secs(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_shared_with_std() {
        let a = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = now_ns();
        assert!(b >= a + 2_000_000, "{a} {b}");
        assert!((secs(a, b) - 0.002).abs() < 0.5);
    }
}
