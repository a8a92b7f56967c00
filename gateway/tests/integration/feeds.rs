//! File watch (`--watch`, `/ws/file/{name}`, `/file/{name}`) and log tail (`--tail`,
//! `/ws/log/{name}`): real files in a private temporary directory per test, changed the ways
//! editors, deploy tools and log rotation change them, and watched over real sockets.
//!
//! Changes arrive through inotify within milliseconds; every wait is a blocking read bounded
//! by the client's read timeout (`util::IO_TIMEOUT`) or an `eventually` poll, never a sleep
//! that stands in for an assertion.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gateway::server::ServerHandle;
use gateway::topics::TopicKind;
use tungstenite::{Message, WebSocket};

use crate::util::{self, eventually, http_get, try_raw_handshake, wait_subscribers, ws_connect};

/// A directory of its own under the system temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gateway-feeds-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn watching(name: &str, path: &Path) -> ServerHandle {
    util::start(util::Config {
        watch: vec![(name.into(), path.to_owned())],
        ..util::config()
    })
}

fn tailing(name: &str, path: &Path) -> ServerHandle {
    util::start(util::Config {
        tail: vec![(name.into(), path.to_owned())],
        ..util::config()
    })
}

/// Writes `content` the way deploy tools do: to a temporary file, renamed over `path`.
fn replace_atomically(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp-new");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn next_text(ws: &mut WebSocket<TcpStream>) -> String {
    loop {
        match util::read_msg(ws).expect("read a message") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {}", util::describe(&other)),
        }
    }
}

/// Reads until the file's version `want` arrives. A file written in place (truncate, then
/// write) may be read between the two, so a prefix of `want` may come first; anything else
/// fails the test.
fn expect_version(ws: &mut WebSocket<TcpStream>, want: &str) {
    loop {
        let got = next_text(ws);
        if got == want {
            return;
        }
        assert!(
            want.starts_with(&got),
            "expected {want:?} (or a torn read of it), got {got:?}"
        );
    }
}

/// The `lastMod` a browser would get: read from the `/file/{name}` page.
fn page_last_mod(server: &ServerHandle, name: &str) -> String {
    let page = http_get(server.local_addr(), &format!("/file/{name}"));
    assert_eq!(page.status, 200);
    let text = page.body_text();
    let start = text
        .find("const lastMod = \"")
        .expect("lastMod in the page")
        + 17;
    let len = text[start..].find('"').unwrap();
    text[start..start + len].to_owned()
}

#[test]
fn a_watched_file_is_sent_on_connect_and_every_write_is_pushed() {
    let dir = TempDir::new("write");
    let path = dir.path("app.conf");
    fs::write(&path, "version one\n").unwrap();
    let server = watching("conf", &path);
    let addr = server.local_addr();
    let mut ws = ws_connect(addr, "/ws/file/conf");
    assert_eq!(next_text(&mut ws), "version one\n");
    for i in 2..5 {
        let v = format!("version {i}\nwritten in place\n");
        fs::write(&path, &v).unwrap();
        expect_version(&mut ws, &v);
    }
    // The page shows the content (escaped) and links from the index; unknown names are 404.
    fs::write(&path, "a <b> & c").unwrap();
    expect_version(&mut ws, "a <b> & c");
    let page = http_get(addr, "/file/conf");
    assert!(
        page.body_text()
            .contains("<pre id=\"content\">a &lt;b&gt; &amp; c</pre>"),
        "{}",
        page.body_text()
    );
    assert!(page.body_text().contains("/ws/file/"));
    let index = http_get(addr, "/").body_text().to_owned();
    assert!(index.contains("<a href=\"/file/conf\">page</a>"), "{index}");
    assert_eq!(http_get(addr, "/file/nope").status, 404);
    assert_eq!(try_raw_handshake(addr, "/ws/file/nope", &[]).1.status, 404);
    assert_eq!(
        try_raw_handshake(addr, "/ws/file/conf/x", &[]).1.status,
        404
    );
    assert_eq!(try_raw_handshake(addr, "/ws/log/conf", &[]).1.status, 404);
}

#[test]
fn last_mod_decides_whether_the_content_is_sent_on_connect() {
    let dir = TempDir::new("lastmod");
    let path = dir.path("motd");
    fs::write(&path, "old news").unwrap();
    let server = watching("motd", &path);
    let addr = server.local_addr();
    let last_mod = page_last_mod(&server, "motd");
    let stamp = u64::from_str_radix(&last_mod, 16).expect("hex lastMod");
    assert!(stamp > 0);

    // A client that has this version is not sent it again: the first message it gets is the
    // next version.
    let mut current = ws_connect(addr, &format!("/ws/file/motd?lastMod={last_mod}"));
    // Older, absent or garbled lastMod: the content comes at once.
    let mut others = Vec::new();
    for query in [
        format!("?lastMod={:x}", stamp - 1),
        String::new(),
        "?lastMod=0".into(),
        "?lastMod=not-hex".into(),
    ] {
        let mut ws = ws_connect(addr, &format!("/ws/file/motd{query}"));
        assert_eq!(next_text(&mut ws), "old news", "query {query:?}");
        others.push(ws);
    }
    wait_subscribers(&server, "file/motd", 5);
    fs::write(&path, "fresh news").unwrap();
    expect_version(&mut current, "fresh news");
    assert!(page_last_mod(&server, "motd") != last_mod);
}

#[test]
fn atomic_replace_is_pushed_every_time() {
    let dir = TempDir::new("rename");
    let path = dir.path("settings.json");
    fs::write(&path, "{\"v\":0}").unwrap();
    let server = watching("settings", &path);
    let mut ws = ws_connect(server.local_addr(), "/ws/file/settings");
    assert_eq!(next_text(&mut ws), "{\"v\":0}");
    // Each rename puts a new inode at the path; the watch on the directory sees them all.
    for i in 1..=3 {
        let v = format!("{{\"v\":{i}}}");
        replace_atomically(&path, v.as_bytes());
        assert_eq!(next_text(&mut ws), v);
    }
}

#[test]
fn delete_sends_an_error_once_and_recreate_sends_the_content_again() {
    let dir = TempDir::new("delete");
    let path = dir.path("status.txt");
    fs::write(&path, "up").unwrap();
    let server = watching("status", &path);
    let addr = server.local_addr();
    let mut ws = ws_connect(addr, "/ws/file/status");
    assert_eq!(next_text(&mut ws), "up");
    fs::remove_file(&path).unwrap();
    let error = format!(
        "error: file/status: cannot read {}: No such file or directory",
        path.display()
    );
    assert_eq!(next_text(&mut ws), error);
    // The page shows the error, and a newcomer gets it on connect.
    assert!(page_has(&server, "status", "cannot read"));
    let mut late = ws_connect(addr, "/ws/file/status");
    assert_eq!(next_text(&mut late), error);
    // The same content comes back: it is sent again, and no second error came before it.
    fs::write(&path, "up").unwrap();
    expect_version(&mut ws, "up");
    expect_version(&mut late, "up");
}

fn page_has(server: &ServerHandle, name: &str, needle: &str) -> bool {
    http_get(server.local_addr(), &format!("/file/{name}"))
        .body_text()
        .contains(needle)
}

#[test]
fn a_file_missing_at_start_is_an_error_message_until_it_appears() {
    let dir = TempDir::new("missing");
    let path = dir.path("later.txt");
    let server = watching("later", &path);
    let mut ws = ws_connect(server.local_addr(), "/ws/file/later");
    assert!(next_text(&mut ws).starts_with("error: file/later: cannot read "));
    fs::write(&path, "here now").unwrap();
    expect_version(&mut ws, "here now");
}

#[test]
fn a_slow_file_subscriber_gets_only_the_newest_version() {
    let dir = TempDir::new("slow");
    let path = dir.path("big.txt");
    fs::write(&path, "start").unwrap();
    let server = watching("big", &path);
    let addr = server.local_addr();
    // This client never reads while the versions are published: 8 versions of 2 MiB are more
    // than its socket buffers hold.
    let (mut slow, resp) = try_raw_handshake(addr, "/ws/file/big", &[]);
    assert_eq!(resp.status, 101);
    let version = |i: u8| vec![b'a' + i; 2 << 20];
    let id = server.hub().topic("file/big", TopicKind::Latest);
    for i in 1..=8u8 {
        replace_atomically(&path, &version(i));
        eventually(
            &format!("version {i} published"),
            Duration::from_secs(10),
            || (server.hub().latest(id)?.payload[0] == b'a' + i).then_some(()),
        );
    }
    // Now it reads: the versions it gets are in order, end with the newest, and most of the
    // ones in between were replaced while queued instead of piling up.
    slow.expect_message(util::raw::TEXT, b"start");
    let mut got = Vec::new();
    loop {
        let f = slow.read_frame();
        assert_eq!(f.opcode, util::raw::TEXT);
        let i = f.payload[0] - b'a';
        assert!(f.payload == version(i), "version {i} arrived whole");
        assert!(
            got.last().is_none_or(|&last| last < i),
            "in order: {got:?} then {i}"
        );
        got.push(i);
        if i == 8 {
            break;
        }
    }
    assert!(got.len() < 8, "older versions were replaced: got {got:?}");
}

#[test]
fn a_line_appended_in_two_writes_is_one_message() {
    let dir = TempDir::new("twowrites");
    let path = dir.path("app.log");
    fs::write(&path, "from before the start\n").unwrap();
    let server = tailing("app", &path);
    let mut ws = ws_connect(server.local_addr(), "/ws/log/app");
    wait_subscribers(&server, "log/app", 1);
    append(&path, b"hello, ");
    // Not an assertion: gives the tailer time to read the first half on its own, so the
    // second half really arrives in a later read.
    std::thread::sleep(Duration::from_millis(100));
    append(&path, b"world\n");
    // Lines written before the gateway started are not sent; the half line was kept back.
    assert_eq!(next_text(&mut ws), "hello, world");
    append(&path, b"second\r\nthird\n\n");
    assert_eq!(next_text(&mut ws), "second");
    assert_eq!(next_text(&mut ws), "third");
    assert_eq!(next_text(&mut ws), "");
    // Bytes that are not UTF-8 arrive as U+FFFD in a text message.
    append(&path, b"bad \xff byte\n");
    assert_eq!(next_text(&mut ws), "bad \u{fffd} byte");
}

#[test]
fn truncation_and_rotation_are_followed() {
    let dir = TempDir::new("rotate");
    let path = dir.path("app.log");
    fs::write(&path, "").unwrap();
    let server = tailing("app", &path);
    let mut ws = ws_connect(server.local_addr(), "/ws/log/app");
    wait_subscribers(&server, "log/app", 1);
    append(&path, b"first line, quite long\n");
    assert_eq!(next_text(&mut ws), "first line, quite long");

    // Truncated (copytruncate, `> file`): reading starts again at the top.
    // This one is longer than what was read: if the tailer looks only after the new write,
    // the size alone does not show the truncation, the changed bytes before its offset do.
    fs::write(&path, "after truncation, written past the old end\n").unwrap();
    assert_eq!(
        next_text(&mut ws),
        "after truncation, written past the old end"
    );
    fs::write(&path, "").unwrap();
    append(&path, b"x\n");
    assert_eq!(next_text(&mut ws), "x");

    // Rotated: renamed away, the writer finishes with the old file (its last line unended),
    // then a new file appears at the path. The old file is read to its end first.
    let rotated = dir.path("app.log.1");
    fs::rename(&path, &rotated).unwrap();
    append(&rotated, b"late line in the old file\nunfinished");
    fs::write(&path, "new file, line 1\n").unwrap();
    assert_eq!(next_text(&mut ws), "late line in the old file");
    assert_eq!(next_text(&mut ws), "unfinished");
    assert_eq!(next_text(&mut ws), "new file, line 1");
    append(&path, b"new file, line 2\n");
    assert_eq!(next_text(&mut ws), "new file, line 2");
}

#[test]
fn last_n_replays_the_newest_lines_then_goes_live() {
    let dir = TempDir::new("last");
    let path = dir.path("app.log");
    fs::write(&path, "").unwrap();
    let server = tailing("app", &path);
    let addr = server.local_addr();
    let mut first = ws_connect(addr, "/ws/log/app");
    wait_subscribers(&server, "log/app", 1);
    append(&path, b"l1\nl2\nl3\nl4\nl5\n");
    for i in 1..=5 {
        assert_eq!(next_text(&mut first), format!("l{i}"));
    }
    let mut last3 = ws_connect(addr, "/ws/log/app?last=3");
    let mut all = ws_connect(addr, "/ws/log/app?last=100");
    let mut none = ws_connect(addr, "/ws/log/app");
    wait_subscribers(&server, "log/app", 4);
    append(&path, b"l6\n");
    let texts = |ws: &mut WebSocket<TcpStream>, n: usize| -> Vec<String> {
        (0..n).map(|_| next_text(ws)).collect()
    };
    assert_eq!(texts(&mut last3, 4), ["l3", "l4", "l5", "l6"]);
    assert_eq!(texts(&mut all, 6), ["l1", "l2", "l3", "l4", "l5", "l6"]);
    assert_eq!(texts(&mut none, 1), ["l6"]);
    assert_eq!(texts(&mut first, 1), ["l6"]);
}
