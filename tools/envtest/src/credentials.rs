//! Secrets the plane makes for itself: the admin's bearer token (`tokens.csv`), the
//! ServiceAccount signing key, and random names.

use std::{fs, io::Read as _, path::Path, process::Command};

use crate::Error;

/// The admin user, in group `system:masters` (bypasses RBAC).
pub(crate) const ADMIN_USER: &str = "envtest-admin";

fn random_bytes(n: usize) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(Error::io("reading /dev/urandom"))?;
    Ok(buf)
}

/// 48 random hex characters.
fn random_token() -> Result<String, Error> {
    Ok(random_bytes(24)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `n` random characters from `[a-z0-9]` (DNS-label safe).
pub(crate) fn random_suffix(n: usize) -> Result<String, Error> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    Ok(random_bytes(n)?
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

fn run_checked(cmd: &mut Command) -> Result<(), Error> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(Error::io(format!("running {line}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: line,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// Writes `dir/sa.key` (ECDSA P-256, the ServiceAccount token signing key) and
/// `dir/tokens.csv` with a fresh admin token, which it returns.
pub(crate) fn write_plane_credentials(dir: &Path) -> Result<String, Error> {
    run_checked(
        Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(dir.join("sa.key")),
    )?;
    let admin_token = random_token()?;
    fs::write(
        dir.join("tokens.csv"),
        format!("{admin_token},{ADMIN_USER},{ADMIN_USER},system:masters\n"),
    )
    .map_err(Error::io("writing tokens.csv"))?;
    Ok(admin_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_is_dns_safe() {
        let s = random_suffix(5).unwrap();
        assert_eq!(s.len(), 5);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
