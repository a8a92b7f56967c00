//! The configuration's layers through the real binary (flags > `GATEWAY_*` > `--config` file >
//! defaults, `--check-config`, exit status 2 with `FILE:LINE`), the log formats, and reloads
//! (SIGHUP, and `ServerHandle::reload` from the library) that change what may change without
//! dropping a connection.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::raw::{raw_handshake, try_raw_handshake};
use crate::util::{self, http::metric};
use gateway::server::Config;

/// A TOML file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "gw-config-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The binary with a clean `GATEWAY_*` environment plus `env`.
fn gateway(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEWAY_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    cmd
}

/// Runs `--check-config` and parses what it prints.
fn check_config(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let mut all = vec!["--check-config"];
    all.extend_from_slice(args);
    let out = gateway(&all, env).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    stdout
        .parse()
        .unwrap_or_else(|e| panic!("not TOML: {e}\n{stdout}"))
}

#[test]
fn check_config_prints_every_key_with_flag_over_env_over_file() {
    let file = TempFile::new(
        "max-conns = 100\nmax-message = 2000\nping-interval = \"7s\"\nallow-origin = [\"https://a.example\"]\npublish-token = \"hunter2\"\n",
    );
    let t = check_config(
        &["--config", file.path(), "--max-conns", "300"],
        &[
            ("GATEWAY_MAX_CONNS", "200"),
            ("GATEWAY_MAX_MESSAGE", "3000"),
        ],
    );
    assert_eq!(t["max-conns"].as_integer(), Some(300), "flag wins");
    assert_eq!(t["max-message"].as_integer(), Some(3000), "env over file");
    assert_eq!(t["ping-interval"].as_str(), Some("7s"), "file over default");
    assert_eq!(
        t["allow-origin"].as_array().unwrap()[0].as_str(),
        Some("https://a.example")
    );
    assert_eq!(t["publish-token"].as_str(), Some("<hidden>"));
    assert_eq!(t["listen"].as_str(), Some("127.0.0.1:8080"), "default");
    assert!(t["workers"].as_integer().unwrap() >= 1);
    // Every long flag of --help is a key, and nothing else is.
    let help = gateway(&["--help"], &[]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches([',', '=']))
        .filter(|w| !["help", "version", "config", "check-config"].contains(w))
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.is_empty())
        .collect();
    for flag in &flags {
        assert!(t.contains_key(*flag), "--{flag} has no key in:\n{t:?}");
    }
    assert!(t.len() <= flags.len() + 1, "{t:?} vs {flags:?}");
}

#[test]
fn bad_configuration_exits_2_naming_file_line_and_key() {
    let cases = [
        (
            "listen = \"127.0.0.1:0\"\n\nmax-conns = \"lots\"\n",
            ":3: key 'max-conns'",
        ),
        ("max-conections = 5\n", ":1: unknown key 'max-conections'"),
        ("reuse-port = \"yes\"\n", ":1: key 'reuse-port'"),
        ("ping-interval = \"soon\"\n", ":1: key 'ping-interval'"),
        ("watch = [\"a/b=/etc\"]\n", ":1: key 'watch'"),
        ("max-conns = 5\nmax-message = = 3\n", ":2:"),
    ];
    for (text, want) in cases {
        let file = TempFile::new(text);
        let out = gateway(&["--config", file.path()], &[]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        let expected = format!("gateway: {}{want}", file.path());
        assert!(
            stderr.starts_with(&expected),
            "{text:?}: want {expected:?}, got {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let out = gateway(&[], &[("GATEWAY_MAX_QUEUED", "-5")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("gateway: GATEWAY_MAX_QUEUED: invalid value '-5'"),
        "{stderr}"
    );
    let out = gateway(&["--config", "/nonexistent/gateway.toml"], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = gateway(&["--max-conns", "x"], &[]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap's own usage errors exit 2 as well"
    );
}

/// How long to wait for a log line.
const LINE_WAIT: Duration = Duration::from_secs(10);

/// A gateway binary on a free port; its stderr lines come through `lines`.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut all = vec![
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--drain",
            "200ms",
        ];
        all.extend_from_slice(args);
        let mut child = gateway(&all, &[]).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let addr = loop {
            let line = lines
                .recv_timeout(LINE_WAIT)
                .expect("the gateway says where it listens");
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split([' ', '"']).next().unwrap();
                break addr.parse().unwrap();
            }
        };
        Running { child, lines, addr }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with our child's pid and a valid signal number; no memory involved.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }

    /// The next stderr line that contains `what`.
    fn expect_line(&mut self, what: &str) -> String {
        let deadline = Instant::now() + LINE_WAIT;
        let mut seen = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(what) {
                return line;
            }
            seen.push(line);
        }
        panic!("the gateway did not log {what:?}; it logged {seen:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_reloads_origins_and_limits_without_dropping_connections() {
    let file = TempFile::new("max-conns-per-ip = 0\n");
    let mut gw = Running::start(&["--config", file.path()]);
    let foreign = [("Origin", "https://app.example")];
    let (_, head) = try_raw_handshake(gw.addr, "/echo", &foreign);
    assert_eq!(head.status, 403, "a foreign origin before the reload");
    let (mut open, _) = raw_handshake(gw.addr, &[]);

    // `listen` is given on the command line, which wins over the file; `history` is not.
    file.rewrite(
        "allow-origin = [\"https://app.example\"]\nmax-message = 100\nlisten = \"127.0.0.1:1\"\nhistory = 5\n",
    );
    gw.signal(libc::SIGHUP);
    let changed = gw.expect_line("reload: changed");
    assert!(
        changed.contains("allow-origin") && changed.contains("max-message"),
        "{changed}"
    );
    let kept = gw.expect_line("need a restart");
    assert!(
        kept.contains("history") && !kept.contains("listen"),
        "{kept}"
    );

    let (mut ws, head) = try_raw_handshake(gw.addr, "/echo", &foreign);
    assert_eq!(head.status, 101, "the origin allowed after the reload");
    ws.send_text("hello");
    ws.expect_text("hello");
    // The connection opened before the reload is still there, with the limit it opened with;
    // connections opened since have the new one.
    open.send_text(&"x".repeat(200));
    open.expect_text(&"x".repeat(200));
    ws.send_text(&"x".repeat(200));
    ws.expect_close(1009);

    // A bad file on reload is reported and the running configuration kept.
    file.rewrite("max-message = \"big\"\n");
    gw.signal(libc::SIGHUP);
    let line = gw.expect_line("reload:");
    assert!(
        line.contains(":1: key 'max-message'") && line.contains("keeping"),
        "{line}"
    );
    let (mut ws, _) = try_raw_handshake(gw.addr, "/echo", &foreign);
    ws.send_text("after a bad reload");
    ws.expect_text("after a bad reload");
    assert_eq!(metric(gw.addr, "gateway_reloads_total"), 1);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut gw = Running::start(&["--log-format", "json"]);
    gw.signal(libc::SIGTERM);
    let line = gw.expect_line("drain");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "info");
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    assert!(v["message"].as_str().unwrap().contains("draining"), "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after the drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    let quiet = gateway(
        &[
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "error",
            "--check-config",
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(quiet.status.success());
    let out = gateway(&["--log-level", "loud"], &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The library's reload: limits apply to new connections at once; open ones stay.
#[test]
fn reload_applies_limits_to_a_running_server() {
    let server = util::start(Config {
        workers: 1,
        ..util::config()
    });
    let addr = server.local_addr();
    let (mut first, _) = raw_handshake(addr, &[]);
    let report = server.reload(&Config {
        max_conns: 1,
        ..util::config()
    });
    assert_eq!(report.changed, ["max-conns"]);
    let (_, head) = try_raw_handshake(addr, "/echo", &[]);
    assert_eq!(head.status, 503, "over the reloaded --max-conns");
    first.send_text("kept");
    first.expect_text("kept");
    server.reload(&util::config());
    let (mut again, _) = raw_handshake(addr, &[]);
    again.send_text("room again");
    again.expect_text("room again");
}

/// The example configuration of docs/OPERATIONS.md's deployment guide is one the gateway takes.
#[test]
fn the_deployment_guides_example_configuration_is_valid() {
    let guide = include_str!("../../../docs/OPERATIONS.md");
    let start = guide.find("```toml\n").expect("a TOML example") + "```toml\n".len();
    let example = &guide[start..start + guide[start..].find("```").unwrap()];
    let file = TempFile::new(example);
    let t = check_config(&["--config", file.path()], &[]);
    assert_eq!(t["listen"].as_str(), Some("0.0.0.0:443"));
    assert_eq!(
        t["tls-cert"].as_str(),
        Some("/etc/gateway/tls/fullchain.pem")
    );
    assert_eq!(t["log-format"].as_str(), Some("json"));
}

/// Signals at any moment: reloads during handshakes and traffic, a reload during the drain;
/// no connection is dropped by a reload, the drain still ends with 1001 and exit status 0.
#[test]
fn signals_during_handshakes_and_during_the_drain() {
    let file = TempFile::new("max-message = 1000\n");
    let mut gw = Running::start(&["--config", file.path()]);
    let addr = gw.addr;
    let (mut steady, _) = raw_handshake(addr, &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut opened = 0;
            while !stop.load(Ordering::Relaxed) {
                let (mut ws, _) = raw_handshake(addr, &[]);
                ws.send_text("churn");
                ws.expect_text("churn");
                ws.send_close(1000, "");
                ws.expect_close(1000);
                opened += 1;
            }
            opened
        })
    };
    for i in 0..20 {
        file.rewrite(&format!("max-message = {}\n", 1000 + i));
        gw.signal(libc::SIGHUP);
        steady.send_text("between reloads");
        steady.expect_text("between reloads");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(churn.join().unwrap() > 0);
    gw.signal(libc::SIGTERM);
    gw.expect_line("draining");
    gw.signal(libc::SIGHUP);
    assert_eq!(steady.expect_close(1001), "server draining");
    steady.send_close(1001, "");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after the drain");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
