//! What a Coder connection is made of, checked before anything is sent: the session token
//! (it travels as an HTTP header value) and the deployment's base URL. Both come from Secrets
//! and files that users write, so a value that cannot work is refused here with the reason,
//! never with the value, instead of failing every call later as if Coder were down.

use std::fmt;

/// The longest session token accepted. Coder's own are 33 bytes (`<10-char id>-<22-char
/// secret>`); anything near this limit is a wrong file or key, not a token.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The longest base URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// A Coder session token: one line of visible ASCII. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

/// Where a value stops being one line of visible ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invisible {
    /// A `\n` or `\r` inside the value.
    #[error("contains a line break at byte {0}")]
    LineBreak(usize),
    /// Another ASCII control byte (NUL, ESC, DEL, ...).
    #[error("contains a control character at byte {0}")]
    Control(usize),
    /// A space or tab inside the value.
    #[error("contains whitespace at byte {0}")]
    Whitespace(usize),
    /// A byte outside ASCII (UTF-8 text or binary).
    #[error("contains a non-ASCII byte at byte {0}")]
    NotAscii(usize),
}

/// Why a value cannot be a session token. Never holds the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Nothing but whitespace.
    #[error("is empty")]
    Empty,
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("is {0} bytes long (a session token is at most {MAX_TOKEN_BYTES})")]
    TooLong(usize),
    /// Not one line of visible ASCII.
    #[error("{0} (a session token is one line of visible ASCII)")]
    Invisible(Invisible),
}

/// Why a value cannot be a Coder base URL. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Nothing but whitespace.
    #[error("is empty")]
    Empty,
    /// Longer than [`MAX_URL_BYTES`].
    #[error("is {0} bytes long (at most {MAX_URL_BYTES})")]
    TooLong(usize),
    /// Not one line of visible ASCII.
    #[error("{0}")]
    Invisible(Invisible),
    /// Not a URL at all.
    #[error("is not a URL ({0})")]
    Parse(String),
    /// A scheme other than http or https.
    #[error("has scheme {0:?}; use http or https")]
    Scheme(String),
    /// No host, a user name or password, a query or a fragment: the API paths are appended to
    /// the URL, and credentials belong in the token.
    #[error("has {0}; use http(s)://host[:port][/path]")]
    Shape(&'static str),
}

impl SessionToken {
    /// Checks a token as read from a Secret or file: surrounding whitespace (the trailing
    /// newline of `kubectl create secret --from-file`) is trimmed, the rest must be one line
    /// of visible ASCII of at most [`MAX_TOKEN_BYTES`].
    pub fn parse(raw: impl AsRef<[u8]>) -> Result<SessionToken, TokenError> {
        let raw = raw.as_ref().trim_ascii();
        if raw.is_empty() {
            return Err(TokenError::Empty);
        }
        if raw.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong(raw.len()));
        }
        visible_ascii(raw)
            .map(|s| SessionToken(s.to_owned()))
            .map_err(TokenError::Invisible)
    }

    /// The raw token, for the auth header and for redaction checks.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// Checks a Coder base URL (surrounding whitespace trimmed): `http(s)://host[:port][/path]`,
/// visible ASCII (the URL parser would silently drop an embedded newline or tab, making it
/// another URL), at most [`MAX_URL_BYTES`]. Returns it without a trailing `/`.
pub fn base_url(raw: impl AsRef<[u8]>) -> Result<String, UrlError> {
    let raw = raw.as_ref().trim_ascii();
    if raw.is_empty() {
        return Err(UrlError::Empty);
    }
    if raw.len() > MAX_URL_BYTES {
        return Err(UrlError::TooLong(raw.len()));
    }
    let s = visible_ascii(raw).map_err(UrlError::Invisible)?;
    let u = reqwest::Url::parse(s).map_err(|e| UrlError::Parse(e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(UrlError::Scheme(u.scheme().to_owned()));
    }
    let shape = if u.host_str().is_none_or(str::is_empty) {
        Some("no host")
    } else if !u.username().is_empty() || u.password().is_some() {
        Some("a user name or password")
    } else if u.query().is_some() {
        Some("a query")
    } else if u.fragment().is_some() {
        Some("a fragment")
    } else {
        None
    };
    match shape {
        Some(what) => Err(UrlError::Shape(what)),
        None => Ok(s.trim_end_matches('/').to_owned()),
    }
}

/// `raw` as text when every byte is visible ASCII (`!` to `~`).
fn visible_ascii(raw: &[u8]) -> Result<&str, Invisible> {
    if let Some((at, &b)) = raw.iter().enumerate().find(|(_, b)| !b.is_ascii_graphic()) {
        return Err(match b {
            b'\n' | b'\r' => Invisible::LineBreak(at),
            b' ' | b'\t' => Invisible::Whitespace(at),
            b if b.is_ascii_control() => Invisible::Control(at),
            _ => Invisible::NotAscii(at),
        });
    }
    // All bytes are ASCII, hence UTF-8.
    std::str::from_utf8(raw).map_err(|e| Invisible::NotAscii(e.valid_up_to()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_be_one_line_of_visible_ascii() {
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        let at_limit = "a".repeat(MAX_TOKEN_BYTES);
        let cases: &[(&[u8], Result<&str, TokenError>)] = &[
            (
                b"AbCdEf1234-s3cr3tS3cr3tS3cr3tS3cr3t",
                Ok("AbCdEf1234-s3cr3tS3cr3tS3cr3tS3cr3t"),
            ),
            (b"id-secret\n", Ok("id-secret")),
            (b"id-secret\r\n", Ok("id-secret")),
            (b"  id-secret \t\n\n", Ok("id-secret")),
            (at_limit.as_bytes(), Ok(&at_limit)),
            (b"", Err(TokenError::Empty)),
            (b" \n\t", Err(TokenError::Empty)),
            (
                long.as_bytes(),
                Err(TokenError::TooLong(MAX_TOKEN_BYTES + 1)),
            ),
            (
                b"id-se\ncret",
                Err(TokenError::Invisible(Invisible::LineBreak(5))),
            ),
            (
                b"id-se\rcret",
                Err(TokenError::Invisible(Invisible::LineBreak(5))),
            ),
            (
                b"id\0secret",
                Err(TokenError::Invisible(Invisible::Control(2))),
            ),
            (
                b"id-\x1b[31m",
                Err(TokenError::Invisible(Invisible::Control(3))),
            ),
            (
                b"id-\x7f",
                Err(TokenError::Invisible(Invisible::Control(3))),
            ),
            (
                b"Bearer id-secret",
                Err(TokenError::Invisible(Invisible::Whitespace(6))),
            ),
            (
                b"id\tsecret",
                Err(TokenError::Invisible(Invisible::Whitespace(2))),
            ),
            (
                "id-s\u{e9}cret".as_bytes(),
                Err(TokenError::Invisible(Invisible::NotAscii(4))),
            ),
            (
                b"id-\xff\xfe",
                Err(TokenError::Invisible(Invisible::NotAscii(3))),
            ),
        ];
        for (raw, want) in cases {
            let got = SessionToken::parse(raw);
            assert_eq!(
                got.as_ref().map(SessionToken::expose).map_err(|e| *e),
                *want,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn token_errors_name_the_problem_never_the_value() {
        let e = SessionToken::parse("first-half\nsecond-half").expect_err("refused");
        let message = e.to_string();
        assert_eq!(
            message,
            "contains a line break at byte 10 (a session token is one line of visible ASCII)"
        );
        assert!(!message.contains("half"));
        let t = SessionToken::parse("secret-value\n").expect("token");
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn base_urls_must_be_plain_http_urls() {
        let cases: &[(&str, Result<&str, UrlError>)] = &[
            ("https://coder.example.com", Ok("https://coder.example.com")),
            (
                "https://coder.example.com/\n",
                Ok("https://coder.example.com"),
            ),
            (
                "http://127.0.0.1:3000/team-a/",
                Ok("http://127.0.0.1:3000/team-a"),
            ),
            ("", Err(UrlError::Empty)),
            (
                "https://coder.example\n.com",
                Err(UrlError::Invisible(Invisible::LineBreak(21))),
            ),
            (
                "https://coder.example.com/a b",
                Err(UrlError::Invisible(Invisible::Whitespace(27))),
            ),
            (
                "coder.example.com",
                Err(UrlError::Parse("relative URL without a base".into())),
            ),
            (
                "ftp://coder.example.com",
                Err(UrlError::Scheme("ftp".into())),
            ),
            (
                "https://user:pw@coder.example.com",
                Err(UrlError::Shape("a user name or password")),
            ),
            (
                "https://coder.example.com/?x=1",
                Err(UrlError::Shape("a query")),
            ),
            (
                "https://coder.example.com/#top",
                Err(UrlError::Shape("a fragment")),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                base_url(raw).as_deref().map_err(Clone::clone),
                *want,
                "{raw:?}"
            );
        }
        let long = format!("https://coder.example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(base_url(&long), Err(UrlError::TooLong(long.len())));
    }
}
