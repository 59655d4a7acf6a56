#!/usr/bin/env bash
# Creates (once) a Python virtualenv with the official clients examples/clients/ uses (`mcp`,
# `kubernetes`, pinned in examples/clients/requirements.txt) and prints its python on stdout.
#
# Cache: $WSO_CACHE/venv/clients-<hash of requirements.txt> (default
# $HOME/.cache/workspace-start-operator); a changed requirements file gets a new venv. Safe to run
# concurrently (flock). Needs python3 with venv and pip, and PyPI.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${WSO_CACHE:-$HOME/.cache/workspace-start-operator}
req=$here/examples/clients/requirements.txt
key=$(sha256sum "$req" | cut -c1-12)
venv=$cache/venv/clients-$key
mkdir -p "$cache/venv"

exec 9>"$cache/venv/.lock"
flock 9
if [[ ! -x $venv/bin/python || ! -f $venv/.complete ]]; then
  echo "client-venv: installing $(grep -v '^#' "$req" | xargs) into $venv" >&2
  t0=$SECONDS
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  touch "$venv/.complete"
  echo "client-venv: ready in $((SECONDS - t0))s" >&2
fi
echo "$venv/bin/python"
