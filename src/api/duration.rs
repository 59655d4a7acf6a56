//! Go durations (`10m`, `1h30m`, `.5s`), as the CRD's `timeouts` and the clients' waits are
//! written: parsed exactly as Go's `time.ParseDuration`, without its sign.

use std::time::Duration;

/// Parses a Go duration (`10m`, `90s`, `1h30m`, `1.5h`, `500ms`) as Go's `time.ParseDuration`
/// does for non-negative values: integer nanoseconds, fractions as Go rounds them, `None` for
/// anything malformed or beyond Go's limit (about 2562047h). Never panics, whatever the input.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let (part, after) = duration_part(rest)?;
        total = total.checked_add(part)?;
        rest = after;
    }
    // Go keeps durations in an i64 of nanoseconds.
    (total <= i64::MAX as u64).then(|| Duration::from_nanos(total))
}

/// One `[0-9]*(.[0-9]*)?unit` part of a Go duration, in nanoseconds, and what follows it.
fn duration_part(s: &str) -> Option<(u64, &str)> {
    let digits = |t: &str| t.bytes().take_while(u8::is_ascii_digit).count();
    let (int, rest) = s.split_at(digits(s));
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(r) => r.split_at(digits(r)),
        None => ("", rest),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let unit_len = rest
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(rest.len());
    let (unit, rest) = rest.split_at(unit_len);
    let unit: u64 = match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    let whole: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut ns = whole.checked_mul(unit)?;
    if !frac.is_empty() {
        // As Go: the fraction's leading digits while they fit an i64, scaled in floating point.
        let (mut f, mut scale) = (0i64, 1f64);
        for d in frac.bytes() {
            let Some(next) = f
                .checked_mul(10)
                .and_then(|x| x.checked_add(i64::from(d - b'0')))
            else {
                break;
            };
            f = next;
            scale *= 10.0;
        }
        // Below one `unit` (at most 3.6e12 ns): the cast cannot overflow.
        ns = ns.checked_add((f as f64 * (unit as f64 / scale)) as u64)?;
    }
    Some((ns, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `time.ParseDuration` (go1.26) on each input, in nanoseconds; `None` = Go's error.
    /// Signed values are the one deliberate difference: the CRD refuses a sign, and so does
    /// `parse_duration` (Go: "-1s" = -1e9, "+1s" = 1e9).
    #[test]
    fn go_durations_parse_as_go_does() {
        let go: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("10m", Some(600000000000)),
            ("90s", Some(90000000000)),
            ("1h30m", Some(5400000000000)),
            ("30m1h", Some(5400000000000)),
            ("1.5h", Some(5400000000000)),
            ("1.5h30m", Some(7200000000000)),
            ("500ms", Some(500000000)),
            ("1.5s", Some(1500000000)),
            (".5s", Some(500000000)),
            ("5.s", Some(5000000000)),
            ("1us", Some(1000)),
            ("1\u{b5}s", Some(1000)),
            ("1\u{3bc}s", Some(1000)),
            ("3ns", Some(3)),
            ("0.000000001s", Some(1)),
            ("0.0000000001s", Some(0)),
            ("1.0000000000000000000001s", Some(1000000000)),
            ("1.123456789123456789123h", Some(4044444440844)),
            ("2562047h", Some(9223369200000000000)),
            ("2562048h", None),
            ("2562047h47m16.854775807s", Some(9223372036854775807)),
            ("2562047h47m16.854775808s", None),
            ("9223372036854775807ns", Some(9223372036854775807)),
            ("9223372036854775808ns", None),
            ("99999999999999999999h", None),
            ("10", None),
            ("m", None),
            ("", None),
            ("1d", None),
            ("1 s", None),
            ("1h1h", Some(7200000000000)),
            ("1\u{e9}", None),
            ("0s", Some(0)),
            ("00001h", Some(3600000000000)),
            ("-1s", None),
            ("+1s", None),
        ];
        for (input, want) in go {
            assert_eq!(
                parse_duration(input),
                want.map(Duration::from_nanos),
                "{input:?}"
            );
        }
    }
}
