//! TLS for a port whose callers send bearer tokens, so the tokens need not cross the network in
//! clear: the server side ([`acceptor`], from PEM files it reads again when they change, so a
//! renewed certificate in a mounted Secret is served without a restart) and the client side
//! ([`client`], a `reqwest` client that also trusts a given CA bundle).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// How often a handshake looks whether the certificate or key file changed (a Secret volume is
/// updated within about a minute of the Secret; cert-manager renews weeks ahead).
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

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

/// A TLS acceptor serving the certificate chain in `cert_file` with the key in `key_file`
/// (PEM). Both are read at start (an error then stops the process) and again when either
/// file's modification time changes, looked at by a handshake at most every [`RELOAD_CHECK`];
/// a changed pair that cannot be used is logged and the previous one kept.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Reloading::new(cert_file, key_file, Arc::clone(&provider), RELOAD_CHECK)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificate and key of a port, read from their files, with when they were last
/// modified and when that was last looked at.
#[derive(Debug)]
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    check_every: Duration,
    served: Mutex<Served>,
}

#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    modified: [Option<SystemTime>; 2],
    checked: Instant,
}

impl Reloading {
    fn new(
        cert_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
        check_every: Duration,
    ) -> Result<Self, TlsError> {
        let modified = modified(cert_file, key_file);
        let key = certified_key(cert_file, key_file, &provider)?;
        Ok(Reloading {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            check_every,
            served: Mutex::new(Served {
                key: Arc::new(key),
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to serve: the files again if they changed since the last look (at most one
    /// look per `check_every`).
    fn current(&self) -> Arc<CertifiedKey> {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if served.checked.elapsed() < self.check_every {
            return Arc::clone(&served.key);
        }
        served.checked = Instant::now();
        let modified = modified(&self.cert_file, &self.key_file);
        if modified == served.modified {
            return Arc::clone(&served.key);
        }
        // Remembered even when the new pair is unusable: one warning per change, not per look.
        served.modified = modified;
        match certified_key(&self.cert_file, &self.key_file, &self.provider) {
            Ok(key) => {
                tracing::info!(cert = %self.cert_file.display(), "serving the renewed TLS certificate");
                served.key = Arc::new(key);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the changed TLS certificate or key cannot be used; still serving the previous one");
            }
        }
        Arc::clone(&served.key)
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn modified(cert_file: &Path, key_file: &Path) -> [Option<SystemTime>; 2] {
    [cert_file, key_file].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// The chain in `cert_file` with the key in `key_file`, checked to belong together.
fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|e| TlsError::Key {
        path: key_file.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(CertifiedKey::from_der(certs, key, provider)?)
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

    /// The end-entity certificate a resolver serves now.
    fn served(r: &Reloading) -> Vec<u8> {
        r.current().cert[0].as_ref().to_vec()
    }

    /// Writes `text` to `path` with a modification time `secs` after the epoch, as a Secret
    /// volume's update gives the files a new one.
    fn rewrite(path: &Path, text: &str, secs: u64) {
        std::fs::write(path, text).expect("write");
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        file.set_modified(at).expect("set mtime");
    }

    #[test]
    fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (old_cert, old_key) = pair("logs.example");
        let cert = write(dir.path(), "tls.crt", &old_cert);
        let key = write(dir.path(), "tls.key", &old_key);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let r = Reloading::new(&cert, &key, provider, Duration::ZERO).expect("serves");
        let first = served(&r);
        assert_eq!(served(&r), first, "unchanged files: the same certificate");

        let (new_cert, new_key) = pair("logs.example");
        rewrite(&cert, &new_cert, 1_000);
        rewrite(&key, &new_key, 1_000);
        let renewed = served(&r);
        assert_ne!(renewed, first, "the renewed certificate is served");

        // A half-written renewal (a key of another certificate) keeps the previous pair.
        let (_, stray_key) = pair("other.example");
        rewrite(&key, &stray_key, 2_000);
        assert_eq!(served(&r), renewed);
        rewrite(&cert, "not PEM", 3_000);
        assert_eq!(served(&r), renewed);
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
