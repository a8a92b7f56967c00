//! loadgen against a real gateway started in this process on an ephemeral port: a few hundred
//! connections in each scenario, checking the counts (everyone connected, every echo verified,
//! no delivery lost, a latency recorded for every delivery). One test also goes through worker
//! processes (the built `loadgen` binary), so the histogram and count merge is exercised too.
//! The pipelined publisher is checked at a rate a one-request-at-a-time publisher could not
//! keep, and the flood against a gateway with a small `max_backlog` (refusals, nothing lost).

use std::process::Command;

use gateway::server::{Config as ServerConfig, Server, ServerHandle};
use loadgen::args::parse;

fn gateway() -> ServerHandle {
    gateway_with(ServerConfig::default())
}

fn gateway_with(cfg: ServerConfig) -> ServerHandle {
    Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        max_message: 1 << 20,
        ..cfg
    })
    .expect("gateway starts")
}

/// A loadgen configuration from flags, quiet, with worker processes started from the real
/// binary (the test binary cannot be one).
fn config(flags: &[&str]) -> loadgen::Config {
    let mut argv = vec!["loadgen", "-q", "--timeout", "5s"];
    argv.extend_from_slice(flags);
    let mut cfg = parse(argv).unwrap_or_else(|e| panic!("{flags:?}: {}", e.line()));
    cfg.exe = Some(env!("CARGO_BIN_EXE_loadgen").into());
    cfg
}

#[test]
fn connect_opens_holds_and_closes_every_connection() {
    let gw = gateway();
    let url = format!("ws://{}/echo", gw.local_addr());
    let cfg = config(&["--url", &url, "--conns", "300", "--duration", "300ms"]);
    let r = loadgen::run(&cfg).expect("run");
    assert!(r.ok, "{}", r.summary());
    assert_eq!(r.connect.connected, 300);
    assert_eq!(r.connect.closed_clean, 300);
    assert_eq!(r.timing.open_at_ramp_end, 300);
    assert_eq!(r.connect.handshake.count, 300);
    assert!(r.failures.is_empty());
}

#[test]
fn echo_in_worker_processes_verifies_every_message() {
    let gw = gateway();
    let url = format!("ws://{}/echo", gw.local_addr());
    let cfg = config(&[
        "--url",
        &url,
        "--scenario",
        "echo",
        "--conns",
        "200",
        "--pipeline",
        "4",
        "--size",
        "300",
        "--duration",
        "500ms",
        "--procs",
        "2",
    ]);
    let r = loadgen::run(&cfg).expect("run");
    assert!(r.ok, "{}", r.summary());
    assert_eq!(r.procs, 2);
    let e = r.echo.as_ref().unwrap();
    assert!(e.sent >= 800, "{}", r.summary());
    assert_eq!(e.verified, e.sent);
    assert_eq!((e.mismatched, e.unanswered), (0, 0));
    assert_eq!(e.rtt.count, e.verified, "one round trip per verified echo");
    assert!(e.msgs_per_s > 0.0);
    assert_eq!(r.connect.closed_clean, 200);
}

#[test]
fn fanout_over_http_and_websocket_loses_nothing() {
    let gw = gateway();
    for publisher in ["http", "ws"] {
        let url = format!("ws://{}/ws/chat/loadgen-{publisher}", gw.local_addr());
        let cfg = config(&[
            "--url",
            &url,
            "--scenario",
            "fanout",
            "--conns",
            "200",
            "--rate",
            "100",
            "--duration",
            "500ms",
            "--publisher",
            publisher,
        ]);
        let r = loadgen::run(&cfg).expect("run");
        assert!(r.ok, "{publisher}: {}", r.summary());
        let f = r.fanout.as_ref().unwrap();
        assert_eq!(f.published, 50);
        assert_eq!(f.subscribers, 200);
        assert_eq!(f.accounting.expected, 50 * 200);
        assert_eq!(f.accounting.delivered, 50 * 200);
        assert_eq!((f.accounting.lost, f.duplicates), (0, 0));
        assert_eq!(
            f.latency.count, f.deliveries,
            "a latency for every delivery"
        );
        if publisher == "http" {
            assert_eq!(f.server_subscribers, Some(200));
        }
    }
}

/// 2,000 messages/s is one every 0.5 ms: a publisher waiting for each answer (a few ms on a
/// busy machine) fell behind and never offered that rate; the pipelined one keeps the schedule
/// and every message reaches every subscriber.
#[test]
fn pipelined_publisher_keeps_a_high_rate_and_loses_nothing() {
    let gw = gateway();
    let url = format!("ws://{}/ws/chat/loadgen-pipelined", gw.local_addr());
    let cfg = config(&[
        "--url",
        &url,
        "--scenario",
        "fanout",
        "--conns",
        "50",
        "--rate",
        "2000",
        "--duration",
        "2s",
    ]);
    let r = loadgen::run(&cfg).expect("run");
    assert!(r.ok, "{}", r.summary());
    let f = r.fanout.as_ref().unwrap();
    assert_eq!((f.published, f.accepted, f.unsent), (4000, 4000, 0));
    assert_eq!(f.answers.ok, 4000);
    assert_eq!(f.accounting.expected, 4000 * 50);
    assert_eq!(f.accounting.delivered, 4000 * 50);
    assert_eq!((f.accounting.lost, f.duplicates), (0, 0));
    assert!(f.max_in_flight >= 1);
    assert!(f.publish_s < 2.0 + 5.0, "{}", r.summary());
    assert!(f.publisher_cpu_user_s + f.publisher_cpu_sys_s > 0.0);
    assert!(!r.timing.aborted);
}

/// A flood against a gateway with a 16 KiB backlog bound: the gateway pushes back (503 with
/// Retry-After) and every accepted message reaches every subscriber that stayed open.
#[test]
fn flood_against_a_small_backlog_is_refused_and_loses_nothing() {
    let gw = gateway_with(ServerConfig {
        max_backlog: 16 * 1024,
        ..ServerConfig::default()
    });
    let url = format!("ws://{}/ws/chat/loadgen-flood", gw.local_addr());
    let cfg = config(&[
        "--url",
        &url,
        "--scenario",
        "flood",
        "--conns",
        "50",
        "--size",
        "1024",
        "--duration",
        "1500ms",
    ]);
    let r = loadgen::run(&cfg).expect("run");
    let text = r.summary();
    let f = r.fanout.as_ref().unwrap();
    assert!(f.answers.busy > 0, "the gateway pushed back: {text}");
    assert!(f.accepted > 0, "{text}");
    assert_eq!(f.accepted, f.answers.ok);
    assert_eq!(f.published, f.answers.ok + f.answers.busy, "{text}");
    assert_eq!(f.accounting.lost, 0, "{text}");
    assert_eq!(f.duplicates, 0);
    assert_eq!(
        f.accounting.delivered + f.accounting.lost,
        f.accounting.expected
    );
    let cut: u64 = f.server_closes.values().sum();
    assert_eq!(f.accounting.subscribers_cut_off, cut, "{text}");
    assert!(r.ok, "{text}");
    assert!(text.contains("refused 503 Retry-After"), "{text}");
}

/// A flood with no subscribers at all.
#[test]
fn flood_without_subscribers() {
    let gw = gateway();
    let url = format!("ws://{}/ws/chat/loadgen-empty", gw.local_addr());
    let cfg = config(&[
        "--url",
        &url,
        "--scenario",
        "flood",
        "--conns",
        "0",
        "--duration",
        "300ms",
    ]);
    let r = loadgen::run(&cfg).expect("run");
    assert!(r.ok, "{}", r.summary());
    let f = r.fanout.as_ref().unwrap();
    assert!(f.accepted > 10, "{}", r.summary());
    assert_eq!((f.subscribers, f.deliveries), (0, 0));
}

/// Two gateways with no bus between them, and a fan-out over both URLs from two worker
/// processes: 10 subscribers on each node (each gateway saw its 10 upgrades), the publisher on
/// the first. The first node's subscribers get every message; the second's get none, which
/// its row shows as all lost (what the totals alone cannot place).
#[test]
fn fanout_over_two_nodes_reports_each_node() {
    let (one, two) = (gateway(), gateway());
    let topic = "/ws/chat/loadgen-nodes";
    let urls = format!(
        "ws://{}{topic},ws://{}{topic}",
        one.local_addr(),
        two.local_addr()
    );
    let flags = ["--scenario", "fanout", "--conns", "20", "--rate", "50"];
    let cfg = config(
        &[
            &flags[..],
            &["--url", &urls, "--duration", "1s", "--procs", "2"],
        ]
        .concat(),
    );
    let r = loadgen::run(&cfg).expect("run");
    let text = r.summary();
    assert!(!r.ok, "node 2 got nothing: {text}");
    for gw in [&one, &two] {
        assert_eq!(gw.stats().total("ws_opened_total"), 10, "{text}");
    }
    let f = r.fanout.as_ref().unwrap();
    assert_eq!((f.published, f.accepted), (50, 50), "{text}");
    assert_eq!(f.server_subscribers, Some(10), "the first node publishes");
    assert_eq!(f.accounting.lost, 50 * 10, "{text}");
    assert_eq!(r.nodes.len(), 2, "{text}");
    for (k, n) in r.nodes.iter().enumerate() {
        assert_eq!(
            (n.conns, n.connected, n.subscribers),
            (10, 10, 10),
            "{text}"
        );
        assert_eq!(n.expected, 50 * 10, "node {k}: {text}");
        assert_eq!((n.duplicates, n.out_of_order), (0, 0), "node {k}: {text}");
        assert_eq!(n.handshake.count, 10);
    }
    let (a, b) = (&r.nodes[0], &r.nodes[1]);
    assert_eq!((a.deliveries, a.delivered, a.lost), (500, 500, 0), "{text}");
    assert_eq!(a.latency.count, 500, "a latency for every delivery");
    assert_eq!((b.deliveries, b.delivered, b.lost), (0, 0, 500), "{text}");
    assert_eq!(b.latency.count, 0);
    assert!(text.contains("per node (delivery latency):"), "{text}");
}

/// The connect scenario over two nodes: the connections alternate between them.
#[test]
fn connect_over_two_nodes_splits_the_connections() {
    let (one, two) = (gateway(), gateway());
    let (a, b) = (
        format!("ws://{}/echo", one.local_addr()),
        format!("ws://{}/echo", two.local_addr()),
    );
    let cfg = config(&[
        "--url",
        &a,
        "--url",
        &b,
        "--conns",
        "31",
        "--duration",
        "200ms",
    ]);
    let r = loadgen::run(&cfg).expect("run");
    assert!(r.ok, "{}", r.summary());
    assert_eq!(r.connect.connected, 31);
    assert_eq!(one.stats().total("ws_opened_total"), 16);
    assert_eq!(two.stats().total("ws_opened_total"), 15);
    let rows: Vec<(u64, u64, u64)> = r
        .nodes
        .iter()
        .map(|n| (n.conns, n.connected, n.handshake.count))
        .collect();
    assert_eq!(rows, [(16, 16, 16), (15, 15, 15)]);
    assert!(r.summary().contains("per node (handshake latency):"));
}

/// The binary's contract for bad invocations: one line on stderr, a non-zero status, no panic.
#[test]
fn bad_invocations_are_one_line_and_non_zero() {
    // Port 1 of a loopback address no test binds (a port freed by a listener of this process
    // could be taken by another test's server meanwhile): the connection is refused at once.
    let unreachable = "ws://127.77.77.77:1/echo".to_string();
    let cases: [(&[&str], i32); 4] = [
        (&["--conns", "0"], 2),
        (&["--url", "http://127.0.0.1:8080/echo"], 2),
        (&["--scenario", "nope"], 2),
        (&["--url", &unreachable, "--conns", "5"], 1),
    ];
    for (args, status) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("loadgen: error: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

/// The idle-memory holder's contract (scripts/idle-memory.sh): `open N` once every connection
/// is open, a hold until a line on stdin, then `echo-ok N` and `closed N`, status 0. The
/// connections offer permessage-deflate.
#[test]
fn hold_on_stdin_then_echo_check_and_close() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    let gw = gateway();
    let url = format!("ws://{}/echo", gw.local_addr());
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &url, "--conns", "150", "--threads", "2", "-q"])
        .args([
            "--hold-stdin",
            "--echo-check",
            "--deflate",
            "--timeout",
            "5s",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "open 150");
    // Held: nothing more until stdin says go.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the hold waits for stdin"
    );
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "echo-ok 150");
    assert_eq!(lines.next().unwrap().unwrap(), "closed 150");
    let summary: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(
        summary.iter().any(|l| l.contains("echo check")),
        "{summary:?}"
    );
    assert_eq!(child.wait().unwrap().code(), Some(0), "{summary:?}");
}
