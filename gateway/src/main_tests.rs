//! Tests of the binary's flags: defaults, overrides, `--help`, feed and token flags.

use super::*;
use clap::{CommandFactory, FromArgMatches};

/// Parses `argv` (after the program name) as the binary would, but blind to
/// `GATEWAY_PUBLISH_TOKEN`, so a token in the test's environment cannot leak in.
fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
    let cmd = Args::command().mut_arg("publish_token", |a| a.env(None));
    let matches =
        cmd.try_get_matches_from(std::iter::once("gateway").chain(argv.iter().copied()))?;
    Args::from_arg_matches(&matches)
}

/// Asserts `got == want` field by field. The destructuring names every field, so a field
/// added to `Config`, `DeflateConfig` or `HistoryConfig` fails to compile here until it is
/// compared.
fn assert_same(got: &Config, want: &Config) {
    let Config {
        listen,
        workers,
        reuse_port,
        steer_by_cpu,
        backlog,
        max_conns,
        max_conns_per_ip,
        max_message,
        max_queued,
        handshake_timeout,
        ping_interval,
        pong_timeout,
        close_grace,
        drain,
        allowed_origins,
        subprotocols,
        deflate,
        history,
        history_memory,
        max_topics,
        topic_ttl,
        topic_burst,
        topic_rate,
        max_backlog,
        bus,
        bus_grace,
        flush_interval,
        publish_token,
        trust_loopback,
        jwt_secret,
        jwt_public_key,
        jwt_leeway,
        watch,
        tail,
        commands,
        max_commands,
        tls,
    } = got;
    assert_eq!(*listen, want.listen, "listen");
    assert_eq!(*workers, want.workers, "workers");
    assert_eq!(*reuse_port, want.reuse_port, "reuse_port");
    assert_eq!(*steer_by_cpu, want.steer_by_cpu, "steer_by_cpu");
    assert_eq!(*backlog, want.backlog, "backlog");
    assert_eq!(*max_conns, want.max_conns, "max_conns");
    assert_eq!(*max_conns_per_ip, want.max_conns_per_ip, "max_conns_per_ip");
    assert_eq!(*max_message, want.max_message, "max_message");
    assert_eq!(*max_queued, want.max_queued, "max_queued");
    assert_eq!(
        *handshake_timeout, want.handshake_timeout,
        "handshake_timeout"
    );
    assert_eq!(*ping_interval, want.ping_interval, "ping_interval");
    assert_eq!(*pong_timeout, want.pong_timeout, "pong_timeout");
    assert_eq!(*close_grace, want.close_grace, "close_grace");
    assert_eq!(*drain, want.drain, "drain");
    assert_eq!(*allowed_origins, want.allowed_origins, "allowed_origins");
    assert_eq!(*subprotocols, want.subprotocols, "subprotocols");
    let DeflateConfig {
        enabled,
        request_client_no_context_takeover,
        level,
        min_size,
    } = deflate;
    assert_eq!(*enabled, want.deflate.enabled, "deflate.enabled");
    assert_eq!(
        *request_client_no_context_takeover, want.deflate.request_client_no_context_takeover,
        "deflate.request_client_no_context_takeover"
    );
    assert_eq!(*level, want.deflate.level, "deflate.level");
    assert_eq!(*min_size, want.deflate.min_size, "deflate.min_size");
    let HistoryConfig { messages, bytes } = history;
    assert_eq!(*messages, want.history.messages, "history.messages");
    assert_eq!(*bytes, want.history.bytes, "history.bytes");
    assert_eq!(*history_memory, want.history_memory, "history_memory");
    assert_eq!(*max_topics, want.max_topics, "max_topics");
    assert_eq!(*topic_ttl, want.topic_ttl, "topic_ttl");
    assert_eq!(*topic_burst, want.topic_burst, "topic_burst");
    assert_eq!(*topic_rate, want.topic_rate, "topic_rate");
    assert_eq!(*max_backlog, want.max_backlog, "max_backlog");
    assert_eq!(*bus, want.bus, "bus");
    assert_eq!(*bus_grace, want.bus_grace, "bus_grace");
    assert_eq!(*flush_interval, want.flush_interval, "flush_interval");
    assert_eq!(*publish_token, want.publish_token, "publish_token");
    assert_eq!(*trust_loopback, want.trust_loopback, "trust_loopback");
    assert_eq!(*jwt_secret, want.jwt_secret, "jwt_secret");
    assert_eq!(*jwt_public_key, want.jwt_public_key, "jwt_public_key");
    assert_eq!(*jwt_leeway, want.jwt_leeway, "jwt_leeway");
    assert_eq!(*watch, want.watch, "watch");
    assert_eq!(*tail, want.tail, "tail");
    assert_eq!(*commands, want.commands, "commands");
    assert_eq!(*max_commands, want.max_commands, "max_commands");
    assert_eq!(*tls, want.tls, "tls");
}

#[test]
fn empty_command_line_is_the_default() {
    let config = parse(&[]).unwrap().into_config(Config::default());
    assert_same(&config, &Config::default());
}

#[test]
fn flags_override_defaults() {
    let config = parse(&[
        "--max-message",
        "1000",
        "--ping-interval",
        "500ms",
        "--no-deflate",
        "--deflate-client-context",
        "--history",
        "0",
        "--max-conns",
        "77",
        "--flush-interval",
        "0",
    ])
    .unwrap()
    .into_config(Config::default());
    let want = Config {
        flush_interval: Duration::ZERO,
        max_message: 1000,
        ping_interval: Duration::from_millis(500),
        deflate: DeflateConfig {
            enabled: false,
            request_client_no_context_takeover: false,
            ..DeflateConfig::default()
        },
        history: HistoryConfig {
            messages: 1, // at least one message is always kept
            ..HistoryConfig::default()
        },
        max_conns: 77,
        ..Config::default()
    };
    assert_same(&config, &want);
}

#[test]
fn jwt_flags() {
    let config = parse(&[
        "--jwt-secret",
        "s",
        "--jwt-public-key",
        "/etc/gw/jwt.pem",
        "--jwt-leeway",
        "5s",
    ])
    .unwrap()
    .into_config(Config::default());
    let want = Config {
        jwt_secret: Some("s".into()),
        jwt_public_key: Some(PathBuf::from("/etc/gw/jwt.pem")),
        jwt_leeway: Duration::from_secs(5),
        ..Config::default()
    };
    assert_same(&config, &want);
    let zero = parse(&["--jwt-leeway", "0"]).unwrap();
    assert_eq!(zero.jwt_leeway.0, Duration::ZERO);
    assert!(parse(&["--jwt-leeway", "soon"]).is_err());
}

#[test]
fn help_shows_the_defaults() {
    let help = Args::command().render_long_help().to_string();
    let d = Config::default();
    for shown in [
        format!("[default: {}]", d.listen),
        format!("[default: {}]", d.max_message),
        format!("[default: {}]", format_duration(d.handshake_timeout)),
        format!("[default: {}]", format_duration(d.pong_timeout)),
        format!("[default: {}]", d.history.messages),
    ] {
        assert!(help.contains(&shown), "{shown} missing from:\n{help}");
    }
}

#[test]
fn flags_parse() {
    let a = Args::try_parse_from([
        "gateway",
        "--listen",
        "0.0.0.0:80",
        "--max-message",
        "16777216",
    ])
    .unwrap();
    assert_eq!(a.listen.port(), 80);
    assert_eq!(a.max_message, 16 << 20);
    assert!(Args::try_parse_from(["gateway", "--listen", "nowhere"]).is_err());
}

#[test]
fn command_flags() {
    let a = Args::try_parse_from([
        "gateway",
        "--command",
        "sed=sed -u 's/a/b/'",
        "--command",
        "sh=sh -c 'echo $$; exec yes'",
        "--max-commands",
        "3",
    ])
    .unwrap();
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        a.command,
        [
            ("sed".into(), words(&["sed", "-u", "s/a/b/"])),
            ("sh".into(), words(&["sh", "-c", "echo $$; exec yes"])),
        ]
    );
    assert_eq!(a.max_commands, 3);
    for bad in ["sed", "a/b=cat", "x=", "x=ls | wc", "x=echo 'open"] {
        assert!(
            Args::try_parse_from(["gateway", "--command", bad]).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn feed_flags() {
    let a = Args::try_parse_from([
        "gateway",
        "--watch",
        "config=/etc/app.conf",
        "--watch",
        "motd=rel/a=b.txt",
        "--tail",
        "app=/var/log/app.log",
    ])
    .unwrap();
    assert_eq!(
        a.watch,
        [
            ("config".into(), PathBuf::from("/etc/app.conf")),
            ("motd".into(), PathBuf::from("rel/a=b.txt"))
        ]
    );
    assert_eq!(a.tail, [("app".into(), PathBuf::from("/var/log/app.log"))]);
    for bad in [
        "config",
        "=/etc/x",
        "a/b=/etc/x",
        "..=/x",
        "a b=/x",
        "name=",
    ] {
        let e = parse_feed(bad).unwrap_err();
        assert!(e.contains(bad.split('=').next().unwrap()), "{bad}: {e}");
        assert!(Args::try_parse_from(["gateway", "--watch", bad]).is_err());
        assert!(Args::try_parse_from(["gateway", "--tail", bad]).is_err());
    }
}

#[test]
fn tls_flags_come_in_pairs() {
    let config = parse(&[
        "--tls-cert",
        "/etc/gw/cert.pem",
        "--tls-key",
        "/etc/gw/key.pem",
    ])
    .unwrap()
    .into_config(Config::default());
    let files = TlsFiles {
        cert: "/etc/gw/cert.pem".into(),
        key: "/etc/gw/key.pem".into(),
    };
    assert_same(
        &config,
        &Config {
            tls: Some(files),
            ..Config::default()
        },
    );
    for alone in [["--tls-cert", "c.pem"], ["--tls-key", "k.pem"]] {
        let e = parse(&alone).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        // clap exits 2 for usage errors.
        assert_eq!(e.exit_code(), 2);
        let other = if alone[0] == "--tls-cert" {
            "--tls-key"
        } else {
            "--tls-cert"
        };
        assert!(e.to_string().contains(other), "{e}");
    }
}
