//! Server configuration: version, chat API era, rate limit and TLS.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `buildinfo.version` used when [`SimConfig::version`] is empty.
pub const DEFAULT_VERSION: &str = "v2.37.0";
/// Coder's default `--api-rate-limit`.
pub const DEFAULT_RATE_LIMIT: i64 = 512;

/// Where chats are served and in which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatEra {
    /// `/api/v2/chats/{id}` answering a bare `Chat` (v2.37+); the
    /// experimental path answers 404.
    #[default]
    V2,
    /// Only `/api/experimental/chats/{id}`, bare `Chat`.
    Experimental,
    /// Only `/api/experimental/chats/{id}`, answering
    /// `{"chat":{…},"messages":[],"queued_messages":[]}` (early March 2026).
    ExperimentalWrapped,
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to bind; `None` = `127.0.0.1:0` (a free port).
    pub addr: Option<SocketAddr>,
    /// `buildinfo.version` and `X-Coder-Build-Version` (default `v2.37.0`;
    /// empty also means the default).
    pub version: String,
    /// Chat API era.
    pub chat_era: ChatEra,
    /// Requests per user (or IP) per URL path per minute; default 512, `<= 0`
    /// disables rate limiting.
    pub rate_limit_per_minute: i64,
    /// Serve `https` with this certificate (e.g. one a test issued from its own CA);
    /// `None` serves plain `http`.
    pub tls: Option<SimTls>,
}

/// The certificate `https` is served with: PEM text of the chain (leaf first) and its key.
#[derive(Clone)]
pub struct SimTls {
    /// The certificate chain, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl std::fmt::Debug for SimTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTls").finish_non_exhaustive()
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            addr: None,
            version: DEFAULT_VERSION.to_owned(),
            chat_era: ChatEra::V2,
            rate_limit_per_minute: DEFAULT_RATE_LIMIT,
            tls: None,
        }
    }
}

/// A certificate authority made on the spot, and a certificate it issued for `127.0.0.1` and
/// `localhost` to serve `https` with: for tests of a Coder behind a private CA.
#[derive(Clone)]
pub struct TestCa {
    /// The CA certificate, PEM: what a client must be given to trust the server.
    pub ca_pem: String,
    /// The CA's common name (the certificate's issuer).
    pub ca_name: String,
    /// The server certificate (issued by the CA) and its key.
    pub tls: SimTls,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_name", &self.ca_name)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA named `name` and a server certificate it issued.
    pub fn generate(name: &str) -> anyhow::Result<TestCa> {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        ca.distinguished_name = dn;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
            .signed_by(&key, &issuer)?;
        Ok(TestCa {
            ca_pem: ca_cert.pem(),
            ca_name: name.to_owned(),
            tls: SimTls {
                cert_pem: leaf.pem(),
                key_pem: key.serialize_pem(),
            },
        })
    }
}
