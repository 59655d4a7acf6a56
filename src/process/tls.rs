//! TLS for a port whose callers send bearer tokens, so the tokens need not cross the network in
//! clear: the server side ([`acceptor`], from PEM files read at start) and the client side
//! ([`client`], a `reqwest` client that also trusts a given CA bundle).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why a certificate, key or CA bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PEM private key rustls can use.
    #[error("{} holds no usable PEM private key ({reason})", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        reason: String,
    },
    /// Certificate and key do not make a TLS server (e.g. they do not belong together).
    #[error("the certificate and key do not make a TLS server: {0}")]
    Server(#[from] rustls::Error),
    /// A CA certificate is not one the HTTP client accepts.
    #[error("{}: {reason}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// The client's words.
        reason: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A TLS acceptor serving the certificate chain in `cert_file` with the key in `key_file` (PEM;
/// read once, at start).
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|e| TlsError::Key {
        path: key_file.to_owned(),
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An HTTP client with `timeout` per request that trusts, besides its built-in roots, the CA
/// certificates in `ca_file` (PEM), if given.
pub fn client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, TlsError> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(path) = ca_file {
        for cert in certificates(path)? {
            let cert = reqwest::Certificate::from_der(cert.as_ref()).map_err(|e| TlsError::Ca {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| TlsError::Ca {
        path: ca_file.map(Path::to_owned).unwrap_or_default(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn a_certificate_and_its_key_serve_and_unusable_files_say_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = pair("logs.example");
        let (_, other_key) = pair("other.example");
        let cert = write(dir.path(), "tls.crt", &cert);
        let key = write(dir.path(), "tls.key", &key);
        assert!(acceptor(&cert, &key).is_ok());

        let missing = dir.path().join("missing.crt");
        assert!(matches!(
            acceptor(&missing, &key),
            Err(TlsError::Read { .. })
        ));
        let empty = write(dir.path(), "empty.crt", "not PEM");
        assert!(matches!(
            acceptor(&empty, &key),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(acceptor(&cert, &empty), Err(TlsError::Key { .. })));
        let other = write(dir.path(), "other.key", &other_key);
        let err = acceptor(&cert, &other)
            .err()
            .expect("a key of another certificate");
        assert!(matches!(err, TlsError::Server(_)), "{err}");
    }

    #[test]
    fn a_client_trusts_a_given_ca_bundle_and_refuses_a_file_without_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = pair("ca.example");
        let ca = write(dir.path(), "ca.crt", &cert);
        assert!(client(Some(&ca), Duration::from_secs(1)).is_ok());
        assert!(client(None, Duration::from_secs(1)).is_ok());
        let empty = write(dir.path(), "empty.crt", "");
        assert!(matches!(
            client(Some(&empty), Duration::from_secs(1)),
            Err(TlsError::NoCertificate { .. })
        ));
    }
}
