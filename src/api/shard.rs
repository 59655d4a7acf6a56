//! Sharding: which requests this process reconciles. `--shard NAME` takes the requests labelled
//! `coder.com/shard=NAME`; without it the process takes the requests without that label. The
//! selector is applied by the API server on the watch, so a shard never lists or caches other
//! shards' requests, and a request whose label changes leaves the old shard's watch as a delete.
//! Each shard also has its own Lease and a `shard` label on its metrics.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// The label that assigns a request to a shard.
pub const SHARD_LABEL: &str = "coder.com/shard";

/// Longest shard name: a Kubernetes label value and DNS label (it names a Lease and a
/// Deployment).
pub const MAX_SHARD_NAME: usize = crate::api::bounds::MAX_LABEL;

/// Why a shard name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardNameError {
    /// Longer than [`MAX_SHARD_NAME`].
    #[error("shard name is {len} characters long; at most {MAX_SHARD_NAME} are allowed")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Not a lowercase RFC 1123 label.
    #[error(
        "shard name {name:?} must be a lowercase RFC 1123 label (a-z, 0-9 and '-', starting and \
         ending with a letter or digit, e.g. team-a): it is the value of the coder.com/shard label \
         and part of the shard's Lease name"
    )]
    Invalid {
        /// The refused name.
        name: String,
    },
}

/// The requests one operator process reconciles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shard {
    name: Option<String>,
}

impl Shard {
    /// The default shard: requests without the [`SHARD_LABEL`] label.
    pub fn unlabelled() -> Shard {
        Shard::default()
    }

    /// Parses `--shard`: empty is the default shard, anything else must be a valid name.
    pub fn parse(name: &str) -> Result<Shard, ShardNameError> {
        if name.is_empty() {
            return Ok(Shard::unlabelled());
        }
        if name.len() > MAX_SHARD_NAME {
            return Err(ShardNameError::TooLong { len: name.len() });
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        let alnum = |c: Option<char>| c.is_some_and(|c| allowed(c) && c != '-');
        if !name.chars().all(allowed) || !alnum(name.chars().next()) || !alnum(name.chars().last())
        {
            return Err(ShardNameError::Invalid {
                name: name.to_owned(),
            });
        }
        Ok(Shard {
            name: Some(name.to_owned()),
        })
    }

    /// The shard's name (`None` for the default shard).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The label selector of the shard's watch: `coder.com/shard=NAME`, or `!coder.com/shard`.
    pub fn label_selector(&self) -> String {
        match &self.name {
            Some(name) => format!("{SHARD_LABEL}={name}"),
            None => format!("!{SHARD_LABEL}"),
        }
    }

    /// True when an object with these labels belongs to this shard (the selector, client-side).
    pub fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(SHARD_LABEL).map(String::as_str) == self.name.as_deref()
    }

    /// The shard's Lease: `base` for the default shard, `base-shard-NAME` for a named one, so
    /// two shards never share a leader even when given the same `--lease-name`.
    pub fn lease_name(&self, base: &str) -> String {
        match &self.name {
            Some(name) => format!("{base}-shard-{name}"),
            None => base.to_owned(),
        }
    }

    /// Constant labels for every metric: `shard="NAME"`, none for the default shard (whose
    /// metrics stay as they were before sharding; `{shard=""}` selects them in PromQL).
    pub fn metric_labels(&self) -> Vec<(Cow<'static, str>, Cow<'static, str>)> {
        self.name
            .iter()
            .map(|n| (Cow::Borrowed("shard"), Cow::Owned(n.clone())))
            .collect()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => f.write_str(name),
            None => write!(f, "default (requests without {SHARD_LABEL})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn shard_names_are_lowercase_dns_labels() {
        for ok in ["a", "team-a", "0", "shard-1", &"x".repeat(MAX_SHARD_NAME)] {
            assert_eq!(
                Shard::parse(ok).map(|s| s.name().map(str::to_owned)),
                Ok(Some(ok.to_owned()))
            );
        }
        for bad in ["-a", "a-", "Team", "a_b", "a.b", "a b", "ä"] {
            assert!(
                matches!(Shard::parse(bad), Err(ShardNameError::Invalid { .. })),
                "{bad:?} must be refused"
            );
        }
        assert_eq!(
            Shard::parse(&"x".repeat(MAX_SHARD_NAME + 1)),
            Err(ShardNameError::TooLong {
                len: MAX_SHARD_NAME + 1
            })
        );
        assert_eq!(Shard::parse(""), Ok(Shard::unlabelled()));
    }

    #[test]
    fn each_shard_owns_exactly_the_requests_its_selector_selects() {
        let default = Shard::unlabelled();
        let a = Shard::parse("a").expect("valid");
        let cases = [
            (labels(&[]), true, false),
            (labels(&[("app", "x")]), true, false),
            (labels(&[(SHARD_LABEL, "a")]), false, true),
            (labels(&[(SHARD_LABEL, "b")]), false, false),
            // An empty value is a label too: no shard (and not the default) takes it.
            (labels(&[(SHARD_LABEL, "")]), false, false),
        ];
        for (l, by_default, by_a) in cases {
            assert_eq!(default.owns(&l), by_default, "default shard, labels {l:?}");
            assert_eq!(a.owns(&l), by_a, "shard a, labels {l:?}");
        }
        assert_eq!(default.label_selector(), "!coder.com/shard");
        assert_eq!(a.label_selector(), "coder.com/shard=a");
    }

    #[test]
    fn each_shard_has_its_own_lease_and_metric_label() {
        let a = Shard::parse("team-a").expect("valid");
        assert_eq!(Shard::unlabelled().lease_name("wso"), "wso");
        assert_eq!(a.lease_name("wso"), "wso-shard-team-a");
        assert!(Shard::unlabelled().metric_labels().is_empty());
        assert_eq!(
            a.metric_labels(),
            vec![(Cow::Borrowed("shard"), Cow::Owned("team-a".to_owned()))]
        );
    }
}
