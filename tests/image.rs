//! The image `make image` builds (`scripts/image.sh`), read as a container runtime reads it: the
//! OCI archive's index names the image the chart deploys by default; the manifest, config and
//! layer are found by digest and checked against it; the layer is unpacked into a root
//! filesystem and the config's entrypoint runs there, chrooted, as the config's (non-root) user.
//!
//! Needs the archive: `make image` (which `make test` runs first), or `WSO_IMAGE_ARCHIVE`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{ControlPlaneBins, repo};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const NON_ROOT: &str = "65532:65532";

fn archive() -> PathBuf {
    let path = std::env::var_os("WSO_IMAGE_ARCHIVE").map_or_else(
        || repo().join(format!("dist/workspace-start-operator-{VERSION}.oci.tar")),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: build the image with `make image`",
        path.display()
    );
    path
}

/// Runs a command and returns its stdout; panics with stderr on failure.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// A blob of the layout, after checking its size and sha256 against the descriptor.
fn blob(layout: &Path, descriptor: &Value) -> PathBuf {
    let digest = descriptor["digest"].as_str().expect("digest");
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    let sum = run(Command::new("sha256sum").arg(&path));
    assert_eq!(sum.split_whitespace().next(), Some(hex), "{digest} corrupt");
    let size = std::fs::metadata(&path).expect("blob").len();
    assert_eq!(Some(size), descriptor["size"].as_u64(), "{digest} size");
    path
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

/// The image reference the chart's Deployment uses with default values.
fn chart_default_image() -> String {
    let out = run(Command::new(ControlPlaneBins::helm())
        .args(["template", "workspace-start-operator"])
        .arg(repo().join("charts/workspace-start-operator"))
        .args([
            "--show-only=templates/deployment.yaml",
            "--set=coder.url=https://coder.example.com",
            "--set=coder.existingSecret=s",
        ]));
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .expect("image in the Deployment");
    line.trim_matches('"').to_owned()
}

/// Runs the entrypoint with `args` in `rootfs` as the config's user and environment.
fn run_entrypoint(rootfs: &Path, config: &Value, args: &[&str]) -> String {
    let cfg = &config["config"];
    let entrypoint: Vec<&str> = cfg["Entrypoint"]
        .as_array()
        .expect("Entrypoint")
        .iter()
        .map(|v| v.as_str().expect("string"))
        .collect();
    let user = cfg["User"].as_str().expect("User");
    // Found on the test's PATH: the child's environment is the image's alone.
    let chroot = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .expect("chroot (coreutils) on PATH");
    let mut cmd = Command::new(chroot);
    cmd.arg(format!("--userspec={user}"))
        .arg(rootfs)
        .args(&entrypoint)
        .args(args)
        .env_clear();
    for kv in cfg["Env"].as_array().into_iter().flatten() {
        let (k, v) = kv.as_str().expect("env").split_once('=').expect("K=V");
        cmd.env(k, v);
    }
    run(&mut cmd)
}

#[test]
fn image_runs_its_entrypoint_as_non_root_with_ca_certificates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = tmp.path().join("layout");
    std::fs::create_dir(&layout).expect("mkdir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive())
        .arg("-C")
        .arg(&layout));

    // The layout and the image's name: what `helm install` pulls by default.
    assert_eq!(
        json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json(&layout.join("index.json"));
    let [entry] = index["manifests"].as_array().expect("manifests").as_slice() else {
        panic!("one image in the index: {index}")
    };
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        chart_default_image().as_str()
    );
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        VERSION
    );

    // Config: non-root user, entrypoint, labels naming this version and commit.
    let manifest = json(&blob(&layout, entry));
    let config = json(&blob(&layout, &manifest["config"]));
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["User"], NON_ROOT);
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .expect("revision label");
    if let Ok(head) = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(["rev-parse", "HEAD"])
        .output()
        && head.status.success()
    {
        assert_eq!(
            revision,
            String::from_utf8_lossy(&head.stdout).trim(),
            "the image is from another commit: run `make image`"
        );
    }
    assert!(labels["org.opencontainers.image.source"].is_string());
    assert!(labels["org.opencontainers.image.created"].is_string());

    // Unpack the layers in order, as a runtime does.
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).expect("mkdir");
    for layer in manifest["layers"].as_array().expect("layers") {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let path = blob(&layout, layer);
        run(Command::new("tar")
            .args(["-xzf"])
            .arg(&path)
            .arg("-C")
            .arg(&rootfs));
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt"))
        .expect("CA bundle");
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 100);
    let tmp_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(rootfs.join("tmp"))
            .expect("tmp")
            .permissions(),
    );
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    assert!(!rootfs.join("bin/sh").exists(), "no shell in the image");

    // The entrypoint runs from the image alone (static binary), as 65532.
    assert_eq!(
        run_entrypoint(&rootfs, &config, &["--version"]).trim(),
        format!("workspace-start-operator {VERSION}")
    );
    let crd = std::fs::read_to_string(repo().join("crds/workspacestartrequests.coder.com.yaml"))
        .expect("crd");
    assert_eq!(run_entrypoint(&rootfs, &config, &["crd"]), crd);
}
