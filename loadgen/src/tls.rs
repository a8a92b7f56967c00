//! `wss://` targets: what loadgen trusts ([`Trust`]: a CA from `--ca`, or anything with
//! `--insecure`) and the rustls client configuration built from it. The bytes go through
//! `gateway::server::tls::TlsStream`, the gateway's own adapter, in `client`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
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
