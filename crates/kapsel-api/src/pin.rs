//! The client side of certificate pinning: a rustls verifier that accepts
//! exactly the server certificate whose SHA-256 fingerprint the user
//! accepted on first use (`kapsel remote add`), as ssh does with host keys.
//! A self-signed certificate has no authority to check; its fingerprint is
//! the identity.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Accepts only the certificate with this fingerprint.
#[derive(Debug)]
pub struct PinnedCert {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

fn provider() -> rustls::crypto::CryptoProvider {
    // See server.rs on ring.
    #[allow(deprecated)]
    rustls::crypto::ring::default_provider()
}

impl PinnedCert {
    /// Pin `fingerprint` (`AB:CD:…`, as the server prints it; case and
    /// separators do not matter).
    pub fn new(fingerprint: &str) -> PinnedCert {
        PinnedCert {
            fingerprint: normalize(fingerprint),
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

fn normalize(fp: &str) -> String {
    fp.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = normalize(&crate::server::fingerprint(end_entity.as_ref()));
        if crate::util::ct_eq(seen.as_bytes(), self.fingerprint.as_bytes()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate fingerprint is {} and not the one pinned; if the server's certificate was replaced on purpose, pin the new one",
                crate::server::fingerprint(end_entity.as_ref())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS client configuration that trusts only the pinned certificate.
pub fn client_config(fingerprint: &str) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert::new(fingerprint)))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}
