# shellcheck shell=bash
# Sourced by scripts/run.sh, scripts/test.sh and scripts/lock.sh: the project's virtualenv,
# created and filled once. pip runs only when a requirements file changed since the last
# install (a stamp in the venv holds the files' hash), so a second start costs nothing.
# requirements.txt and requirements-dev.txt are lock files (scripts/lock.sh): every
# package pinned with its hashes, which pip checks on every download.
#   VENV (default ./.venv)   PYTHON (default: the first python3.11+ on PATH)

VENV=${VENV:-${MAGEAGENT_VENV:-$ROOT/.venv}}

find_python() {
  local candidate
  for candidate in ${PYTHON:-} python3.11 python3.12 python3.13 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "error: MageAgent needs Python 3.11 or newer on PATH (or PYTHON=/path/to/python3.11)" >&2
  return 1
}

ensure_venv() {
  if [ -x "$VENV/bin/python" ]; then
    return 0
  fi
  local python
  python=$(find_python)
  echo "==> creating the virtualenv $VENV ($("$python" --version))"
  if ! "$python" -m venv "$VENV"; then
    # Debian's python3 ships venv's ensurepip separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      rm -rf "$VENV"
      apt-get install -y "python3-venv" || { apt-get update && apt-get install -y python3-venv; }
      "$python" -m venv "$VENV"
    else
      echo "error: '$python -m venv' failed; install your distribution's python3-venv package" >&2
      return 1
    fi
  fi
}

_stamp() { echo "$VENV/.mageagent-$(basename "$1").sha256"; }
_digest() { cat "$@" | sha256sum | cut -d' ' -f1; }

# install_requirements FILE [INCLUDED...]: pip install -r FILE unless FILE (and the files
# it includes) are unchanged since the last install; INCLUDED files are stamped as well.
install_requirements() {
  local file=$1 want
  want=$(_digest "$@")
  if [ -f "$(_stamp "$file")" ] && [ "$(cat "$(_stamp "$file")")" = "$want" ]; then
    echo "==> python packages up to date ($file)"
    return 0
  fi
  echo "==> pip install -r $file"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --require-hashes -r "$ROOT/$file"
  echo "$want" >"$(_stamp "$file")"
  shift
  local included
  for included in "$@"; do
    _digest "$included" >"$(_stamp "$included")"
  done
}
