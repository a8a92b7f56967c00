//! `wss://` targets: what loadgen trusts ([`Trust`]: a CA from `--ca`, or anything with
//! `--insecure`), the rustls client configuration built from it, and [`TlsStream`], a client
//! socket seen through its rustls connection, which `client` reads and writes.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

/// Which server certificates a `wss://` client accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trust {
    /// Certificates that chain to one of these CA certificates (DER), read from `--ca`.
    Ca(Vec<Vec<u8>>),
    /// Any certificate (`--insecure`): for self-signed test certificates. The handshake
    /// signatures are still checked, so the cost measured is a real handshake's.
    Insecure,
}

impl Trust {
    /// Reads the CA certificates of a PEM file; errors name the file.
    pub fn from_ca_file(path: &Path) -> Result<Trust, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--ca {}: {e:?}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--ca {}: no CERTIFICATE in the file",
                path.display()
            ));
        }
        let trust = Trust::Ca(certs.iter().map(|c| c.to_vec()).collect());
        let mut roots = RootCertStore::empty();
        let (_, bad) = roots.add_parsable_certificates(certs);
        if bad > 0 {
            return Err(format!(
                "--ca {}: {bad} certificate(s) could not be parsed",
                path.display()
            ));
        }
        Ok(trust)
    }
}

/// Plaintext handed to rustls at once (its buffer limit): one record's worth.
pub const CHUNK: usize = 16 * 1024;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration for `trust`: TLS 1.2 and 1.3, ALPN `http/1.1`.
pub fn client_config(trust: &Trust) -> Arc<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let mut config = match trust {
        Trust::Ca(certs) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs.iter().map(|c| CertificateDer::from(c.clone())));
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The name to ask for and check: the URL's host without its port (an IP address or a DNS
/// name).
pub fn server_name(authority: &str) -> Result<ServerName<'static>, String> {
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !port.contains(']') => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| format!("'{host}' is not a server name: {e}"))
}

/// `--insecure`: accepts any certificate, checks the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client socket through its rustls connection (rustls's buffered API): reads give plaintext,
/// writes take plaintext, with the edge-triggered semantics of the socket itself.
pub struct TlsStream<'a> {
    pub tls: &'a mut ClientConnection,
    pub sock: &'a mut TcpStream,
}

impl fmt::Debug for TlsStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("sock", &self.sock)
            .finish()
    }
}

impl TlsStream<'_> {
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
    /// (the edge-triggered rule of a plain socket). A TLS error (an untrusted certificate, a
    /// failed record) sends rustls's alert, best effort, and is `InvalidData`.
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

impl Read for TlsStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_plain(buf)
    }
}

impl Write for TlsStream<'_> {
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
