//! Where the control-plane binaries are: [`locate_bin_dir`].

use std::path::{Path, PathBuf};

use crate::Error;

/// The binaries every plane needs.
const REQUIRED: [&str; 2] = ["kube-apiserver", "etcd"];

/// The binary a plane starts on demand ([`crate::ControlPlane::ensure_controller_manager`]).
pub(crate) const CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// Returns the directory holding `kube-apiserver`, `etcd` (and, from the build script,
/// `kube-controller-manager`, `kubectl` and `helm`).
///
/// Looked up in order: `$KUBEBUILDER_ASSETS`, `$WSO_CACHE/bin`,
/// `$HOME/.cache/workspace-start-operator/bin`. The first variable that is set decides; the
/// directory must contain `kube-apiserver` and `etcd`, otherwise [`Error::MissingBinaries`]
/// names `scripts/control-plane-bins.sh`.
pub fn locate_bin_dir() -> Result<PathBuf, Error> {
    let dir = if let Some(d) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
        PathBuf::from(d)
    } else if let Some(c) = std::env::var_os("WSO_CACHE").filter(|v| !v.is_empty()) {
        PathBuf::from(c).join("bin")
    } else {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        home.join(".cache/workspace-start-operator/bin")
    };
    require(&dir, &REQUIRED)?;
    Ok(dir)
}

/// Errors with [`Error::MissingBinaries`] unless every one of `names` is a file in `dir`.
pub(crate) fn require(dir: &Path, names: &[&str]) -> Result<(), Error> {
    let missing: Vec<String> = names
        .iter()
        .filter(|b| !dir.join(b).is_file())
        .map(|b| (*b).to_owned())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingBinaries {
            dir: dir.to_owned(),
            missing,
        })
    }
}
