//! The command runner (`--command NAME=COMMAND LINE`, `/ws/cmd/NAME`) over real sockets, with
//! real processes: output lines in order, stdin round trips, the exit status and close 1000,
//! the stop sequence (a child that ignores SIGINT is killed), no process left behind
//! whatever the order of events (checked in `/proc`), the refusals (401, 403, 404, 503, 1003,
//! 1011), and a flood of output to a client that reads nothing keeping memory flat.
//!
//! Its own test binary: the memory test reads this process's resident size, so the tests here
//! run one at a time ([`serial`]) and nothing else shares the process.

#[allow(
    dead_code,
    unused_imports,
    reason = "the helpers are shared with the other test binary"
)]
mod util;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gateway::commands::parse_command_flag;
use gateway::server::ServerHandle;
use util::raw::{BINARY, CLOSE, RawWs, TEXT};
use util::{Config, config, eventually, http_get, http_request, metric, start, try_raw_handshake};

const TOKEN: &str = "s3cret";
const BEARER: (&str, &str) = ("Authorization", "Bearer s3cret");

/// One test at a time: the memory test measures the whole process.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A gateway with the publish token and these `--command` values.
fn server_with(commands: &[&str], tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut cfg = Config {
        commands: commands
            .iter()
            .map(|c| parse_command_flag(c).unwrap())
            .collect(),
        publish_token: Some(TOKEN.into()),
        ..config()
    };
    tweak(&mut cfg);
    start(cfg)
}

/// Opens `/ws/cmd/NAME` with the bearer token; fails unless 101.
fn open(addr: SocketAddr, name: &str) -> RawWs {
    let (ws, head) = try_raw_handshake(addr, &format!("/ws/cmd/{name}"), &[BEARER]);
    assert_eq!(head.status, 101, "/ws/cmd/{name}: {head:?}");
    ws
}

/// The status of an upgrade to `path` with these extra headers.
fn upgrade_status(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> u16 {
    try_raw_handshake(addr, path, extra).1.status
}

/// The next text message.
fn next_text(ws: &mut RawWs) -> String {
    let f = ws.read_frame();
    assert_eq!(f.opcode, TEXT, "expected a text message, got {f:?}");
    String::from_utf8(f.payload).expect("text is UTF-8")
}

/// Every text message up to the close; returns them with the close code.
fn read_to_close(ws: &mut RawWs) -> (Vec<String>, u16) {
    let mut texts = Vec::new();
    loop {
        let f = ws.read_frame();
        match f.opcode {
            TEXT => texts.push(String::from_utf8(f.payload).expect("text is UTF-8")),
            CLOSE => return (texts, f.close_code().expect("a close code")),
            _ => panic!("unexpected frame {f:?}"),
        }
    }
}

/// The processes (pid, state) in process group `pgid`, from `/proc`; zombies included.
fn group_members(pgid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc") {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone meanwhile
        };
        // After the command name in parentheses: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            out.push((pid, fields[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

/// Waits until no process of group `pgid` is left (not even a zombie).
fn wait_group_gone(pgid: u32) {
    eventually(
        &format!("process group {pgid} gone"),
        Duration::from_secs(10),
        || group_members(pgid).is_empty().then_some(()),
    );
}

fn wait_none_running(addr: SocketAddr) {
    eventually("no command running", Duration::from_secs(10), || {
        (metric(addr, "gateway_commands_running") == 0).then_some(())
    });
}

/// This process's resident set size, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
fn output_lines_arrive_in_order_then_the_exit_status_and_close_1000() {
    let _serial = serial();
    let server = server_with(
        &["lines=sh -c 'seq 1 20000; echo to-stderr >&2; printf no-newline; exit 3'"],
        |_| {},
    );
    let mut ws = open(server.local_addr(), "lines");
    let (mut texts, code) = read_to_close(&mut ws);
    assert_eq!(code, 1000);
    assert_eq!(
        texts.pop().as_deref(),
        Some("{\"exit\":3}"),
        "the last message"
    );
    let stderr = texts.iter().position(|t| t == "to-stderr");
    texts.remove(stderr.expect("the stderr line is sent too"));
    let mut want: Vec<String> = (1..=20000).map(|n| n.to_string()).collect();
    want.push("no-newline".into());
    assert!(
        texts == want,
        "stdout lines differ: {} of {}",
        texts.len(),
        want.len()
    );
    wait_none_running(server.local_addr());
}

#[test]
fn invalid_utf8_output_is_replaced_not_failed() {
    let _serial = serial();
    let server = server_with(
        &["bytes=sh -c 'printf \"\\377\\376ok\\r\\nend\\n\"'"],
        |_| {},
    );
    let mut ws = open(server.local_addr(), "bytes");
    let (texts, code) = read_to_close(&mut ws);
    assert_eq!(code, 1000);
    assert_eq!(texts, ["\u{fffd}\u{fffd}ok", "end", "{\"exit\":0}"]);
}

#[test]
fn stdin_round_trip_through_a_line_buffered_filter() {
    let _serial = serial();
    let server = server_with(&["sed=sed -u s/a/b/"], |_| {});
    let addr = server.local_addr();
    let mut ws = open(addr, "sed");
    ws.send_text("banana");
    assert_eq!(next_text(&mut ws), "bbnana");
    ws.send_text("ça va");
    assert_eq!(next_text(&mut ws), "çb va");
    for i in 0..200 {
        ws.send_text(&format!("a{i}"));
    }
    for i in 0..200 {
        assert_eq!(next_text(&mut ws), format!("b{i}"));
    }
    // Closing the socket closes sed's input: it exits on its own, no signal needed.
    ws.send_close(1000, "");
    ws.expect_close(1000);
    wait_none_running(addr);
    assert_eq!(metric(addr, "gateway_commands_killed_total"), 0);
    assert_eq!(metric(addr, "gateway_commands_started_total"), 1);
}

#[test]
fn input_waits_for_a_process_that_is_not_reading_yet() {
    let _serial = serial();
    // cat starts reading after a second: the megabyte sent meanwhile is far over the 64 KiB the
    // gateway holds for stdin, so the socket is left unread, then read again as cat catches up.
    let server = server_with(&["late=sh -c 'sleep 1; exec cat'"], |_| {});
    let addr = server.local_addr();
    let mut ws = open(addr, "late");
    let line = |i: usize| format!("{i:06} {}", "x".repeat(93));
    for i in 0..10_000 {
        ws.send_text(&line(i));
    }
    for i in 0..10_000 {
        assert_eq!(next_text(&mut ws), line(i));
    }
    ws.send_close(1000, "");
    ws.expect_close(1000);
    wait_none_running(addr);
}

#[test]
fn a_partial_line_is_sent_after_a_short_wait() {
    let _serial = serial();
    let server = server_with(
        &["prompt=sh -c 'printf \"name? \"; read x; echo \"hi $x\"'"],
        |_| {},
    );
    let mut ws = open(server.local_addr(), "prompt");
    assert_eq!(next_text(&mut ws), "name? ");
    ws.send_text("bob");
    let (texts, code) = read_to_close(&mut ws);
    assert_eq!(
        (texts.as_slice(), code),
        (&["hi bob".to_owned(), "{\"exit\":0}".to_owned()][..], 1000)
    );
}

#[test]
fn a_process_killed_by_a_signal_reports_it() {
    let _serial = serial();
    let server = server_with(&["term=sh -c 'kill -TERM $$'"], |_| {});
    let mut ws = open(server.local_addr(), "term");
    assert_eq!(
        read_to_close(&mut ws),
        (vec!["{\"signal\":15}".to_owned()], 1000)
    );
}

#[test]
fn binary_messages_are_refused_with_1003() {
    let _serial = serial();
    let server = server_with(&["cat=cat"], |_| {});
    let addr = server.local_addr();
    let mut ws = open(addr, "cat");
    ws.send_text("first");
    assert_eq!(next_text(&mut ws), "first");
    ws.send_frame(true, BINARY, b"\x00\x01");
    ws.expect_close(1003);
    assert_eq!(metric(addr, "gateway_commands_binary_refused_total"), 1);
    wait_none_running(addr);
}

#[test]
fn a_child_that_ignores_sigint_is_killed() {
    let _serial = serial();
    let log = std::env::temp_dir().join(format!("gw-cmd-int-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let handles = format!(
        "handles=sh -c 'trap \"echo INT >> {}\" INT; echo $$; while :; do sleep 0.1; done'",
        log.display()
    );
    let ignores = "ignores=sh -c 'trap \"\" INT; echo $$; while :; do sleep 0.1; done'";
    let server = server_with(&[&handles, ignores], |_| {});
    let addr = server.local_addr();
    for (n, name) in ["handles", "ignores"].into_iter().enumerate() {
        let mut ws = open(addr, name);
        let pgid: u32 = next_text(&mut ws).parse().expect("the shell's pid");
        assert!(!group_members(pgid).is_empty());
        ws.send_close(1000, "");
        ws.expect_close(1000);
        // stdin closed, then SIGINT (survived), then SIGKILL: nothing of the group is left.
        wait_group_gone(pgid);
        assert_eq!(metric(addr, "gateway_commands_killed_total"), n as u64 + 1);
    }
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        seen.contains("INT"),
        "the SIGINT was not delivered: {seen:?}"
    );
    wait_none_running(addr);
}

#[test]
fn no_process_is_left_after_a_client_vanishes_mid_output() {
    let _serial = serial();
    // A background writer in the same group, and the leader flooding the socket.
    let server = server_with(
        &["flood=sh -c 'echo $$; yes > /dev/null & exec yes'"],
        |_| {},
    );
    let addr = server.local_addr();
    for _ in 0..3 {
        let mut ws = open(addr, "flood");
        let pgid: u32 = next_text(&mut ws).parse().expect("the shell's pid");
        for _ in 0..1000 {
            assert_eq!(next_text(&mut ws), "y");
        }
        assert!(group_members(pgid).len() >= 2, "{:?}", group_members(pgid));
        drop(ws); // no close frame: the socket just goes
        wait_group_gone(pgid);
    }
    wait_none_running(addr);
}

#[test]
fn refusals_401_403_404_503_and_1011() {
    let _serial = serial();
    let server = server_with(&["cat=cat", "nope=/nonexistent/program --flag"], |c| {
        c.max_commands = 1;
    });
    let addr = server.local_addr();
    assert_eq!(upgrade_status(addr, "/ws/cmd/unknown", &[BEARER]), 404);
    let (_, head) = try_raw_handshake(addr, "/ws/cmd/cat", &[]);
    assert_eq!(head.status, 401);
    assert_eq!(head.header("www-authenticate"), Some("Bearer"));
    let wrong = [("Authorization", "Bearer s3cre")];
    assert_eq!(upgrade_status(addr, "/ws/cmd/cat", &wrong), 401);
    assert_eq!(upgrade_status(addr, "/ws/cmd/cat?token=nope", &[]), 401);
    // The origin rule of every WebSocket path applies, token or not.
    let foreign = [BEARER, ("Origin", "http://evil.example")];
    assert_eq!(upgrade_status(addr, "/ws/cmd/cat", &foreign), 403);
    // One process at a time (--max-commands 1): the second is refused while the first runs.
    let (mut first, head) = try_raw_handshake(addr, &format!("/ws/cmd/cat?token={TOKEN}"), &[]);
    assert_eq!(head.status, 101);
    first.send_text("x");
    assert_eq!(next_text(&mut first), "x");
    let (_, head) = try_raw_handshake(addr, "/ws/cmd/cat", &[BEARER]);
    assert_eq!(head.status, 503);
    assert_eq!(head.header("retry-after"), Some("1"));
    first.send_close(1000, "");
    first.expect_close(1000);
    wait_none_running(addr);
    // A program that cannot start: the socket opens, then closes with 1011 and the reason;
    // its slot is given back.
    let mut ws = open(addr, "nope");
    let reason = ws.expect_close(1011);
    assert!(reason.starts_with("cannot start nope"), "{reason}");
    assert_eq!(metric(addr, "gateway_commands_running"), 0);
    let mut again = open(addr, "cat");
    again.send_text("y");
    assert_eq!(next_text(&mut again), "y");
    for (name, want) in [
        ("gateway_http_refused_401_total", 3),
        ("gateway_http_refused_403_total", 1),
        ("gateway_http_refused_404_total", 1),
        ("gateway_commands_refused_busy_total", 1),
        ("gateway_commands_failed_total", 1),
    ] {
        assert_eq!(metric(addr, name), want, "{name}");
    }
    // Without a configured token nobody may start a command, loopback or not.
    let open_door = server_with(&["cat=cat"], |c| c.publish_token = None);
    let addr = open_door.local_addr();
    assert_eq!(upgrade_status(addr, "/ws/cmd/cat", &[]), 403);
    assert_eq!(upgrade_status(addr, "/ws/cmd/cat", &[BEARER]), 403);
    assert_eq!(metric(addr, "gateway_commands_started_total"), 0);
}

#[test]
fn a_flood_of_output_to_a_client_that_does_not_read_keeps_memory_flat() {
    let _serial = serial();
    let server = server_with(&["yes=yes"], |_| {});
    let addr = server.local_addr();
    let before = rss_kib();
    let mut ws = open(addr, "yes");
    // `yes` writes gigabytes a second; the client reads nothing for two seconds.
    let mut peak = before;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss_kib());
    }
    // The bound is --max-queued (1 MiB) plus a read and the pool (about 1.3 MiB measured): far
    // below what the flood costs unbounded (over 100 MiB in two seconds).
    let grown = peak.saturating_sub(before);
    assert!(grown < 8 * 1024, "resident size grew by {grown} KiB");
    let sent = metric(addr, "gateway_bytes_out_total");
    assert!(
        sent < 64 << 20,
        "{sent} bytes written to a client that reads nothing"
    );
    // The stream is intact and resumes when the client reads.
    for _ in 0..100_000 {
        assert_eq!(next_text(&mut ws), "y");
    }
    ws.send_close(1000, "");
    drop(ws);
    wait_none_running(addr);
}

#[test]
fn pages_index_and_echo_tester() {
    let _serial = serial();
    let server = server_with(&["sed=sed -u s/a/b/"], |_| {});
    let addr = server.local_addr();
    let page = http_get(addr, "/cmd/sed");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body_text().contains("/ws/cmd/"));
    assert_eq!(http_get(addr, "/cmd/unknown").status, 404);
    let index = http_get(addr, "/");
    assert!(index.body_text().contains("<a href=\"/cmd/sed\">"));
    assert!(index.body_text().contains("<a href=\"/echo\">"));
    let browser = format!(
        "GET /echo HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html,application/xhtml+xml,*/*;q=0.8\r\nConnection: close\r\n\r\n"
    );
    let echo = http_request(addr, browser.as_bytes());
    assert_eq!(echo.status, 200);
    assert!(echo.body_text().contains("echo tester"));
    // Other non-upgrade requests keep their 426.
    assert_eq!(http_get(addr, "/echo").status, 426);
    let json = format!(
        "GET /echo HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(http_request(addr, json.as_bytes()).status, 426);
}

#[test]
fn the_environment_is_clean() {
    let _serial = serial();
    // The gateway's own environment (this test process's) is not passed on.
    let server = server_with(&["env=env", "fds=ls /proc/self/fd"], |_| {});
    let mut ws = open(server.local_addr(), "env");
    let (texts, code) = read_to_close(&mut ws);
    assert_eq!(code, 1000);
    let got: HashSet<&str> = texts.iter().map(String::as_str).collect();
    let want: HashSet<&str> = ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "{\"exit\":0}"].into();
    assert_eq!(got, want);
    // Nor any of its descriptors (sockets, listeners, epoll, other commands' pipes): only the
    // three pipes, and the one `ls` opens to read the directory.
    let mut ws = open(server.local_addr(), "fds");
    let (texts, code) = read_to_close(&mut ws);
    assert_eq!(code, 1000);
    assert_eq!(texts, ["0", "1", "2", "3", "{\"exit\":0}"]);
}

#[test]
fn a_drain_ends_command_sockets_and_their_processes() {
    let _serial = serial();
    let server = server_with(&["cat=sh -c 'echo $$; exec cat'"], |c| {
        c.drain = Duration::from_millis(200);
    });
    let mut ws = open(server.local_addr(), "cat");
    let pgid: u32 = next_text(&mut ws).parse().expect("the shell's pid");
    server.drain();
    ws.expect_close(1001);
    ws.send_close(1001, "");
    // The workers stop only once the process of the closed socket is gone.
    server.join();
    assert!(group_members(pgid).is_empty(), "{:?}", group_members(pgid));
}

#[test]
fn stopping_the_server_kills_its_commands() {
    let _serial = serial();
    let server = server_with(
        &["stubborn=sh -c 'trap \"\" INT; echo $$; while :; do sleep 0.1; done'"],
        |_| {},
    );
    let mut ws = open(server.local_addr(), "stubborn");
    let pgid: u32 = next_text(&mut ws).parse().expect("the shell's pid");
    drop(server);
    wait_group_gone(pgid);
}

/// With tokens (JWT) on, a token whose `commands` claim lists the command may start it, also
/// without a publish token configured; one that does not list it gets 403; none gets 401. The
/// publish token, when configured, still works.
#[test]
fn a_token_listing_the_command_may_start_it() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let _serial = serial();
    let secret = "a-test-secret-of-32-bytes-or-so!";
    let token = |commands: &[&str]| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let claims = serde_json::json!({"exp": exp, "commands": commands});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    for publish_token in [None, Some(TOKEN.to_string())] {
        let with_publish_token = publish_token.is_some();
        let server = server_with(&["cat=cat", "date=date"], |c| {
            c.jwt_secret = Some(secret.into());
            c.publish_token = publish_token;
        });
        let addr = server.local_addr();
        let cat = token(&["cat"]);
        let (mut ws, head) = try_raw_handshake(addr, &format!("/ws/cmd/cat?token={cat}"), &[]);
        assert_eq!(head.status, 101, "a token listing cat");
        ws.send_text("via a token");
        assert_eq!(next_text(&mut ws), "via a token");
        ws.send_close(1000, "");
        ws.expect_close(1000);
        assert_eq!(
            upgrade_status(addr, &format!("/ws/cmd/date?token={cat}"), &[]),
            403,
            "a valid token that does not list date"
        );
        assert_eq!(upgrade_status(addr, "/ws/cmd/cat", &[]), 401, "no token");
        let bad = format!("/ws/cmd/cat?token={cat}x");
        assert_eq!(upgrade_status(addr, &bad, &[]), 401, "a bad signature");
        let status = upgrade_status(addr, "/ws/cmd/cat", &[BEARER]);
        let want = if with_publish_token { 101 } else { 401 };
        assert_eq!(
            status, want,
            "the publish token (configured: {with_publish_token})"
        );
        assert!(metric(addr, "gateway_token_refused_forbidden_total") >= 1);
        wait_none_running(addr);
    }
}
