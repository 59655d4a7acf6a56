#!/usr/bin/env bash
# `make image`: builds the operator's OCI image without a Docker daemon.
#
#   1. the release binary, stripped: statically linked (x86_64-unknown-linux-musl) when that Rust
#      target is installed; otherwise for glibc, with its runtime (libc6, libgcc-s1's /lib and
#      /lib64) taken from Debian's packages (IMAGE_TARGET=x86_64-unknown-linux-gnu forces it);
#   2. one layer, written reproducibly (sorted, owner root, mtime = the commit's time):
#      /usr/local/bin/workspace-start-operator, /etc/ssl/certs/ca-certificates.crt built from
#      Debian's ca-certificates package, /etc/passwd and /etc/group from image/rootfs/ (user
#      nonroot, 65532), /home/nonroot, /tmp (1777), the glibc runtime if needed; no shell;
#   3. umoci (built from the Go module proxy through tools/image-tools) writes an OCI image
#      layout with that layer and the config: user 65532:65532, entrypoint the binary, cmd `run`,
#      labels org.opencontainers.image.{title,description,version,revision,source,licenses,created};
#   4. dist/workspace-start-operator-<version>.oci.tar: the layout as an OCI archive, its image
#      named ghcr.io/coder-operators/workspace-start-operator:<version> (what the chart deploys
#      by default) through the index annotations io.containerd.image.name and
#      org.opencontainers.image.ref.name (<version>).
#
# The same commit gives the same image digest. Cached in $WSO_CACHE (default
# $HOME/.cache/workspace-start-operator): umoci and the Debian packages; the binary in cargo's
# target dir (the glibc build shares target/release with `make bench`). Prints the archive's path.
#
#   IMAGE_REPOSITORY  repository of the image name (default ghcr.io/coder-operators/workspace-start-operator)
#   IMAGE_TAG         tag (default: the crate version, which is the chart's appVersion)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${WSO_CACHE:-$HOME/.cache/workspace-start-operator}
musl=x86_64-unknown-linux-musl
dist=$repo/dist
log() { echo "image: $*" >&2; }
die() { log "$*"; exit 1; }

# shellcheck source=lib/go-build.sh
. "$repo/scripts/lib/go-build.sh"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)
app_version=$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' "$repo/charts/workspace-start-operator/Chart.yaml")
[[ $version == "$app_version" ]] || die "Cargo.toml version $version differs from the chart's appVersion $app_version"
repository=${IMAGE_REPOSITORY:-ghcr.io/coder-operators/workspace-start-operator}
tag=${IMAGE_TAG:-$version}
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

# The Rust target of the binary: musl (static) when its standard library is installed.
pick_target() {
  if [[ -n ${IMAGE_TARGET:-} ]]; then echo "$IMAGE_TARGET"; return; fi
  local dir
  dir=$(rustc --print target-libdir --target "$musl" 2>/dev/null || true)
  if compgen -G "$dir/libstd-*.rlib" >/dev/null; then echo "$musl"; else echo x86_64-unknown-linux-gnu; fi
}

# release_binary TARGET: builds it and prints its path.
release_binary() {
  local target=$1 dir=${CARGO_TARGET_DIR:-$repo/target}
  log "building the release binary for $target"
  local args=(build --release --locked --bin workspace-start-operator --manifest-path "$repo/Cargo.toml")
  if [[ $target == "$musl" ]]; then
    # ring compiles a little C; without musl-gcc the host gcc does (it needs no libc headers).
    local cc=gcc
    command -v musl-gcc >/dev/null && cc=musl-gcc
    CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-$cc} cargo "${args[@]}" --target "$target" >&2
    echo "$dir/$target/release/workspace-start-operator"
  else
    cargo "${args[@]}" >&2
    echo "$dir/release/workspace-start-operator"
  fi
}

# debian_package NAME: the path of NAME's .deb (for this machine's architecture), fetched once.
debian_package() {
  local name=$1 dir=$cache/image deb
  mkdir -p "$dir"
  deb=$(ls "$dir/${name}"_*.deb 2>/dev/null | tail -1 || true)
  if [[ -z $deb ]]; then
    log "fetching Debian's $name package"
    (cd "$dir" && { apt-get download "$name" >&2 2>/dev/null ||
      { apt-get update -qq >&2 && apt-get download "$name" >&2; }; }) ||
      die "apt-get download $name failed (apt-get update needs root)"
    deb=$(ls "$dir/${name}"_*.deb | tail -1)
  fi
  echo "$deb"
}

# rootfs_layer TARGET BINARY OUT.tar: the single layer, reproducible.
rootfs_layer() {
  local target=$1 bin=$2 out=$3 tmp pkg
  tmp=$(mktemp -d)
  dpkg-deb -x "$(debian_package ca-certificates)" "$tmp/certs"
  mkdir -p "$tmp/runtime"
  if [[ $target != "$musl" ]]; then
    for pkg in libc6 libgcc-s1; do dpkg-deb -x "$(debian_package "$pkg")" "$tmp/runtime"; done
  fi
  cp "$bin" "$tmp/workspace-start-operator"
  strip --strip-all "$tmp/workspace-start-operator"
  local interpreter=false
  readelf -l "$tmp/workspace-start-operator" | grep -q "program interpreter" && interpreter=true
  if [[ $target == "$musl" ]] && $interpreter; then die "$bin is not statically linked"; fi
  python3 - "$tmp" "$repo/image/rootfs" "$epoch" "$out" <<'PY'
import glob, io, os, stat, sys, tarfile
tmp, rootfs, epoch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
# update-ca-certificates' bundle: every certificate the package ships, in path order.
certs = sorted(glob.glob(os.path.join(tmp, "certs/usr/share/ca-certificates/mozilla/*.crt")))
if len(certs) < 100:
    sys.exit(f"only {len(certs)} certificates in the ca-certificates package")
bundle = b"".join(open(c, "rb").read().rstrip(b"\n") + b"\n" for c in certs)
def data(path):
    return open(path, "rb").read()
entries = {  # path: (mode, uid, content: bytes, None for a directory, or ("link", target))
    "etc": (0o755, 0, None),
    "etc/group": (0o644, 0, data(os.path.join(rootfs, "etc/group"))),
    "etc/passwd": (0o644, 0, data(os.path.join(rootfs, "etc/passwd"))),
    "etc/ssl": (0o755, 0, None),
    "etc/ssl/certs": (0o755, 0, None),
    "etc/ssl/certs/ca-certificates.crt": (0o644, 0, bundle),
    "home": (0o755, 0, None),
    "home/nonroot": (0o700, 65532, None),
    "tmp": (0o1777, 0, None),
    "usr": (0o755, 0, None),
    "usr/local": (0o755, 0, None),
    "usr/local/bin": (0o755, 0, None),
    "usr/local/bin/workspace-start-operator": (0o755, 0, data(os.path.join(tmp, "workspace-start-operator"))),
    "usr/share": (0o755, 0, None),
    "usr/share/doc": (0o755, 0, None),
    "usr/share/doc/ca-certificates": (0o755, 0, None),
    "usr/share/doc/ca-certificates/copyright": (0o644, 0, data(os.path.join(tmp, "certs/usr/share/doc/ca-certificates/copyright"))),
}
# The glibc runtime (empty for a static binary): the packages' /lib and /lib64 trees, and their
# copyright files.
runtime = os.path.join(tmp, "runtime")
for top, dirs, files in os.walk(runtime):
    rel_top = os.path.relpath(top, runtime)
    for name in dirs + files:
        rel = os.path.normpath(os.path.join(rel_top, name))
        keep = rel.split("/")[0] in ("lib", "lib64") or (rel.startswith("usr/share/doc/") and rel.endswith("/copyright"))
        if not keep:
            continue
        full = os.path.join(top, name)
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            entries[rel] = (0o777, 0, ("link", os.readlink(full)))
        elif stat.S_ISDIR(st.st_mode):
            entries[rel] = (0o755, 0, None)
        else:
            entries[rel] = (stat.S_IMODE(st.st_mode), 0, data(full))
        parent = os.path.dirname(rel)
        while parent and parent not in entries:
            entries[parent] = (0o755, 0, None)
            parent = os.path.dirname(parent)
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
    for path in sorted(entries):
        mode, uid, content = entries[path]
        ti = tarfile.TarInfo(path)
        ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, uid, epoch
        ti.uname = ti.gname = "nonroot" if uid else "root"
        if content is None:
            ti.type = tarfile.DIRTYPE
            t.addfile(ti)
        elif isinstance(content, tuple):
            ti.type, ti.linkname = tarfile.SYMTYPE, content[1]
            t.addfile(ti)
        else:
            ti.size = len(content)
            t.addfile(ti, io.BytesIO(content))
PY
  rm -rf "$tmp"
}

# oci_image LAYER.tar LAYOUT: the OCI image layout, tagged $tag.
oci_image() {
  local layer=$1 layout=$2 umoci=$cache/bin/umoci
  local img="$layout:$tag"
  rm -rf "$layout"
  "$umoci" init --layout "$layout"
  "$umoci" new --image "$img"
  "$umoci" raw add-layer --image "$img" --history.created "$created" \
    --history.created_by "scripts/image.sh: the operator binary, CA certificates, passwd" "$layer"
  "$umoci" config --image "$img" --created "$created" --history.created "$created" \
    --history.created_by "scripts/image.sh: user, entrypoint, labels" \
    --os linux --architecture amd64 \
    --config.user 65532:65532 \
    --config.entrypoint /usr/local/bin/workspace-start-operator --config.cmd run \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.workingdir /home/nonroot \
    --config.label "org.opencontainers.image.title=workspace-start-operator" \
    --config.label "org.opencontainers.image.description=Kubernetes operator that starts Coder workspaces on request" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.source=https://github.com/coder-operators/workspace-start-operator" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --config.label "org.opencontainers.image.created=$created" \
    --manifest.annotation "org.opencontainers.image.version=$version" \
    --manifest.annotation "org.opencontainers.image.revision=$revision" \
    --manifest.annotation "org.opencontainers.image.created=$created"
  "$umoci" gc --layout "$layout"
  # Name the image in the index so `ctr images import` (kind, k3d) and skopeo know it.
  python3 - "$layout/index.json" "$repository:$tag" <<'PY'
import json, sys
path, name = sys.argv[1], sys.argv[2]
index = json.load(open(path))
(m,) = index["manifests"]
m.setdefault("annotations", {})["io.containerd.image.name"] = name
json.dump(index, open(path, "w"), separators=(",", ":"), sort_keys=True)
PY
}

main() {
  local t0=$SECONDS target bin archive
  go_build_module umoci "$repo/tools/image-tools" github.com/opencontainers/umoci/cmd/umoci "$cache/bin/umoci"
  target=$(pick_target)
  bin=$(release_binary "$target")
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  rootfs_layer "$target" "$bin" "$work/layer.tar"
  mkdir -p "$dist"
  oci_image "$work/layer.tar" "$dist/image"
  archive=$dist/workspace-start-operator-$tag.oci.tar
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -cf "$archive.tmp" -C "$dist/image" .
  mv "$archive.tmp" "$archive"
  log "$repository:$tag ($target, $(du -h "$archive" | cut -f1)), revision $revision, in $((SECONDS - t0))s"
  echo "$archive"
}

main "$@"
