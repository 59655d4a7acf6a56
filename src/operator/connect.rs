//! Resolves which Coder deployment and token a request uses: the operator-wide connection
//! (flags/env, token file) or the request's `spec.coderRef` Secret in its own namespace.
//! Clients are cached per (URL, token, CA) so requests share rate limits and watch streams
//! ([`ClientCache`]: bounded, idle clients dropped).
//! A `coderRef` Secret's URL must match one of the allowed URL prefixes ([`AllowedUrls`]), so
//! a request cannot aim the operator, with a user's token, at any in-cluster or metadata
//! address.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::api::crd::WorkspaceStartRequest;
use crate::api::reason::Reason;
use crate::coder::credentials::{self, SessionToken};
use crate::coder::{ClientOptions, CoderClient};
use crate::operator::client_cache::{CacheLimits, ClientCache, ClientError};
use crate::operator::decide::Observation;
use crate::operator::tenancy;

/// A usable Coder client and the key that identifies its deployment + identity.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The client.
    pub client: CoderClient,
    /// `url#fingerprint`; never contains the token.
    pub key: String,
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ResolveError {
    /// The request cannot be served: it fails with this observation.
    Request(Observation),
    /// Kubernetes failed while reading the Secret: retry (shown on the request if it lasts).
    Kube(kube::Error),
}

/// Operator-wide settings and the client cache.
pub struct Connections {
    kube: kube::Client,
    default_url: Option<String>,
    default_token_file: Option<PathBuf>,
    allowed: AllowedUrls,
    clients: ClientCache,
    /// The operator-wide connection and the token file version it was made from.
    operator_wide: Mutex<Option<(FileVersion, Connection)>>,
    /// Only Secrets that opted in serve as `coderRef` (bound tenancy, [`tenancy`]).
    secret_opt_in: bool,
}

/// What tells one version of a file from the next without reading it: a rotated token file
/// (written in place, or a Secret volume's symlink swapped to a new file) changes at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileVersion {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileVersion {
    /// The version of the file `path` leads to (symlinks followed), as the read would see it.
    fn of(path: &Path) -> Option<FileVersion> {
        // A stat of a local file; cheaper than handing it to the blocking pool.
        let m = std::fs::metadata(path).ok()?;
        Some(FileVersion {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        })
    }
}

/// The URL prefixes a `coderRef` Secret's `url` must match: same scheme, host and port, and a
/// path below the prefix's (at a `/` boundary).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllowedUrls(Vec<reqwest::Url>);

impl AllowedUrls {
    /// The prefixes given (`--coder-allowed-urls`), or by default the scheme, host and port of
    /// the operator-wide Coder URL (none when there is none: every `coderRef` is refused).
    pub fn new(prefixes: &[String], default_url: Option<&str>) -> Result<AllowedUrls, String> {
        let given: Vec<&str> = prefixes
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .collect();
        if given.is_empty() {
            let origin = default_url
                .map(|u| parse_http_url(u).map(|u| origin(&u)))
                .transpose()?;
            return Ok(AllowedUrls(origin.into_iter().collect()));
        }
        given
            .into_iter()
            .map(parse_http_url)
            .collect::<Result<_, _>>()
            .map(AllowedUrls)
    }

    /// True when `url` lies under one of the prefixes.
    pub fn permits(&self, url: &str) -> bool {
        let Ok(url) = reqwest::Url::parse(url.trim()) else {
            return false;
        };
        self.0.iter().any(|p| {
            let base = p.path().trim_end_matches('/');
            let path = url.path();
            url.scheme() == p.scheme()
                && url.host_str() == p.host_str()
                && url.port_or_known_default() == p.port_or_known_default()
                && (path.trim_end_matches('/') == base
                    || path.strip_prefix(base).is_some_and(|r| r.starts_with('/')))
        })
    }

    /// The prefixes, for messages.
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none".to_owned();
        }
        let all: Vec<&str> = self
            .0
            .iter()
            .map(|u| u.as_str().trim_end_matches('/'))
            .collect();
        all.join(", ")
    }
}

/// Parses an http(s) URL with a host.
fn parse_http_url(s: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(s.trim()).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!(
            "invalid URL {s:?}: use http(s)://host[:port][/path]"
        ));
    }
    Ok(u)
}

/// `scheme://host[:port]/` of `u`.
fn origin(u: &reqwest::Url) -> reqwest::Url {
    let mut o = u.clone();
    o.set_path("/");
    o.set_query(None);
    o.set_fragment(None);
    let _ = o.set_username("");
    let _ = o.set_password(None);
    o
}

fn misconfigured(reason: Reason, message: impl Into<String>) -> ResolveError {
    ResolveError::Request(Observation::Failed {
        reason,
        message: message.into(),
    })
}

impl Connections {
    /// Creates the resolver.
    pub fn new(
        kube: kube::Client,
        default_url: Option<String>,
        default_token_file: Option<PathBuf>,
        opts: ClientOptions,
        allowed: AllowedUrls,
        limits: CacheLimits,
    ) -> Connections {
        Connections {
            kube,
            default_url,
            default_token_file,
            allowed,
            clients: ClientCache::new(opts, limits),
            operator_wide: Mutex::new(None),
            secret_opt_in: false,
        }
    }

    /// Makes only Secrets that opted in ([`tenancy::secret_opted_in`]) usable as `coderRef`.
    pub fn require_secret_opt_in(mut self, yes: bool) -> Connections {
        self.secret_opt_in = yes;
        self
    }

    /// The connection for `wsr`.
    pub async fn resolve(&self, wsr: &WorkspaceStartRequest) -> Result<Connection, ResolveError> {
        match &wsr.spec.coder_ref {
            Some(r) => {
                // Objects admitted before the CRD checked the name: never put it in a URL.
                if !is_secret_name(&r.name) {
                    return Err(misconfigured(
                        Reason::SecretInvalid,
                        "spec.coderRef.name is not a valid Secret name (lower-case letters, digits, '-' and '.')",
                    ));
                }
                let ns = wsr.namespace().unwrap_or_default();
                let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), &ns);
                let secret = match secrets.get_opt(&r.name).await {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        return Err(misconfigured(
                            Reason::SecretNotFound,
                            format!(
                                "Secret {:?} (spec.coderRef) does not exist in this namespace",
                                r.name
                            ),
                        ));
                    }
                    Err(kube::Error::Api(s)) if s.code == 403 => {
                        return Err(misconfigured(
                            Reason::SecretNotFound,
                            format!(
                                "the operator may not read Secret {:?} in this namespace; grant it (Helm value rbac.secretNamespaces)",
                                r.name
                            ),
                        ));
                    }
                    Err(e) => return Err(ResolveError::Kube(e)),
                };
                if self.secret_opt_in && !tenancy::secret_opted_in(&secret) {
                    return Err(ResolveError::Request(
                        tenancy::secret_not_allowed(&r.name).into(),
                    ));
                }
                self.secret_connection(&r.name, &secret)
            }
            None => self.operator_wide().await,
        }
    }

    /// The connection a `coderRef` Secret describes: its `url` and `token` must be usable
    /// (else `SecretInvalid` naming the key, never showing the value) and the URL allowed.
    fn secret_connection(&self, name: &str, secret: &Secret) -> Result<Connection, ResolveError> {
        let (Some(url), Some(token)) = (secret_value(secret, "url"), secret_value(secret, "token"))
        else {
            return Err(misconfigured(
                Reason::SecretInvalid,
                format!(
                    "Secret {name:?} (spec.coderRef) needs non-empty keys \"url\" and \"token\""
                ),
            ));
        };
        let invalid = |key: &str, what: &str, why: &dyn std::fmt::Display| {
            misconfigured(
                Reason::SecretInvalid,
                format!(
                    "key {key:?} of Secret {name:?} (spec.coderRef) is not a usable {what}: it {why}"
                ),
            )
        };
        let url = credentials::base_url(url).map_err(|e| invalid("url", "Coder URL", &e))?;
        let token =
            SessionToken::parse(token).map_err(|e| invalid("token", "Coder session token", &e))?;
        if !self.allowed.permits(&url) {
            return Err(misconfigured(
                Reason::CoderURLNotAllowed,
                format!(
                    "the url in Secret {name:?} (spec.coderRef) is not an allowed Coder URL (allowed: {}); an administrator can add it to coder.allowedUrls",
                    self.allowed.describe()
                ),
            ));
        }
        let ca = secret_value(secret, "ca.crt");
        self.client(&url, token, ca).map_err(|e| match e {
            ClientError::Ca(e) => invalid("ca.crt", "CA bundle", &e),
            ClientError::Coder(e) => {
                misconfigured(Reason::SecretInvalid, format!("Secret {name:?}: {e}"))
            }
        })
    }

    /// The operator-wide connection (`--coder-url`, `--coder-token-file`). The token file is
    /// read again whenever it changed (so a rotated token is used from the next reconcile on),
    /// and otherwise not: reading it on every reconcile cost an eighth of the operator's CPU.
    pub async fn operator_wide(&self) -> Result<Connection, ResolveError> {
        let (Some(url), Some(file)) = (&self.default_url, &self.default_token_file) else {
            return Err(misconfigured(
                Reason::CoderNotConfigured,
                "no operator-wide Coder connection is configured (--coder-url and --coder-token-file); set spec.coderRef",
            ));
        };
        let version = FileVersion::of(file);
        if let Some(version) = &version
            && let Some((seen, conn)) = self.lock_operator_wide().as_ref()
            && seen == version
        {
            return Ok(conn.clone());
        }
        let conn = self.read_operator_wide(url, file).await?;
        // Remembered only when the file did not change around the read (else read it again).
        if let Some(version) = version
            && FileVersion::of(file).as_ref() == Some(&version)
        {
            *self.lock_operator_wide() = Some((version, conn.clone()));
        }
        Ok(conn)
    }

    fn lock_operator_wide(&self) -> std::sync::MutexGuard<'_, Option<(FileVersion, Connection)>> {
        self.operator_wide.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the token file and returns the connection for `url` with that token.
    async fn read_operator_wide(&self, url: &str, file: &Path) -> Result<Connection, ResolveError> {
        let raw = tokio::fs::read(file).await.map_err(|e| {
            tracing::error!(path = %file.display(), error = %e, "cannot read the Coder token file");
            misconfigured(
                Reason::CoderNotConfigured,
                "the operator cannot read its Coder token file",
            )
        })?;
        let token = SessionToken::parse(raw).map_err(|e| {
            tracing::error!(path = %file.display(), problem = %e, "the Coder token file does not hold a usable session token");
            misconfigured(
                Reason::CoderNotConfigured,
                format!("the operator's Coder token file (--coder-token-file) is not a usable Coder session token: it {e}"),
            )
        })?;
        self.client(url, token, None)
            .map_err(|e| misconfigured(Reason::CoderNotConfigured, e.to_string()))
    }

    /// The cached client for this credential (see [`ClientCache`]).
    fn client(
        &self,
        url: &str,
        token: SessionToken,
        ca: Option<&[u8]>,
    ) -> Result<Connection, ClientError> {
        let (client, key) = self.clients.client(url, token, ca)?;
        Ok(Connection { client, key })
    }
}

/// The bytes of `key` in the Secret (`data`, else `stringData`), unless absent or blank.
fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| &v.0[..]);
    let string_data = || {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(String::as_bytes)
    };
    data.or_else(string_data)
        .filter(|v| !v.trim_ascii().is_empty())
}

/// A DNS-1123 subdomain, as Kubernetes requires of Secret names.
fn is_secret_name(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coder_urls_must_lie_under_an_allowed_prefix() {
        let by_default =
            AllowedUrls::new(&[], Some("https://coder.example.com/some/path")).expect("valid");
        assert_eq!(by_default.describe(), "https://coder.example.com");
        for ok in [
            "https://coder.example.com",
            "https://coder.example.com/",
            "https://CODER.example.com:443/x",
        ] {
            assert!(by_default.permits(ok), "{ok}");
        }
        for bad in [
            "http://coder.example.com",
            "https://coder.example.com:8443",
            "https://coder.example.com.evil.net",
            "https://evil.net/?https://coder.example.com",
            "http://169.254.169.254/latest/meta-data",
            "http://kubernetes.default.svc",
            "not a url",
        ] {
            assert!(!by_default.permits(bad), "{bad}");
        }

        let listed = AllowedUrls::new(
            &[
                "https://coder.example.com/team-a".into(),
                " http://127.0.0.1:3000 ".into(),
            ],
            Some("https://other.example.com"),
        )
        .expect("valid");
        assert!(listed.permits("https://coder.example.com/team-a"));
        assert!(listed.permits("https://coder.example.com/team-a/"));
        assert!(!listed.permits("https://coder.example.com/team-ab"));
        assert!(!listed.permits("https://coder.example.com/"));
        assert!(listed.permits("http://127.0.0.1:3000"));
        assert!(
            !listed.permits("https://other.example.com"),
            "the list replaces the default"
        );

        assert_eq!(
            AllowedUrls::new(&[], None).expect("valid").describe(),
            "none"
        );
        assert!(AllowedUrls::new(&["ftp://x".into()], None).is_err());
        assert!(AllowedUrls::new(&["coder.example.com".into()], None).is_err());
    }

    fn operator_wide_connections(token_file: &Path) -> Connections {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
        let kube = kube::Client::try_from(config).expect("kube client");
        Connections::new(
            kube,
            Some("http://127.0.0.1:9".into()),
            Some(token_file.to_owned()),
            ClientOptions::default(),
            AllowedUrls::default(),
            CacheLimits::default(),
        )
    }

    fn key(r: Result<Connection, ResolveError>) -> String {
        match r {
            Ok(c) => c.key,
            Err(e) => panic!("no connection: {e:?}"),
        }
    }

    #[tokio::test]
    async fn the_token_file_is_read_again_only_when_it_changed() {
        let dir = std::env::temp_dir().join(format!("wso-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "first-token\n").expect("write");
        let conns = operator_wide_connections(&file);
        let first = key(conns.operator_wide().await);
        assert_eq!(key(conns.operator_wide().await), first, "unchanged file");

        // Rotated in place (same length, so only the modification time tells).
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, "other-token\n").expect("write");
        let rotated = key(conns.operator_wide().await);
        assert_ne!(rotated, first, "the rotated token is used at once");

        // Rotated as a Secret volume does it: a new file behind the same path.
        let next = dir.join("token.next");
        std::fs::write(&next, "third-token\n").expect("write");
        std::fs::rename(&next, &file).expect("rename");
        let swapped = key(conns.operator_wide().await);
        assert_ne!(swapped, rotated, "the swapped-in token is used at once");

        std::fs::remove_file(&file).expect("remove");
        assert!(
            conns.operator_wide().await.is_err(),
            "a vanished token file is an error, not the last token"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_malformed_token_file_fails_requests_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("wso-bad-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "first-half\nsecond-half\n").expect("write");
        let conns = operator_wide_connections(&file);
        match conns.operator_wide().await {
            Err(ResolveError::Request(Observation::Failed { reason, message })) => {
                assert_eq!(reason, Reason::CoderNotConfigured);
                assert_eq!(
                    message,
                    "the operator's Coder token file (--coder-token-file) is not a usable Coder session token: it contains a line break at byte 10 (a session token is one line of visible ASCII)"
                );
            }
            other => panic!("want CoderNotConfigured: {other:?}"),
        }
        // Fixed in place: used from the next reconcile on.
        std::fs::write(&file, "second-half\n").expect("write");
        assert!(conns.operator_wide().await.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secret_names_are_dns_subdomains() {
        for ok in ["coder-credentials", "a", "team.coder-1", "0abc"] {
            assert!(is_secret_name(ok), "{ok}");
        }
        for bad in [
            "",
            "coder admin",
            "../../demo/secrets/coder-admin",
            "Upper",
            "-x",
            "x-",
            "a..b",
            ".a",
            &"a".repeat(254),
        ] {
            assert!(!is_secret_name(bad), "{bad}");
        }
    }
}
