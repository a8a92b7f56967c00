//! Refusals in aggregate for the operator's log: every interval, one line with what was
//! refused (connections over a limit, bad requests, busy publishes, timeouts, slow consumers)
//! since the last line, and nothing when nothing was. A thread of its own that wakes a few
//! times a second and stops with the server.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Shared;

/// Whether a counter counts refusals an operator should hear about.
fn is_refusal(name: &str) -> bool {
    name.contains("refused")
        || name.contains("timeouts")
        || name == "slow_consumers_total"
        || name == "accept_errors_total"
}

/// Starts the reporting thread; it ends when the server is dropped or shut down.
pub(super) fn spawn(shared: Weak<Shared>, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("gw-report".into())
        .spawn(move || run(&shared, interval));
    if let Err(e) = spawned {
        log::error!("cannot start the refusal report thread: {e}");
    }
}

fn run(shared: &Weak<Shared>, interval: Duration) {
    let mut last = Vec::new();
    let mut next = Instant::now() + interval;
    loop {
        std::thread::sleep(Duration::from_millis(250).min(interval));
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.shutdown.load(Ordering::Relaxed) {
            return;
        }
        if Instant::now() < next {
            continue;
        }
        next += interval;
        let now: Vec<(&str, u64)> = shared
            .stats
            .totals()
            .into_iter()
            .filter(|(n, _)| is_refusal(n))
            .collect();
        if let Some(line) = summary(&last, &now) {
            log::warn!(
                "refused in the last {}: {line}",
                crate::server::config::format_duration(interval)
            );
        }
        last = now;
    }
}

/// `name=delta` for every counter that grew since `last`; `None` if none did.
fn summary(last: &[(&str, u64)], now: &[(&str, u64)]) -> Option<String> {
    let parts: Vec<String> = now
        .iter()
        .filter_map(|&(name, v)| {
            let before = last.iter().find(|(n, _)| *n == name).map_or(0, |p| p.1);
            (v > before).then(|| format!("{}={}", name.trim_end_matches("_total"), v - before))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_growth_is_reported() {
        let a = [
            ("refused_max_conns_total", 3),
            ("http_refused_403_total", 0),
        ];
        let b = [
            ("refused_max_conns_total", 5),
            ("http_refused_403_total", 1),
        ];
        assert_eq!(summary(&a, &a), None);
        assert_eq!(
            summary(&a, &b).as_deref(),
            Some("refused_max_conns=2 http_refused_403=1")
        );
        assert_eq!(summary(&[], &a).as_deref(), Some("refused_max_conns=3"));
        assert!(is_refusal("publish_refused_busy_total"));
        assert!(is_refusal("pong_timeouts_total"));
        assert!(!is_refusal("accepted_total"));
    }
}
