#!/usr/bin/env bash
# Install what the tests need and run the whole test suite:
#   bash scripts/test.sh                 # everything (python -m pytest tests)
#   bash scripts/test.sh -k admin -x     # extra arguments go to pytest
#   bash scripts/test.sh tests/tasks     # a path given replaces the default "tests"
# The tests use PostgreSQL and Redis given by DATABASE_URL / REDIS_URL or answering on their
# standard local ports; otherwise SQLite and a Redis they start themselves (tests/infra.py).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/_venv.sh
. "$ROOT/scripts/_venv.sh"

# >>> SYSTEM PACKAGES HOOK >>>
# Debian packages some tests need, as "command:package" pairs: installed only when the
# command is missing and only as root with apt-get (elsewhere the tests that need them skip).
#   bwrap     - the code_execution tool's sandbox (bubblewrap)
#   tesseract - OCR in the file_processing tool
#   chromium  - a browser's EventSource reading the SSE stream, and the API docs rendered offline
#               (tests/mageagent/test_api_docs_browser.py), both headless
#   npm       - Node clients the tests run (tests/package.json), with Node itself
SYSTEM_PACKAGES=${MAGEAGENT_TEST_SYSTEM_PACKAGES-"bwrap:bubblewrap tesseract:tesseract-ocr chromium:chromium npm:npm"}
# <<< SYSTEM PACKAGES HOOK <<<

missing=()
for pair in $SYSTEM_PACKAGES; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "==> not installing ${missing[*]} (needs root and apt-get): the tests that need them will skip"
  fi
fi

ensure_venv
# requirements-dev.txt (the dev lock) holds every package of requirements.txt at the same
# pins: its stamp is written too, so a later scripts/run.sh installs nothing.
install_requirements requirements-dev.txt requirements.txt
# The Python client and CLI (clients/python), editable: its end-to-end tests run the installed
# `mageagent` command. Its dependencies are in the lock; an editable install cannot carry hashes,
# so it is its own step.
if ! "$VENV/bin/python" -c "import mageagent_client" 2>/dev/null; then
  echo "==> pip install -e clients/python"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e "$ROOT/clients/python"
fi

# npm packages the tests run under Node (tests/package.json, locked): again only when the
# lock changed since the last install.
if command -v npm >/dev/null 2>&1; then
  if [ ! tests/node_modules/.package-lock.json -nt tests/package-lock.json ]; then
    echo "==> npm ci (tests/package.json)"
    (cd tests && npm ci --no-audit --no-fund --loglevel=error)
  fi
else
  echo "==> npm not found: the tests that run Node clients will skip"
fi

# Run "tests" unless the arguments name what to run.
targets=(tests)
for arg in "$@"; do
  case $arg in
    -*) ;;
    *) if [ -e "${arg%%::*}" ]; then targets=(); break; fi ;;
  esac
done

echo "==> python -m pytest ${targets[*]} $*"
set +e
"$VENV/bin/python" -m pytest "${targets[@]}" "$@"
code=$?
set -e
if [ "$code" = 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$code"
