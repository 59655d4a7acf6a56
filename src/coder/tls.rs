//! Which TLS certificates the Coder client trusts, and what a refused one means.
//!
//! Trusted: the platform's CA store (the image's bundle: `SSL_CERT_FILE` / `SSL_CERT_DIR`, else
//! the system store; Mozilla's roots when none can be loaded), plus CA bundles an administrator
//! gives (`--coder-ca-file`, or key `ca.crt` of a `coderRef` Secret for that connection only).
//! The platform store is read once per process and one verifier is shared by every client
//! that adds nothing to it, so a client costs no copy of the roots.
//!
//! A certificate that does not verify is Coder's final answer for that URL, not an outage:
//! [`untrusted_certificate`] finds rustls's reason in a failed request, and the client turns
//! it into `CoderError::TlsUntrusted` (reason `CoderTLSUntrusted`).

use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// The largest CA bundle accepted (a file or a Secret key); Debian's whole bundle is ~220 KiB.
pub const MAX_CA_BUNDLE_BYTES: usize = 1 << 20;

/// Why a CA bundle cannot be used. Never holds the bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    /// Larger than [`MAX_CA_BUNDLE_BYTES`].
    #[error("is {0} bytes long (a CA bundle is at most {MAX_CA_BUNDLE_BYTES})")]
    TooLarge(usize),
    /// No `-----BEGIN CERTIFICATE-----` block in it.
    #[error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    /// A PEM block that cannot be read.
    #[error("is not readable PEM: {0}")]
    Pem(String),
    /// A certificate that cannot be a trust anchor.
    #[error("holds a certificate that cannot be a CA: {0}")]
    Certificate(String),
    /// The verifier could not be built from the roots.
    #[error("cannot be used for verification: {0}")]
    Verifier(String),
}

/// The certificates a client trusts, as the TLS configuration its connections use. Cheap to
/// clone.
#[derive(Clone)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    config: Arc<ClientConfig>,
    /// Where the roots came from, for the log.
    origin: Arc<str>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("roots", &self.roots.len())
            .field("origin", &self.origin)
            .finish()
    }
}

impl Trust {
    /// The platform's CA store, read once per process.
    pub fn platform() -> Result<Trust, CaError> {
        static PLATFORM: OnceLock<Result<Trust, CaError>> = OnceLock::new();
        PLATFORM.get_or_init(load_platform).clone()
    }

    /// This trust plus the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks).
    pub fn with_pem(&self, pem: &[u8]) -> Result<Trust, CaError> {
        let certs = parse_bundle(pem)?;
        let mut roots = (*self.roots).clone();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| CaError::Certificate(e.to_string()))?;
        }
        Trust::from_roots(roots, format!("{} + given CA", self.origin))
    }

    /// The rustls configuration for a client (shares the verifier; cheap).
    pub fn client_config(&self) -> ClientConfig {
        (*self.config).clone()
    }

    /// How many trust anchors there are.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// True when nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Where the roots came from (`platform store (/etc/ssl/certs/...)`, `+ given CA`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn from_roots(roots: RootCertStore, origin: String) -> Result<Trust, CaError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| CaError::Verifier(e.to_string()))?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Verifier(e.to_string()))?
            .with_webpki_verifier(verifier)
            .with_no_client_auth();
        Ok(Trust {
            roots,
            config: Arc::new(config),
            origin: origin.into(),
        })
    }
}

/// The platform store, or Mozilla's roots when it has nothing (a bare image).
fn load_platform() -> Result<Trust, CaError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "cannot read part of the platform's CA store");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    let origin = if added > 0 {
        let from = std::env::var("SSL_CERT_FILE")
            .or_else(|_| std::env::var("SSL_CERT_DIR"))
            .unwrap_or_else(|_| "system".to_owned());
        tracing::debug!(added, ignored, from = %from, "trusting the platform's CA store");
        format!("platform store ({from})")
    } else {
        tracing::warn!(
            "the platform's CA store is empty or unreadable; trusting Mozilla's roots (webpki-roots) instead"
        );
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        "Mozilla's roots (no platform store)".to_owned()
    };
    Trust::from_roots(roots, origin)
}

/// The certificates of a PEM bundle (other PEM blocks, such as keys, are refused).
fn parse_bundle(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    if pem.len() > MAX_CA_BUNDLE_BYTES {
        return Err(CaError::TooLarge(pem.len()));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CaError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CaError::NoCertificate);
    }
    Ok(certs)
}

/// Why the server's certificate was refused, when that is what failed `e`: rustls's
/// certificate error, in words (e.g. `it is issued by a CA that is not trusted`). `None` for
/// every other failure (refused, reset, timeouts, a server that speaks no TLS).
pub fn untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // Bounded: a chain is a few links; a cycle cannot loop forever.
    for _ in 0..32 {
        let err = next?;
        if let Some(reason) = certificate_error(err) {
            return Some(reason);
        }
        // An io::Error's source() skips the error it wraps (hyper-rustls wraps rustls's
        // error in two of them): step into it instead.
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => None,
            },
            None => err.source(),
        };
    }
    None
}

fn certificate_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    match err.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(c) => Some(describe(c)),
        _ => None,
    }
}

/// A certificate error in words.
fn describe(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => {
            "it is issued by a CA that is not trusted (unknown issuer)".to_owned()
        }
        CertificateError::BadSignature => "its signature does not verify".to_owned(),
        CertificateError::Expired => "it has expired".to_owned(),
        CertificateError::NotValidYet => "it is not valid yet".to_owned(),
        CertificateError::NotValidForName => "it is not valid for this host name".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundles_without_certificates_are_refused_with_the_cause() {
        let t = Trust::platform().expect("platform trust");
        assert!(!t.is_empty(), "the platform store or Mozilla's roots");
        assert_eq!(
            t.with_pem(b"not pem at all").map(|_| ()),
            Err(CaError::NoCertificate)
        );
        assert_eq!(
            t.with_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .map(|_| ()),
            Err(CaError::NoCertificate)
        );
        let big = vec![b'a'; MAX_CA_BUNDLE_BYTES + 1];
        assert_eq!(
            t.with_pem(&big).map(|_| ()),
            Err(CaError::TooLarge(MAX_CA_BUNDLE_BYTES + 1))
        );
        assert!(matches!(
            t.with_pem(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"),
            Err(CaError::Pem(_) | CaError::Certificate(_))
        ));
    }

    #[test]
    fn a_given_ca_is_added_to_the_platform_roots() {
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|mut p| {
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                p.self_signed(&rcgen::KeyPair::generate()?)
            })
            .expect("test CA");
        let base = Trust::platform().expect("platform trust");
        let with = base.with_pem(ca.pem().as_bytes()).expect("usable CA");
        assert_eq!(with.len(), base.len() + 1);
        assert!(with.origin().ends_with("+ given CA"));
    }
}
