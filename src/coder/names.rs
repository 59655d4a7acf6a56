//! Coder's own rules for the names the client puts into a URL path, checked before any call so
//! that no input (a request's `spec.workspace`, a username Coder sent) can change which route
//! is called: `..` once turned `GET /api/v2/users/{user}/workspace/{name}` into
//! `GET /api/v2/`.
//!
//! The rules are Coder's (`codersdk/name.go`): `NameValid` (workspace and user names: at most
//! 32 characters matching `^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$`), and where a user is named in a
//! path (`coderd/httpmw/userparam.go`, `ExtractUserContext`) also `me` and a user UUID.

use uuid::Uuid;

/// The longest name Coder accepts (`NameValid`: "must be <= 32 characters").
pub const MAX_NAME_CHARS: usize = 32;

/// Why a value is not a Coder name. Never holds the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string.
    #[error("is empty")]
    Empty,
    /// Longer than [`MAX_NAME_CHARS`].
    #[error("is {0} characters long (Coder allows at most {MAX_NAME_CHARS})")]
    TooLong(usize),
    /// Something other than letters and digits joined by single hyphens.
    #[error("is not letters and digits joined by single hyphens (Coder's name rule)")]
    Shape,
}

/// Checks a workspace name or username against Coder's `NameValid` (without its ban on `new`
/// and `create`, which only stops such names from being created: looking one up is harmless).
pub fn check_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    let chars = s.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(NameError::TooLong(chars));
    }
    // ^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$: hyphen-separated runs, none empty.
    if s.split('-')
        .all(|run| !run.is_empty() && run.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        Ok(())
    } else {
        Err(NameError::Shape)
    }
}

/// Checks a user as Coder accepts it in a `{user}` path segment: `me`, a user UUID
/// (hyphenated form), or a username ([`check_name`]).
pub fn check_user(s: &str) -> Result<(), NameError> {
    if s == "me" || (s.len() == 36 && Uuid::try_parse(s).is_ok()) {
        return Ok(());
    }
    check_name(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coder_names_are_letters_and_digits_joined_by_single_hyphens() {
        for ok in ["dev", "a", "Alice-2", "my-dev-box", &"a".repeat(32), "new"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", NameError::Empty),
            ("..", NameError::Shape),
            (".", NameError::Shape),
            ("a/b", NameError::Shape),
            ("a--b", NameError::Shape),
            ("-a", NameError::Shape),
            ("a-", NameError::Shape),
            ("a b", NameError::Shape),
            ("a_b", NameError::Shape),
            ("a%2e", NameError::Shape),
            ("é", NameError::Shape),
            (&"a".repeat(33), NameError::TooLong(33)),
        ] {
            assert_eq!(check_name(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn users_may_also_be_me_or_a_uuid() {
        for ok in [
            "me",
            "alice",
            "9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11",
            "9D0C2F5E-1B7A-4C1E-9A51-3F0F6B2D8E11",
        ] {
            assert_eq!(check_user(ok), Ok(()), "{ok}");
        }
        for bad in [
            "..",
            "x/",
            "{9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11}",
            "9d0c2f5e1b7a4c1e9a513f0f6b2d8e11a",
            "urn:uuid:9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11",
        ] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }
}
