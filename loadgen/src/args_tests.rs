//! Tests of the flags: defaults, every flag, the publish URL, and refusals as one line each.

use super::*;

fn ok(args: &[&str]) -> Config {
    let mut argv = vec!["loadgen"];
    argv.extend_from_slice(args);
    parse(argv).unwrap_or_else(|e| panic!("{args:?}: {}", e.line()))
}

fn err(args: &[&str]) -> String {
    let mut argv = vec!["loadgen"];
    argv.extend_from_slice(args);
    let e = parse(argv).expect_err("should be refused");
    assert!(e.info().is_none());
    let line = e.line();
    assert!(!line.contains('\n') && !line.is_empty(), "{line:?}");
    line
}

#[test]
fn defaults() {
    let c = ok(&[]);
    assert_eq!(c.scenario, Scenario::Connect);
    assert_eq!(c.conns, 1000);
    assert_eq!(c.target.path, "/echo");
    assert_eq!(c.target.addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.duration, Duration::from_secs(10));
    assert_eq!(c.procs, 0);
    assert!(c.threads >= 1);
    assert!(c.publish.is_none());
}

#[test]
fn flags() {
    let c = ok(&[
        "--conns",
        "50000",
        "--scenario",
        "echo",
        "--duration",
        "500ms",
        "--pipeline",
        "4",
        "--size",
        "128",
        "--url",
        "ws://127.0.0.1:9000/echo",
        "--procs",
        "3",
        "--threads",
        "2",
        "--target-pid",
        "10,11",
        "--target-pid",
        "12",
        "--json",
        "out.json",
        "--report",
        "r.html",
        "-q",
    ]);
    assert_eq!(c.conns, 50_000);
    assert_eq!(c.scenario, Scenario::Echo);
    assert_eq!(c.duration, Duration::from_millis(500));
    assert_eq!((c.pipeline, c.size, c.procs, c.threads), (4, 128, 3, 2));
    assert_eq!(c.target.addr.port(), 9000);
    assert_eq!(c.target_pids, [10, 11, 12]);
    assert_eq!(c.json.as_deref(), Some(std::path::Path::new("out.json")));
    assert!(c.quiet);
}

#[test]
fn fanout_defaults_and_publish_url() {
    let c = ok(&["--scenario", "fanout"]);
    assert_eq!(c.target.path, "/ws/chat/loadgen");
    assert_eq!(c.publish.as_ref().unwrap().path, "/publish/chat/loadgen");
    let c = ok(&[
        "--scenario",
        "fanout",
        "--publisher",
        "ws",
        "--url",
        "ws://127.0.0.1:1/x",
    ]);
    assert!(c.publish.is_none());
    let c = ok(&[
        "--scenario",
        "fanout",
        "--url",
        "ws://127.0.0.1:1/x",
        "--publish-url",
        "http://127.0.0.1:1/publish/y",
    ]);
    assert_eq!(c.publish.unwrap().path, "/publish/y");
}

#[test]
fn refusals_are_one_line() {
    let table: &[(&[&str], &str)] = &[
        (&["--conns", "0"], "--conns must be at least 1"),
        (&["--conns", "-5"], "-5"),
        (&["--conns", "many"], "--conns"),
        (&["--url", "http://127.0.0.1:8080/echo"], "not a ws://"),
        (&["--url", "wss://127.0.0.1/echo"], "--insecure"),
        (&["--insecure"], "wss://"),
        (
            &[
                "--url",
                "wss://127.0.0.1/echo",
                "--ca",
                "/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem",
        ),
        (
            &[
                "--url",
                "wss://127.0.0.1/ws/chat/x",
                "--insecure",
                "--scenario",
                "fanout",
            ],
            "--publisher ws",
        ),
        (&["--scenario", "bogus"], "bogus"),
        (&["--duration", "0s"], "positive"),
        (&["--duration", "5 parsecs"], "unit"),
        (&["--scenario", "echo", "--size", "8"], "at least 20"),
        (&["--pipeline", "0"], "--pipeline"),
        (&["--threads", "0"], "--threads"),
        (&["--procs", "0"], "--procs"),
        (&["--conns", "2", "--procs", "3"], "more than --conns"),
        (&["--scenario", "fanout", "--rate", "0"], "--rate"),
        (
            &["--scenario", "fanout", "--url", "ws://127.0.0.1/echo"],
            "--publish-url",
        ),
        (
            &["--conns", "100000", "--per-addr", "10"],
            "source addresses",
        ),
        (&["--conns", "2000000"], "source addresses"),
        (&["--connect-rate=-1"], "--connect-rate"),
        (
            &["--scenario", "echo", "--hold-stdin"],
            "--scenario connect",
        ),
        (&["--echo-check", "--size", "8"], "at least 20"),
        (&["--nope"], "--nope"),
    ];
    for (args, want) in table {
        let line = err(args);
        assert!(line.contains(want), "{args:?}: {line}");
    }
}

#[test]
fn help_is_not_an_error() {
    let e = parse(["loadgen", "--help"]).unwrap_err();
    assert!(e.info().unwrap().contains("--conns"));
}

#[test]
fn config_roundtrips_through_json() {
    let c = ok(&["--scenario", "fanout", "--conns", "7"]);
    let text = serde_json::to_string(&c).unwrap();
    let back: Config = serde_json::from_str(&text).unwrap();
    assert_eq!(back, c);
}
