#!/usr/bin/env bash
# Regenerate the lock files from the hand-edited requirement lists:
#   requirements.in     -> requirements.txt      (runtime: what run.sh, the Dockerfile install)
#   requirements-dev.in -> requirements-dev.txt  (runtime + tests: what test.sh and CI install)
# Every transitive package is pinned with its hashes, for Linux, macOS and Windows on
# Python 3.11+. A pin already in a lock file is kept while it still satisfies the .in files,
# so a refresh after adding one package changes only what that package needs.
#   bash scripts/lock.sh                 # after editing requirements*.in
#   bash scripts/lock.sh --upgrade       # move every package to its newest allowed release
#   bash scripts/lock.sh -P litellm      # (--upgrade-package) move one package
# Then `bash scripts/test.sh` installs the new lock (pip runs when a lock file changed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/_venv.sh
. "$ROOT/scripts/_venv.sh"

UV_VERSION=0.13.9  # also pinned in requirements-dev.in
ensure_venv
if ! "$VENV/bin/uv" --version 2>/dev/null | grep -qx "uv $UV_VERSION.*"; then
  echo "==> pip install uv==$UV_VERSION"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "uv==$UV_VERSION"
fi

compile() {  # compile IN OUT [uv options...]
  local in=$1 out=$2
  shift 2
  echo "==> $in -> $out"
  "$VENV/bin/uv" pip compile "$in" -o "$out" --universal --python-version 3.11 --generate-hashes \
    --no-header --no-strip-extras --quiet "$@"
}
compile requirements.in requirements.txt "$@"
# The dev lock takes the runtime lock's pins as constraints: tests run on what production runs.
compile requirements-dev.in requirements-dev.txt -c requirements.txt "$@"
