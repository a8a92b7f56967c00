//! The report of a run: every figure in one serialisable structure ([`Report`]), and the
//! `--json` file. The text summary and the HTML page both draw `summary`'s rows.
//!
//! Latencies are always distributions (percentiles from HdrHistogram), never averages alone.
//! loadgen's own CPU time is reported beside the target's, so a reader can tell which side
//! was the bottleneck.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::args::{Config, PublisherKind, Scenario};
use crate::clock::secs;
use crate::control::Phase;
use crate::fleet::Totals;
use crate::nodes::NodeReport;
use crate::payload::{self, Accounting};
use crate::publisher::{Answers, Published};
use crate::stats::{Percentiles, Results};
use crate::sys::CpuTime;

/// One point of the timeline (charts "connections over time" and "messages/s over time").
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the start of the run.
    pub t_s: f64,
    pub open: u64,
    pub failed: u64,
    /// Verified echoes per second over the interval ending here.
    pub msgs_per_s: f64,
    /// Fan-out deliveries per second over the interval ending here.
    pub deliveries_per_s: f64,
    pub phase: &'static str,
}

impl Sample {
    pub fn between(t0: u64, from: (u64, Totals), to: (u64, Totals), phase: Phase) -> Sample {
        let dt = secs(from.0, to.0).max(1e-9);
        Sample {
            t_s: secs(t0, to.0),
            open: to.1.open,
            failed: to.1.failed,
            msgs_per_s: to.1.verified.saturating_sub(from.1.verified) as f64 / dt,
            deliveries_per_s: to.1.deliveries.saturating_sub(from.1.deliveries) as f64 / dt,
            phase: match phase {
                Phase::Ramp => "ramp",
                Phase::Run => "run",
                Phase::Drain => "drain",
                Phase::Abort => "abort",
            },
        }
    }
}

/// Wall-clock figures of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timing {
    /// From the start to every connection open (or failed): "time to reach N".
    pub ramp_s: f64,
    /// Connections open at the same time when the ramp ended.
    pub open_at_ramp_end: u64,
    /// Length of the run phase (hold, echo or publish).
    pub run_s: f64,
    pub wall_s: f64,
    /// Whether the controller had to abort a run that did not end by itself.
    pub aborted: bool,
}

/// A target process's CPU time and memory over the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TargetCpu {
    pub pid: u32,
    pub cpu_s: Option<f64>,
    pub rss_before: Option<u64>,
    pub rss_at_ramp_end: Option<u64>,
    /// The largest VmRSS seen, sampled every 100 ms from the start to the end of the run.
    pub rss_peak: Option<u64>,
    pub rss_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectReport {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    pub closed_clean: u64,
    pub connect_rate: f64,
    pub handshake: Percentiles,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EchoReport {
    pub pipeline: usize,
    pub size: usize,
    pub sent: u64,
    pub verified: u64,
    pub mismatched: u64,
    pub unanswered: u64,
    /// Verified echoes per second during the run phase.
    pub msgs_per_s: f64,
    pub rtt: Percentiles,
}

/// `--echo-check`: one echo per connection after the hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EchoCheckReport {
    pub sent: u64,
    pub verified: u64,
    pub mismatched: u64,
    pub unanswered: u64,
    pub rtt: Percentiles,
}

/// A fanout or flood run: what the publisher sent and the server answered, what the
/// subscribers got.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanoutReport {
    pub publisher: PublisherKind,
    /// Fanout: messages per second offered (a flood has no rate).
    pub rate: f64,
    pub size: usize,
    pub publish_window: usize,
    /// Messages sent (requests written).
    pub published: u64,
    /// Of those, accepted by the server (HTTP 200): the ones subscribers must receive.
    pub accepted: u64,
    /// How the server answered, refusals (503) apart.
    pub answers: Answers,
    /// Fanout: messages never sent, the publisher being more than --timeout behind.
    pub unsent: u64,
    /// Requests answered per second, and accepted per second, over the publishing time.
    pub requests_per_s: f64,
    pub accepted_per_s: f64,
    pub max_in_flight: u64,
    /// Wall time from the first message to the last answer.
    pub publish_s: f64,
    /// The publisher thread's own CPU time, and its share of one core over `publish_s`.
    pub publisher_cpu_user_s: f64,
    pub publisher_cpu_sys_s: f64,
    pub publisher_cpu_pct: f64,
    /// Subscribers closed by the server, by close code ("1008": slow consumer).
    pub server_closes: BTreeMap<String, u64>,
    pub subscribers: u64,
    /// What the server said it reached, from its last publish answer.
    pub server_subscribers: Option<u64>,
    #[serde(flatten)]
    pub accounting: Accounting,
    pub duplicates: u64,
    /// First deliveries of a number after a higher one (delivered, so not lost).
    pub out_of_order: u64,
    pub malformed: u64,
    pub deliveries: u64,
    /// Deliveries per second over the publishing time.
    pub deliveries_per_s: f64,
    /// From the intended send time: corrected for coordinated omission.
    pub latency: Percentiles,
    /// From the actual send time.
    pub latency_uncorrected: Percentiles,
    pub publish_request: Percentiles,
    pub publisher_max_lag_us: f64,
    pub publish_failures: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuReport {
    /// loadgen's CPU time over the run, all its processes and threads.
    pub loadgen_user_s: f64,
    pub loadgen_sys_s: f64,
    /// loadgen's CPU time as a share of one core over the wall time (200 = two cores busy).
    pub loadgen_pct: f64,
    pub cores: usize,
    pub targets: Vec<TargetCpu>,
    /// The targets' CPU time as a share of one core over the wall time.
    pub targets_pct: Option<f64>,
}

/// Points of the latency percentile curves: (percentile, microseconds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Curves {
    pub handshake: Vec<(f64, f64)>,
    pub rtt: Vec<(f64, f64)>,
    pub delivery: Vec<(f64, f64)>,
}

/// Every figure of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub url: String,
    pub conns: usize,
    pub duration_s: f64,
    pub procs: usize,
    pub threads: usize,
    pub timing: Timing,
    pub connect: ConnectReport,
    /// Connection failures by cause.
    pub failures: BTreeMap<String, u64>,
    pub echo: Option<EchoReport>,
    /// `--echo-check`: the one echo per connection after a connect run's hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo_check: Option<EchoCheckReport>,
    pub fanout: Option<FanoutReport>,
    /// Several `--url`s: each node's figures, in `--url` order (absent with one node).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReport>,
    pub cpu: CpuReport,
    pub timeline: Vec<Sample>,
    pub curves: Curves,
    /// Every client did what was asked: all connected, every echo verified, nothing lost.
    pub ok: bool,
}

impl EchoReport {
    fn new(cfg: &Config, r: &Results, timing: &Timing) -> EchoReport {
        let c = &r.counts;
        EchoReport {
            pipeline: cfg.pipeline,
            size: cfg.size,
            sent: c.sent,
            verified: c.verified,
            mismatched: c.mismatched,
            unanswered: c.unanswered,
            msgs_per_s: if timing.run_s > 0.0 {
                c.verified_in_run as f64 / timing.run_s
            } else {
                0.0
            },
            rtt: r.rtt.percentiles(),
        }
    }
}

/// The failure cause the client gives a connection the server closed.
pub const SERVER_CLOSED: &str = "closed by the server with code ";

impl FanoutReport {
    fn new(cfg: &Config, r: &Results, p: Published, timing: &Timing) -> FanoutReport {
        let c = &r.counts;
        let accounting = payload::account(&r.per_seq, &p.accepted, c.subscribers, &r.cut_off);
        let span = p.elapsed_s.max(timing.run_s).max(1e-9);
        let publish_s = p.elapsed_s.max(1e-9);
        let a = &p.answers;
        let answered = a.ok + a.busy + a.refused + a.other;
        let server_closes = r
            .failures
            .0
            .iter()
            .filter_map(|(k, n)| Some((k.strip_prefix(SERVER_CLOSED)?.to_string(), *n)))
            .collect();
        FanoutReport {
            publisher: cfg.publisher,
            rate: if cfg.scenario == Scenario::Flood {
                0.0
            } else {
                cfg.rate
            },
            size: cfg.size,
            publish_window: cfg.publish_window,
            published: p.accepted.len() as u64,
            accepted: p.accepted_count(),
            answers: p.answers,
            unsent: p.unsent,
            requests_per_s: answered as f64 / publish_s,
            accepted_per_s: a.ok as f64 / publish_s,
            max_in_flight: p.max_in_flight,
            publish_s: p.elapsed_s,
            publisher_cpu_user_s: p.cpu.user_s,
            publisher_cpu_sys_s: p.cpu.sys_s,
            publisher_cpu_pct: p.cpu.total() / publish_s * 100.0,
            server_closes,
            subscribers: c.subscribers,
            server_subscribers: p.server_subscribers,
            accounting,
            duplicates: c.duplicates,
            out_of_order: c.out_of_order,
            malformed: c.malformed,
            deliveries: c.deliveries,
            deliveries_per_s: c.deliveries as f64 / span,
            latency: r.delivery.percentiles(),
            latency_uncorrected: r.delivery_uncorrected.percentiles(),
            publish_request: p.request_latency.percentiles(),
            publisher_max_lag_us: p.max_lag_ns as f64 / 1e3,
            publish_failures: p.failures.0,
        }
    }
}

impl FanoutReport {
    /// Nothing lost, duplicated or malformed, and every message sent was accepted (a flood is
    /// about refusals: there, some accepted is enough), and none failed.
    fn ok(&self, scenario: Scenario) -> bool {
        let accepted = match scenario {
            Scenario::Flood => self.accepted > 0,
            _ => self.accepted == self.published && self.published > 0,
        };
        accepted
            && self.accounting.lost == 0
            && self.duplicates == 0
            && self.malformed == 0
            && self.publish_failures.is_empty()
    }
}

/// Connection failures that do not make a run fail: in a flood, subscribers closed as slow
/// consumers (1008) are the gateway keeping its bound, which is what a flood measures.
fn tolerated_failures(cfg: &Config, r: &Results) -> u64 {
    match cfg.scenario {
        Scenario::Flood => r
            .failures
            .0
            .get(&format!("{SERVER_CLOSED}1008"))
            .copied()
            .unwrap_or(0),
        _ => 0,
    }
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        cfg: &Config,
        procs: usize,
        threads: usize,
        r: Results,
        published: Option<Published>,
        timing: Timing,
        cpu: CpuTime,
        targets: Vec<TargetCpu>,
        timeline: Vec<Sample>,
    ) -> Report {
        let c = &r.counts;
        let echo = (cfg.scenario == Scenario::Echo).then(|| EchoReport::new(cfg, &r, &timing));
        let echo_check = cfg.echo_check.then(|| EchoCheckReport {
            sent: c.sent,
            verified: c.verified,
            mismatched: c.mismatched,
            unanswered: c.unanswered,
            rtt: r.rtt.percentiles(),
        });
        let published = published.unwrap_or_default();
        let nodes = crate::nodes::reports(cfg, &r.nodes, &published.accepted);
        let fanout = cfg
            .scenario
            .publishes()
            .then(|| FanoutReport::new(cfg, &r, published, &timing));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wall = timing.wall_s.max(1e-9);
        let target_cpu: Vec<f64> = targets.iter().filter_map(|t| t.cpu_s).collect();
        let targets_pct =
            (!target_cpu.is_empty()).then(|| target_cpu.iter().sum::<f64>() / wall * 100.0);
        let ok = c.connected == cfg.conns as u64
            && r.failures.total() == tolerated_failures(cfg, &r)
            && !timing.aborted
            && echo
                .as_ref()
                .is_none_or(|e| e.mismatched == 0 && e.unanswered == 0 && e.verified == e.sent)
            && echo_check.as_ref().is_none_or(|e| {
                e.mismatched == 0 && e.unanswered == 0 && e.verified == c.connected
            })
            && fanout.as_ref().is_none_or(|f| f.ok(cfg.scenario));
        Report {
            scenario: cfg.scenario,
            url: cfg.url.clone(),
            conns: cfg.conns,
            duration_s: cfg.duration.as_secs_f64(),
            procs,
            threads,
            timing,
            connect: ConnectReport {
                attempted: c.attempted,
                connected: c.connected,
                failed: c.failed,
                closed_clean: c.closed_clean,
                connect_rate: cfg.connect_rate,
                handshake: r.handshake.percentiles(),
            },
            failures: r.failures.0.clone(),
            echo,
            echo_check,
            fanout,
            nodes,
            cpu: CpuReport {
                loadgen_user_s: cpu.user_s,
                loadgen_sys_s: cpu.sys_s,
                loadgen_pct: cpu.total() / wall * 100.0,
                cores,
                targets,
                targets_pct,
            },
            timeline,
            curves: Curves {
                handshake: r.handshake.curve(),
                rtt: r.rtt.curve(),
                delivery: r.delivery.curve(),
            },
            ok,
        }
    }

    /// The reasons a finished run is not ok, beside its failures by cause (empty: ok).
    pub fn not_ok_reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(f) = &self.fanout {
            let refused = f.answers.busy + f.answers.refused;
            if self.scenario == Scenario::Fanout && refused > 0 {
                out.push(format!("the server refused {refused} messages (503)"));
            }
            if f.accounting.lost > 0 {
                let by_node: Vec<String> = (self.nodes.iter().enumerate())
                    .filter(|(_, n)| n.lost > 0)
                    .map(|(i, n)| format!("node {}: {}", i + 1, n.lost))
                    .collect();
                let detail = if by_node.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by_node.join(", "))
                };
                out.push(format!("{} deliveries lost{detail}", f.accounting.lost));
            }
            if f.accepted == 0 {
                out.push("the server accepted no message".into());
            }
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialize")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report as a small echo run would make it, for this module's and `html`'s tests.
    pub(crate) fn sample_report(scenario: &str) -> Report {
        let cfg = crate::args::parse(["loadgen", "--scenario", scenario, "--conns", "3"]).unwrap();
        let mut r = Results::default();
        r.counts.attempted = 3;
        r.counts.connected = 3;
        r.counts.closed_clean = 3;
        for i in 1..=3000u64 {
            r.handshake.record(100_000 + i * 50);
            r.rtt.record(20_000 + i * 10);
            r.delivery.record(30_000 + i * 20);
            r.delivery_uncorrected.record(30_000 + i * 10);
        }
        r.counts.sent = 3000;
        r.counts.verified = 3000;
        r.counts.verified_in_run = 2900;
        r.counts.subscribers = 3;
        r.counts.deliveries = 3000;
        r.per_seq = vec![3; 1000];
        let published = Published {
            accepted: vec![true; 1000],
            ..Published::default()
        };
        let timeline = (0..20)
            .map(|i| Sample {
                t_s: f64::from(i) * 0.5,
                open: (i * 3 / 2).min(3) as u64,
                failed: 0,
                msgs_per_s: f64::from(i) * 100.0,
                deliveries_per_s: 300.0,
                phase: "run",
            })
            .collect();
        Report::build(
            &cfg,
            1,
            2,
            r,
            Some(published),
            Timing {
                ramp_s: 0.1,
                open_at_ramp_end: 3,
                run_s: 10.0,
                wall_s: 10.5,
                aborted: false,
            },
            CpuTime {
                user_s: 1.0,
                sys_s: 0.5,
            },
            vec![TargetCpu {
                pid: 1,
                cpu_s: Some(4.2),
                rss_before: Some(10 << 20),
                rss_at_ramp_end: Some(20 << 20),
                rss_peak: Some(24 << 20),
                rss_after: Some(12 << 20),
            }],
            timeline,
        )
    }

    #[test]
    fn echo_report_figures_and_summary() {
        let r = sample_report("echo");
        assert!(r.ok, "{}", r.summary());
        let e = r.echo.as_ref().unwrap();
        assert_eq!(e.msgs_per_s, 290.0);
        assert!(e.rtt.p50_us > 20.0 && e.rtt.p99_us > e.rtt.p50_us);
        assert!(r.fanout.is_none());
        assert!((r.cpu.loadgen_pct - 1.5 / 10.5 * 100.0).abs() < 1e-9);
        assert!((r.cpu.targets_pct.unwrap() - 40.0).abs() < 1.0);
        let text = r.summary();
        for want in [
            "msgs/s",
            "round trip",
            "p99.9",
            "3 connected",
            "target 40%",
            "ok:",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    #[test]
    fn fanout_report_accounts_losses() {
        let r = sample_report("fanout");
        let f = r.fanout.as_ref().unwrap();
        assert_eq!(f.accounting.expected, 3000);
        assert_eq!(f.accounting.lost, 0);
        assert!(r.ok, "{}", r.summary());
        assert!(r.summary().contains("uncorrected"));
    }

    #[test]
    fn failures_make_a_run_not_ok() {
        let cfg = crate::args::parse(["loadgen", "--conns", "2"]).unwrap();
        let mut r = Results::default();
        r.counts.connected = 1;
        r.failures.add("connect: refused", 1);
        let rep = Report::build(
            &cfg,
            1,
            1,
            r,
            None,
            Timing::default(),
            CpuTime::default(),
            vec![],
            vec![],
        );
        assert!(!rep.ok);
        let text = rep.summary();
        assert!(
            text.contains("connect: refused") && text.contains("NOT OK"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
        assert_eq!(json["failures"]["connect: refused"], 1);
        assert_eq!(json["connect"]["connected"], 1);
        assert_eq!(json["ok"], false);
    }
}
