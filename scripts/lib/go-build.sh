# Sourced by the scripts that build Go commands into the cache ($WSO_CACHE/bin): each binary is
# rebuilt only when its key (what it is built from) changes, and replaced atomically.
#
#   go_build_module NAME MODULE_DIR PACKAGE OUT [LDFLAGS]
#       builds PACKAGE from one of our wrapper modules (tools/*); key: its go.mod and go.sum
#   go_install_pinned NAME PACKAGE@VERSION OUT
#       `go install PACKAGE@VERSION` (modules without replace directives); key: PACKAGE@VERSION
#
# Static (CGO_ENABLED=0), -trimpath, no toolchain switch (GOTOOLCHAIN=local). Logs to stderr.

go_build_log() { echo "go-build: $*" >&2; }

# go_fresh OUT KEY: true when OUT exists and was built from KEY.
go_fresh() { [[ -x $1 && -f $1.key && $(cat "$1.key") == "$2" ]]; }

go_build_module() {
  local name=$1 dir=$2 pkg=$3 out=$4 ldflags=${5:-} k
  # Content only (not paths), so every clone of the same commit shares the cached binaries.
  k=$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-16)
  if go_fresh "$out" "$k"; then return 0; fi
  go_build_log "building $name (the first build can take minutes)"
  local t0=$SECONDS
  mkdir -p "$(dirname "$out")"
  (cd "$dir" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod \
    go build -trimpath -o "$out.tmp" -ldflags "-s -w $ldflags" "$pkg")
  mv "$out.tmp" "$out"
  echo "$k" > "$out.key"
  go_build_log "built $name in $((SECONDS - t0))s"
}

go_install_pinned() {
  local name=$1 pkg_version=$2 out=$3 gobin
  if go_fresh "$out" "$pkg_version"; then return 0; fi
  go_build_log "installing $name ($pkg_version)"
  local t0=$SECONDS
  mkdir -p "$(dirname "$out")"
  gobin=$(mktemp -d)
  CGO_ENABLED=0 GOTOOLCHAIN=local GOBIN=$gobin GOFLAGS= \
    go install -trimpath -ldflags "-s -w" "$pkg_version"
  mv "$gobin/$(basename "${pkg_version%@*}")" "$out"
  rm -rf "$gobin"
  echo "$pkg_version" > "$out.key"
  go_build_log "installed $name in $((SECONDS - t0))s"
}
