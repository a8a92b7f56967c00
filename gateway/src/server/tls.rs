//! TLS with rustls: the certificate and key files, their reload, and the server configuration
//! every connection starts from. One connection's TLS state and its I/O are in
//! `server::tls_conn`.
//!
//! What a TLS connection holds beyond a plain one lives in the worker's side table (a boxed
//! `TlsConn`), never in `Conn`, so plain connections pay nothing for TLS.
//!
//! **Reload.** The certificate is chosen per handshake by `Certs` (a `ResolvesServerCert`
//! over a lock held only to clone an `Arc`); `Tls::reload` rereads the files and swaps them in
//! for new handshakes; connections already open keep theirs.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::tls_conn::TlsConn;

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
        let conn = UnbufferedServerConnection::new(self.config.clone()).ok()?;
        Some(Box::new(TlsConn::new(conn)))
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
