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
//! it into `CoderError::TlsUntrusted` (reason `CoderTLSUntrusted`). Verification is webpki's
//! (rustls's own verifier, to which [`IssuerNaming`] delegates everything); when it fails for an
//! issuer that is not trusted, the error names that issuer (the certificate's issuer
//! distinguished name, at most [`MAX_ISSUER_TEXT`] characters), so an administrator knows which
//! CA to give.

use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, SignatureScheme,
};

/// The longest issuer name put in an error (longer ones are cut, with `…`).
pub const MAX_ISSUER_TEXT: usize = 200;

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
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IssuerNaming { webpki: verifier }))
            .with_no_client_auth();
        Ok(Trust {
            roots,
            config: Arc::new(config),
            origin: origin.into(),
        })
    }
}

/// rustls's webpki verifier, unchanged, except that an "unknown issuer" refusal carries the
/// refused certificate's issuer ([`UntrustedIssuer`]).
#[derive(Debug)]
struct IssuerNaming {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IssuerNaming {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verified {
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                let Some(issuer) = issuer_of(end_entity) else {
                    return Err(CertificateError::UnknownIssuer.into());
                };
                let named = OtherError(Arc::new(UntrustedIssuer { issuer }));
                Err(CertificateError::Other(named).into())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.webpki.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}

/// A server certificate refused because no trusted CA issued it, naming its issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("it is issued by {issuer:?}, a CA that is not trusted (unknown issuer)")]
pub struct UntrustedIssuer {
    /// The certificate's issuer distinguished name (e.g. `CN=Example CA, O=Example`), at most
    /// [`MAX_ISSUER_TEXT`] characters. Printed quoted and escaped: the server chose it.
    pub issuer: String,
}

/// The issuer distinguished name of the DER certificate `cert`, cut to [`MAX_ISSUER_TEXT`]
/// characters. `None` when it cannot be parsed or is empty.
fn issuer_of(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let issuer = parsed.issuer().to_string();
    if issuer.is_empty() {
        return None;
    }
    Some(match issuer.char_indices().nth(MAX_ISSUER_TEXT) {
        Some((cut, _)) => format!("{}…", &issuer[..cut]),
        None => issuer,
    })
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
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
            match other.downcast_ref::<UntrustedIssuer>() {
                Some(named) => Some(named.to_string()),
                None => Some(other.to_string()),
            }
        }
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

    /// A CA named by `dn` (type, value pairs) and a certificate for `127.0.0.1` it issued (DER).
    fn issued_by(dn: &[(rcgen::DnType, String)]) -> CertificateDer<'static> {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            ca.distinguished_name.push(t.clone(), v.as_str());
        }
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .and_then(|p| p.signed_by(&key, &issuer))
            .expect("leaf")
            .der()
            .clone()
    }

    #[test]
    fn an_untrusted_certificate_names_its_issuer_bounded_and_escaped() {
        let roots = Arc::new(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        let webpki = WebPkiServerVerifier::builder_with_provider(
            roots,
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let verifier = IssuerNaming { webpki };
        let verify = |cert: &CertificateDer<'_>| {
            let name = ServerName::try_from("127.0.0.1").expect("name");
            let err = verifier
                .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
                .expect_err("untrusted");
            untrusted_certificate(&err).expect("a certificate error")
        };
        let cert = issued_by(&[
            (rcgen::DnType::CommonName, "Test CA".into()),
            (rcgen::DnType::OrganizationName, "Example \"Corp\"".into()),
        ]);
        assert_eq!(
            verify(&cert),
            r#"it is issued by "CN=Test CA, O=Example \"Corp\"", a CA that is not trusted (unknown issuer)"#
        );
        // A server may name its CA at any length, in any characters: cut and escaped.
        let long = format!("Evil\nCA {}", "é".repeat(400));
        let reason = verify(&issued_by(&[(rcgen::DnType::CommonName, long)]));
        let kept = format!("CN=Evil\\nCA {}…\"", "é".repeat(MAX_ISSUER_TEXT - 11));
        assert!(reason.contains(&kept), "{reason}");
        assert!(!reason.contains('\n'), "{reason}");
    }
}
