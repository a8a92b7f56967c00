//! TLS (`--tls-cert`, `--tls-key`) over real sockets: wss echo and https pages through a
//! rustls client, a plain-text request to the TLS listener closed without an HTTP answer, a
//! garbage ClientHello, the handshake deadline, certificate reload, bad files at start, and the
//! `/metrics` counters of each.
//!
//! Certificates are made here with `rcgen` (a test CA and a leaf for `localhost` and
//! 127.0.0.1), written to a fresh directory under the system's temporary directory: no key is
//! committed and no openssl is needed. Its own test binary: it needs none of the integration
//! helpers, and a TLS client of its own.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway::server::tls::TlsFiles;
use gateway::server::{Config, Server, ServerHandle};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::Message;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

type TlsClient = StreamOwned<ClientConnection, TcpStream>;

/// A test CA and a leaf certificate it signed for `localhost` and 127.0.0.1.
struct Pki {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    leaf_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Pki {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            leaf_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the leaf and its key as PEM files in `dir`.
    fn write(&self, dir: &TempDir) -> TlsFiles {
        let files = dir.files();
        std::fs::write(&files.cert, &self.leaf_pem).unwrap();
        std::fs::write(&files.key, &self.key_pem).unwrap();
        files
    }

    /// A client that trusts this CA only, offering ALPN `http/1.1`.
    fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gateway-tls-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.0.join("cert.pem"),
            key: self.0.join("key.pem"),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tls_config(files: TlsFiles) -> Config {
    gateway::sys::raise_nofile_limit().expect("raise the open-file limit");
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        tls: Some(files),
        ..Config::default()
    }
}

/// A gateway serving a fresh certificate; the directory must outlive the server's reloads.
fn start_tls() -> (ServerHandle, Pki, TempDir) {
    let pki = Pki::new("gateway test CA");
    let dir = TempDir::new();
    let server = Server::start(tls_config(pki.write(&dir))).expect("start the gateway");
    (server, pki, dir)
}

fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Connects and completes the TLS handshake, or returns rustls's error.
fn try_tls_connect(addr: SocketAddr, client: &Arc<ClientConfig>) -> Result<TlsClient, String> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(client.clone(), name).unwrap();
    let mut tls = StreamOwned::new(conn, tcp_connect(addr));
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

fn tls_connect(addr: SocketAddr, client: &Arc<ClientConfig>) -> TlsClient {
    try_tls_connect(addr, client).unwrap_or_else(|e| panic!("TLS handshake failed: {e}"))
}

/// `GET path` over TLS with `Connection: close`: the status and the body.
fn https_get(addr: SocketAddr, client: &Arc<ClientConfig>, path: &str) -> (u16, String) {
    let mut tls = tls_connect(addr, client);
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // The gateway ends with close_notify, so the stream has a clean end.
    tls.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading {path} over TLS: {e}"));
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line of {head:?}"));
    (status, body.to_owned())
}

/// A counter's total across workers, read from the server.
fn counter(server: &ServerHandle, name: &str) -> u64 {
    server.stats().total(name)
}

/// Polls until `f` holds, failing after ten seconds (state that settles asynchronously, never a
/// measure of speed).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < IO_TIMEOUT,
            "{what}: not within {IO_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the server closes; returns what it sent. A reset counts as closed.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the gateway did not close the connection: {e} (got {got:?})"),
        }
    }
}

#[test]
fn wss_echo_through_a_rustls_client() {
    let (server, pki, _dir) = start_tls();
    let addr = server.local_addr();
    let tls = tls_connect(addr, &pki.client());
    let url = format!("wss://localhost:{}/echo", addr.port());
    let (mut ws, resp) = tungstenite::client(url, tls).expect("WebSocket handshake over TLS");
    assert_eq!(resp.status(), 101);
    // Every payload-length form, text and binary, and one message of several TLS records.
    for len in [0, 1, 125, 126, 65_535, 60_000] {
        let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(text));
        let bin: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(Message::binary(bin.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(bin));
    }
    // A burst written before any echo is read: 1.4 MB of echoes back up behind a client that
    // is not reading, past the socket buffers, so output waits in the outbox and in rustls (and
    // still fits what the gateway queues before it stops reading, so the client cannot block).
    let msgs: Vec<Vec<u8>> = (0..24)
        .map(|n| (0..60_000).map(|i| ((i + n) % 253) as u8).collect())
        .collect();
    for m in &msgs {
        ws.send(Message::binary(m.clone())).unwrap();
    }
    for m in msgs {
        assert_eq!(ws.read().unwrap(), Message::binary(m));
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close over TLS: {e}"),
        }
    }
    assert_eq!(counter(&server, "tls_handshakes_total"), 1);
    assert_eq!(counter(&server, "tls_handshakes_failed_total"), 0);
}

#[test]
fn https_pages_and_metrics() {
    let (server, pki, _dir) = start_tls();
    let addr = server.local_addr();
    let client = pki.client();
    let (status, body) = https_get(addr, &client, "/");
    assert_eq!(status, 200);
    assert!(body.contains("<html"), "{body}");
    let (status, body) = https_get(addr, &client, "/chat/lobby");
    assert_eq!(status, 200);
    assert!(
        body.contains("/ws/chat/"),
        "the chat page uses its socket: {body}"
    );
    let (status, metrics) = https_get(addr, &client, "/metrics");
    assert_eq!(status, 200);
    // This request's own handshake completed before the page was made.
    assert!(
        metrics.contains("tls_handshakes_total 3"),
        "three handshakes counted:\n{metrics}"
    );
    assert!(
        metrics.contains("tls_handshakes_failed_total 0"),
        "{metrics}"
    );
}

#[test]
fn chat_over_wss_reaches_every_member() {
    let (server, pki, _dir) = start_tls();
    let addr = server.local_addr();
    let client = pki.client();
    let url = format!("wss://localhost:{}/ws/chat/tls", addr.port());
    let mut members: Vec<_> = (0..3)
        .map(|_| {
            tungstenite::client(url.as_str(), tls_connect(addr, &client))
                .unwrap()
                .0
        })
        .collect();
    eventually("three members in the room", || {
        server
            .hub()
            .snapshot()
            .iter()
            .any(|(t, s, _)| t == "chat/tls" && *s == 3)
    });
    members[1].send(Message::text("hello over TLS")).unwrap();
    for ws in &mut members {
        assert_eq!(ws.read().unwrap(), Message::text("hello over TLS"));
    }
}

#[test]
fn plain_text_request_gets_no_http_answer() {
    let (server, pki, _dir) = start_tls();
    let addr = server.local_addr();
    let mut plain = tcp_connect(addr);
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let got = read_until_closed(&mut plain);
    assert!(
        !got.windows(4).any(|w| w == b"HTTP"),
        "a plain-text request was answered in plain text: {:?}",
        String::from_utf8_lossy(&got)
    );
    // What it gets, if anything, is a TLS alert record (content type 21).
    if let Some(&first) = got.first() {
        assert_eq!(first, 21, "not a TLS alert: {got:?}");
    }
    eventually("the failed handshake counted", || {
        counter(&server, "tls_handshakes_failed_total") == 1
    });
    // The listener still serves TLS.
    assert_eq!(https_get(addr, &pki.client(), "/healthz").0, 200);
}

#[test]
fn garbage_client_hello_is_refused_and_harms_no_one() {
    let (server, pki, _dir) = start_tls();
    let addr = server.local_addr();
    let client = pki.client();
    let url = format!("wss://localhost:{}/echo", addr.port());
    let (mut bystander, _) = tungstenite::client(url, tls_connect(addr, &client)).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..300)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as u8
        })
        .collect();
    let bad_hellos: Vec<Vec<u8>> = vec![
        // A handshake record holding random bytes.
        [&[22, 3, 1, 1, 44][..], &garbage].concat(),
        // A ClientHello whose length runs past its record.
        [
            &[22, 3, 1, 0, 8, 1, 0xff, 0xff, 0xff][..],
            &[3, 3, 0, 0][..],
        ]
        .concat(),
        // A record longer than TLS allows.
        vec![22, 3, 1, 0xff, 0xff, 1, 0, 0, 0],
        // An application-data record before any handshake.
        vec![23, 3, 3, 0, 4, 1, 2, 3, 4],
    ];
    for (i, hello) in bad_hellos.iter().enumerate() {
        let mut s = tcp_connect(addr);
        s.write_all(hello).unwrap();
        let got = read_until_closed(&mut s);
        assert!(
            got.is_empty() || got[0] == 21,
            "bad hello {i}: answered with something other than an alert: {got:?}"
        );
    }
    eventually("every bad hello counted as a failed handshake", || {
        counter(&server, "tls_handshakes_failed_total") == bad_hellos.len() as u64
    });
    // After a good handshake: a forged application-data record, and a record header that
    // announces more than TLS allows. Each closes its own connection only.
    for forged in [
        [&[23, 3, 3, 0, 40][..], &garbage[..40]].concat(),
        vec![23, 3, 3, 0xff, 0xff, 0, 0, 0],
    ] {
        let mut victim = tls_connect(addr, &client);
        victim.sock.write_all(&forged).unwrap();
        let got = read_until_closed(&mut victim.sock);
        assert!(
            got.is_empty() || got[0] == 23 || got[0] == 21,
            "not TLS records: {got:?}"
        );
    }
    bystander.send(Message::text("still here")).unwrap();
    assert_eq!(bystander.read().unwrap(), Message::text("still here"));
    eventually(
        "the forged records' connections completed their handshakes",
        || counter(&server, "tls_handshakes_total") == 3,
    );
}

#[test]
fn an_oversized_client_hello_is_refused_before_the_deadline() {
    let pki = Pki::new("gateway test CA");
    let dir = TempDir::new();
    // A deadline far beyond the client's read timeout: only the size bound can close it in time.
    let server = Server::start(Config {
        handshake_timeout: Duration::from_secs(60),
        ..tls_config(pki.write(&dir))
    })
    .unwrap();
    let mut s = tcp_connect(server.local_addr());
    // A ClientHello announcing 60,000 bytes (under rustls's own 64 KiB), sent as 40 KiB of
    // handshake records, then silence.
    let mut hello = vec![22, 3, 1, 0x40, 0x00, 1, 0x00, 0xea, 0x60];
    hello.resize(5 + 0x4000, 0xab);
    for _ in 0..2 {
        hello.extend_from_slice(&[22, 3, 1, 0x28, 0x00]);
        hello.resize(hello.len() + 0x2800, 0xab);
    }
    let _ = s.write_all(&hello);
    let got = read_until_closed(&mut s);
    assert!(got.is_empty() || got[0] == 21, "not an alert: {got:?}");
    eventually("the oversized handshake counted as failed", || {
        counter(&server, "tls_handshakes_failed_total") == 1
    });
    assert_eq!(counter(&server, "handshake_timeouts_total"), 0);
}

#[test]
fn tls_handshake_is_within_the_handshake_deadline() {
    let pki = Pki::new("gateway test CA");
    let dir = TempDir::new();
    let server = Server::start(Config {
        handshake_timeout: Duration::from_millis(300),
        ..tls_config(pki.write(&dir))
    })
    .unwrap();
    let addr = server.local_addr();
    // Silent after connecting: no ClientHello.
    let mut silent = tcp_connect(addr);
    // Half a ClientHello record: a header announcing 200 bytes, and 10 of them.
    let mut half = tcp_connect(addr);
    half.write_all(&[22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3, 0, 0, 0, 0])
        .unwrap();
    // A complete TLS handshake but no HTTP request: the same deadline covers both.
    let mut no_request = tls_connect(addr, &pki.client());
    assert!(read_until_closed(&mut silent).is_empty());
    let got = read_until_closed(&mut half);
    assert!(!got.windows(4).any(|w| w == b"HTTP"), "{got:?}");
    let mut rest = Vec::new();
    let _ = no_request.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    eventually("three handshake timeouts counted", || {
        counter(&server, "handshake_timeouts_total") == 3
    });
    assert_eq!(counter(&server, "tls_handshakes_failed_total"), 2);
    assert_eq!(counter(&server, "tls_handshakes_total"), 1);
}

#[test]
fn reload_serves_the_new_certificate_to_new_handshakes() {
    let (server, old, dir) = start_tls();
    let addr = server.local_addr();
    let mut before = tls_connect(addr, &old.client());
    let new = Pki::new("another test CA");
    new.write(&dir);
    assert!(
        try_tls_connect(addr, &new.client()).is_err(),
        "not reloaded yet"
    );
    server.reload_tls().expect("reload");
    let after = tls_connect(addr, &new.client());
    let served = after.conn.peer_certificates().unwrap();
    assert_eq!(served[0], new.leaf, "the new certificate is served");
    assert_ne!(served[0], old.leaf);
    let e = try_tls_connect(addr, &old.client()).unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    // A connection made before the reload keeps working.
    write!(
        before,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    before.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // A broken file is refused, and the certificate served so far stays.
    std::fs::write(dir.files().key, "not a key").unwrap();
    let e = server.reload_tls().unwrap_err();
    assert!(e.contains("--tls-key") && e.contains("key.pem"), "{e}");
    tls_connect(addr, &new.client());
}

#[test]
fn bad_files_are_refused_at_start() {
    let dir = TempDir::new();
    let files = dir.files();
    let start_err = |files: TlsFiles| match Server::start(tls_config(files)) {
        Ok(_) => panic!("the gateway started with bad TLS files"),
        Err(e) => e.to_string(),
    };
    // Missing files.
    let e = start_err(files.clone());
    assert!(e.contains("--tls-cert") && e.contains("cert.pem"), "{e}");
    // A certificate file with no certificate in it.
    let pki = Pki::new("gateway test CA");
    std::fs::write(&files.cert, "hello\n").unwrap();
    std::fs::write(&files.key, &pki.key_pem).unwrap();
    let e = start_err(files.clone());
    assert!(e.contains("--tls-cert"), "{e}");
    // A key that is not the certificate's.
    let other = Pki::new("gateway test CA");
    std::fs::write(&files.cert, &pki.leaf_pem).unwrap();
    std::fs::write(&files.key, &other.key_pem).unwrap();
    let e = start_err(files.clone());
    assert!(e.contains("--tls-key"), "{e}");
    // The right pair starts.
    pki.write(&dir);
    Server::start(tls_config(files)).expect("a good pair starts");
}

/// The configuration reload (what SIGHUP calls) rereads the certificate files too, and reports
/// a broken one without giving up the certificate in force.
#[test]
fn a_configuration_reload_rereads_the_certificate() {
    let (server, _old, dir) = start_tls();
    let addr = server.local_addr();
    let new = Pki::new("a third test CA");
    new.write(&dir);
    let config = tls_config(dir.files());
    let report = server.reload(&config);
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        report.changed.contains(&"certificates (reread)"),
        "{report:?}"
    );
    let after = tls_connect(addr, &new.client());
    assert_eq!(after.conn.peer_certificates().unwrap()[0], new.leaf);
    std::fs::write(dir.files().cert, "not a certificate").unwrap();
    let report = server.reload(&config);
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].contains("cert.pem"), "{report:?}");
    tls_connect(addr, &new.client());
}
