//! TLS with rustls: the certificate and key files, their reload, the server configuration, and
//! [`TlsStream`], one connection's socket seen through its `rustls::ServerConnection`.
//!
//! rustls is sans-I/O: it takes ciphertext read from the socket and hands back ciphertext to
//! write, so the worker drives it from the same edge-triggered loop as a plain socket. What a
//! TLS connection holds beyond a plain one lives in the worker's side table (a boxed
//! [`TlsConn`]), never in `Conn`, so plain connections pay nothing for TLS.
//!
//! **Bounded buffering.** Plaintext is handed to rustls only once the ciphertext it already
//! holds has gone to the socket, and at most [`CHUNK`] at a time: what the socket does not take
//! stays queued in the connection's outbox as for a plain socket (shared frames by reference),
//! and rustls never holds more than one chunk's records.
//!
//! **Reload.** The certificate is chosen per handshake by [`Certs`] (a `ResolvesServerCert`
//! over a lock held only to clone an `Arc`); [`Tls::reload`] rereads the files and swaps them in
//! for new handshakes; connections already open keep theirs.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use mio::net::TcpStream;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{ConnectionCommon, SideData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Plaintext handed to rustls at once: one TLS record's worth. Also the bound on the
/// ciphertext it holds for a connection (set with `set_buffer_limit`).
pub const CHUNK: usize = 16 * 1024;

/// The PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The server's TLS setup: the rustls configuration every connection starts from, and the
/// certificate it serves.
#[derive(Debug)]
pub(crate) struct Tls {
    pub config: Arc<ServerConfig>,
    certs: Arc<Certs>,
    provider: Arc<CryptoProvider>,
}

impl Tls {
    /// Reads the files and builds the configuration: ring's cipher suites, TLS 1.2 and 1.3,
    /// ALPN `http/1.1`. Errors name the file and what is wrong with it.
    pub fn new(files: &TlsFiles) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = Arc::new(Certs {
            current: RwLock::new(Arc::new(load(files, &provider)?)),
            files: files.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            certs,
            provider,
        })
    }

    /// Rereads the certificate and key files; new handshakes get them. On an error the
    /// certificate served so far stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Arc::new(load(&self.certs.files, &self.provider)?);
        *self
            .certs
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// A new connection's TLS state, boxed for the worker's side table.
    pub fn accept(&self) -> Option<Box<TlsConn>> {
        let mut conn = ServerConnection::new(self.config.clone()).ok()?;
        conn.set_buffer_limit(Some(CHUNK));
        Some(Box::new(TlsConn {
            conn,
            handshaken: false,
        }))
    }
}

/// Reads a certificate chain and its key, and checks that they belong together.
fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let cert_path = files.cert.display();
    let key_path = files.key.display();
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {cert_path}: {}", pem_error(e)))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {cert_path}: no CERTIFICATE block in the file"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {key_path}: {}", pem_error(e)))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!("--tls-cert {cert_path} with --tls-key {key_path}: {e} (is it the key of this certificate?)")
    })
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM block of the expected kind".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// Picks the certificate for a handshake: the one most recently loaded.
struct Certs {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs").field("files", &self.files).finish()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// One connection's TLS state (in the worker's side table, boxed).
#[derive(Debug)]
pub(crate) struct TlsConn {
    pub conn: ServerConnection,
    /// The handshake completed (counted once in `tls_handshakes_total`).
    pub handshaken: bool,
}

/// A connection's socket through its TLS state: reads give plaintext, writes take plaintext,
/// with the edge-triggered semantics of the socket itself. Either side: the gateway's
/// connections and loadgen's `wss://` clients both use it.
pub struct TlsStream<'a, D> {
    pub tls: &'a mut ConnectionCommon<D>,
    pub sock: &'a mut TcpStream,
}

impl<D> fmt::Debug for TlsStream<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("sock", &self.sock)
            .finish()
    }
}

impl<D: SideData> TlsStream<'_, D> {
    /// Writes the ciphertext rustls holds (handshake messages, records, alerts): `Ok(true)`
    /// when all of it went out, `Ok(false)` when the socket would block first.
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads plaintext into `buf` as a socket read would: `Ok(0)` at the end of the stream
    /// (with or without the peer's close_notify), `WouldBlock` when there is none. Reads the
    /// socket until it would block or `buf` is full, so a short read means the socket is empty
    /// (the edge-triggered rule of a plain socket). A TLS error (a plain-text request, a bad
    /// ClientHello, a failed record) sends rustls's alert, best effort, and is `InvalidData`.
    pub fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            match self.tls.reader().read(&mut buf[filled..]) {
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: browsers do; treat it as the end.
                Err(_) => return Ok(filled),
            }
            match self.tls.read_tls(self.sock) {
                Ok(0) => return Ok(filled),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => {
                    return Ok(filled);
                }
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                let _ = self.flush_tls();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages owed go out now; what the socket does not take goes when it
            // is writable.
            self.flush_tls()?;
        }
    }
}

impl<D: SideData> Read for TlsStream<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_plain(buf)
    }
}

impl<D: SideData> Write for TlsStream<'_, D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Takes at most [`CHUNK`] of plaintext, and only once rustls holds no ciphertext: what is
    /// not taken stays with the caller (the outbox), as with a socket that would block.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.flush_tls()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write_vectored(bufs)?;
        self.flush_tls()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls().map(|_| ())
    }
}
