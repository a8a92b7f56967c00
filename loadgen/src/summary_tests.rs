//! Tests of the summary rows: what a run pushed back by the server (refusals, slow consumers
//! closed) and a run over two nodes print, in the text, the HTML page and the JSON alike.

use crate::publisher::{Answers, Published};
use crate::report::{Report, TargetCpu, Timing};
use crate::stats::Results;
use crate::sys::CpuTime;

/// 3 subscribers, 10 messages of which 3 and 7 were refused (503 busy); one subscriber was
/// closed as a slow consumer after seq 5.
fn pushed_back(scenario: &str) -> Report {
    let argv = [
        "loadgen",
        "--scenario",
        scenario,
        "--conns",
        "3",
        "--target-pid",
        "1",
    ];
    let cfg = crate::args::parse(argv).unwrap();
    let accepted: Vec<bool> = (0..10).map(|s| s != 3 && s != 7).collect();
    let mut r = Results::default();
    r.counts.attempted = 3;
    r.counts.connected = 3;
    r.counts.closed_clean = 2;
    r.counts.subscribers = 3;
    r.failures.add("closed by the server with code 1008", 1);
    r.cut_off = vec![6];
    r.per_seq = (0..10)
        .map(|s| match (accepted[s], s < 6) {
            (false, _) => 0,
            (true, true) => 3,
            (true, false) => 2,
        })
        .collect();
    r.counts.deliveries = r.per_seq.iter().map(|&n| u64::from(n)).sum();
    for _ in 0..r.counts.deliveries {
        r.delivery.record(50_000);
    }
    let published = Published {
        accepted,
        answers: Answers {
            ok: 8,
            busy: 2,
            ..Answers::default()
        },
        elapsed_s: 2.0,
        cpu: CpuTime {
            user_s: 0.5,
            sys_s: 0.25,
        },
        ..Published::default()
    };
    let target = TargetCpu {
        pid: 1,
        cpu_s: Some(1.0),
        rss_before: Some(10 << 20),
        rss_at_ramp_end: Some(11 << 20),
        rss_peak: Some(40 << 20),
        rss_after: Some(12 << 20),
    };
    let timing = Timing {
        run_s: 2.0,
        wall_s: 2.5,
        ..Timing::default()
    };
    let cpu = CpuTime::default();
    Report::build(
        &cfg,
        1,
        1,
        r,
        Some(published),
        timing,
        cpu,
        vec![target],
        vec![],
    )
}

#[test]
fn flood_counts_refusals_server_closes_and_peak_memory() {
    let r = pushed_back("flood");
    let text = r.summary();
    let f = r.fanout.as_ref().unwrap();
    assert_eq!((f.published, f.accepted), (10, 8));
    assert_eq!(f.accounting.lost, 0, "{text}");
    assert_eq!(f.accounting.subscribers_cut_off, 1);
    assert_eq!(
        f.accounting.cut_off, 3,
        "seqs 6, 8 and 9 were not due to it"
    );
    assert_eq!(f.accounting.expected, 5 * 3 + 3 * 2);
    assert_eq!(f.server_closes.get("1008"), Some(&1));
    assert_eq!(f.accepted_per_s, 4.0);
    assert!((f.publisher_cpu_pct - 37.5).abs() < 1e-9);
    assert!(
        r.ok,
        "slow consumers closed are what a flood measures: {text}"
    );
    for want in [
        "flood",
        "2 refused 503 Retry-After (busy)",
        "1 with 1008 (slow consumer)",
        "publisher thread cpu 0.50 s user + 0.25 s sys = 38%",
        "peak 40.0 MiB",
        "missing at the end 0",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["fanout"]["answers"]["busy"], 2);
    assert_eq!(json["fanout"]["server_closes"]["1008"], 1);
    assert_eq!(json["cpu"]["targets"][0]["rss_peak"], 40 << 20);
}

/// Two nodes of 2 subscribers, 5 messages: the publisher's node got everything, the other
/// nothing (no bus between them).
fn two_nodes() -> Report {
    let urls = "ws://127.0.0.1:1/ws/chat/a,ws://127.0.0.1:2/ws/chat/a";
    let argv = [
        "loadgen",
        "--scenario",
        "fanout",
        "--conns",
        "4",
        "--url",
        urls,
    ];
    let cfg = crate::args::parse(argv).unwrap();
    let mut r = Results::default();
    r.counts.connected = 4;
    r.counts.closed_clean = 4;
    r.counts.subscribers = 4;
    r.counts.deliveries = 10;
    r.per_seq = vec![2; 5];
    r.nodes = vec![crate::nodes::NodeResults::default(); 2];
    for (k, n) in r.nodes.iter_mut().enumerate() {
        (n.connected, n.subscribers) = (2, 2);
        n.handshake.record(1_000_000);
        if k == 0 {
            n.deliveries = 10;
            n.per_seq = vec![2; 5];
            for _ in 0..10 {
                n.delivery.record(2_000_000);
                r.delivery.record(2_000_000);
            }
        }
    }
    let published = Published {
        accepted: vec![true; 5],
        ..Published::default()
    };
    let timing = Timing::default();
    let cpu = CpuTime::default();
    Report::build(&cfg, 1, 1, r, Some(published), timing, cpu, vec![], vec![])
}

/// The totals and the per-node table say where the losses were, in the text, the page and
/// the JSON alike.
#[test]
fn per_node_table_after_the_totals() {
    let rep = two_nodes();
    assert_eq!(rep.nodes.len(), 2);
    assert_eq!((rep.nodes[0].lost, rep.nodes[1].lost), (0, 10));
    assert_eq!(rep.fanout.as_ref().unwrap().accounting.lost, 10);
    assert!(!rep.ok);
    assert!(
        rep.not_ok_reasons()
            .contains(&"10 deliveries lost (node 2: 10)".to_string())
    );
    let text = rep.summary();
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("per node (delivery latency):"))
        .skip(1)
        .take(3)
        .collect();
    assert_eq!(table.len(), 3, "{text}");
    let cells = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        cells(table[0])[..5],
        ["node", "url", "conns", "connected", "subscribers"]
    );
    assert_eq!(
        cells(table[1])[..9],
        [
            "1",
            "ws://127.0.0.1:1/ws/chat/a",
            "2",
            "2",
            "2",
            "10",
            "0",
            "0",
            "0"
        ]
    );
    assert_eq!(
        cells(table[2])[..9],
        [
            "2",
            "ws://127.0.0.1:2/ws/chat/a",
            "2",
            "2",
            "2",
            "0",
            "10",
            "0",
            "0"
        ]
    );
    assert!(table[1].ends_with("2.00 ms  2.00 ms  2.00 ms"), "{text}");
    assert_eq!(cells(table[2])[9..], ["-", "-", "-"], "{text}");
    let page = crate::html::render(&rep);
    assert!(
        page.contains("<td>ws://127.0.0.1:2/ws/chat/a</td>"),
        "{page}"
    );
    let json: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
    assert_eq!(json["nodes"][1]["lost"], 10);
    assert_eq!(json["nodes"][0]["latency"]["count"], 10);
    // One node: no table, and no "nodes" in the JSON.
    let one = pushed_back("fanout");
    assert!(!one.summary().contains("per node"));
    assert!(!one.to_json().contains("\"nodes\""));
}

#[test]
fn a_fanout_pushed_back_is_not_ok_and_says_why() {
    let r = pushed_back("fanout");
    assert!(!r.ok);
    let text = r.summary();
    assert!(
        text.contains("NOT OK: the server refused 2 messages (503)"),
        "{text}"
    );
}
