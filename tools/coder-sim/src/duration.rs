//! Durations written as `250ms`, `2s`, `1.5s`, `3m`, `1h` or a bare number
//! of milliseconds, used by scenarios, the admin API and faults.

use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `250ms`, `2s`, `1.5s`, `3m`, `1h`, or a bare
/// number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurationSpec(pub Duration);

/// Parses `250ms`, `2s`, `1.5s`, `3m`, `1h` or a bare millisecond count.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid duration {s:?}"))?;
    let secs = match unit.trim() {
        "" | "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => bail!("invalid duration unit {other:?} in {s:?} (use ms, s, m or h)"),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| anyhow!("invalid duration {s:?}: {e}"))
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(DurationSpec(Duration::from_millis(ms))),
            Raw::Text(s) => parse_duration(&s)
                .map(DurationSpec)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_duration("1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("40").ok(), Some(Duration::from_millis(40)));
        assert!(parse_duration("3 fortnights").is_err());
    }
}
