#!/usr/bin/env bash
# Runs the standard plexus-bench scenarios against a fresh plexus server per run, the server
# pinned to CPU 0 and the load generator to CPU 1, and prints every JSON result line followed by
# a median summary per scenario.
#
#   bench/run.sh                 # every standard scenario, RUNS (default 3) times each
#   bench/run.sh fanout          # only the scenarios named fanout or fanout-*
#   RUNS=1 bench/run.sh publish  # one run
#   SKIP_BUILD=1 PLEXUS_BIN=/tmp/plexus-before bench/run.sh   # binaries built beforehand
#   EXTRA_CONFIG="$(cat extra.toml)" bench/run.sh publish     # TOML appended to the server's
#                                                             # config, after its one [[apps]]
#
# Result lines go to stdout (and to $OUT_DIR/results.jsonl when OUT_DIR is set); progress and
# server logs go to stderr.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
ONLY="${1:-all}"

# name | plexus-bench arguments
SCENARIOS=(
  "broadcast|broadcast --subscribers 2000 --events 200"
  "fanout-1k-50|fanout --subscribers 1000 --channels 1 --rate 50 --duration 10"
  "fanout-1k-100|fanout --subscribers 1000 --channels 1 --rate 100 --duration 10"
  "fanout-5k-50ch|fanout --subscribers 5000 --channels 50 --rate 200 --duration 10"
  "connections|connections --connections 19000 --rate 2000 --hold-secs 10 --sources 8"
  "client-events|client-events --pairs 500 --rate 2000 --duration 10"
  "publish|publish --requests 20000 --concurrency 32"
  # permessage-deflate (bench/run.sh deflate): ~1 KB events shaped like real ones, every
  # subscriber plain, then every subscriber compressed; idle connections plain, then compressed.
  "deflate-broadcast-plain|broadcast --subscribers 2000 --events 200 --payload-bytes 950 --realistic-payload"
  "deflate-broadcast|broadcast --subscribers 2000 --events 200 --payload-bytes 950 --realistic-payload --deflate"
  "deflate-connections-plain|connections --connections 19000 --rate 2000 --hold-secs 10 --sources 8"
  "deflate-connections|connections --connections 19000 --rate 2000 --hold-secs 10 --sources 8 --deflate"
)

selected=()
for entry in "${SCENARIOS[@]}"; do
  name="${entry%%|*}"
  if [[ "$ONLY" == all || "$name" == "$ONLY" || "$name" == "$ONLY"-* ]]; then
    selected+=("$entry")
  fi
done
if [[ ${#selected[@]} -eq 0 ]]; then
  echo "unknown scenario '$ONLY'; known: $(printf '%s ' "${SCENARIOS[@]%%|*}")" >&2
  exit 2
fi

# SKIP_BUILD=1: use the binaries already built (e.g. by the test command, whose feature set a
# `cargo build -p` here would differ from and so rebuild).
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -p plexus-server -p plexus-bench >&2
fi
SERVER="${PLEXUS_BIN:-target/release/plexus}"   # PLEXUS_BIN: compare another build
BENCH=target/release/plexus-bench

WORK="$(mktemp -d)"
SERVER_PID=""
stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 150); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "server $SERVER_PID ignored SIGTERM for 15 s; killing it" >&2
      kill -KILL "$SERVER_PID"
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
cleanup() {
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT

APP_ID=bench
APP_KEY=bench-key
APP_SECRET=bench-secret
CONFIG="$WORK/plexus.toml"
cat >"$CONFIG" <<EOF
[server]
host = "127.0.0.1"
port = 0

[metrics]
port = 0

[[apps]]
id = "$APP_ID"
key = "$APP_KEY"
secret = "$APP_SECRET"
enable_client_messages = true
max_client_events_per_second = 1000
EOF
printf '%s\n' "${EXTRA_CONFIG:-}" >>"$CONFIG"

# Starts a fresh server pinned to CPU 0; sets SERVER_PID and PORT.
start_server() {
  : >"$WORK/server.out"
  taskset -c 0 "$SERVER" serve --config "$CONFIG" >"$WORK/server.out" 2>>"$WORK/server.err" &
  SERVER_PID=$!
  PORT=""
  for _ in $(seq 100); do
    PORT="$(sed -n 's/^plexus listening on .*:\([0-9][0-9]*\)$/\1/p' "$WORK/server.out")"
    [[ -n "$PORT" ]] && return 0
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "server exited before listening:" >&2
      cat "$WORK/server.err" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "server did not print its listening line within 10 s" >&2
  exit 1
}

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
for entry in "${selected[@]}"; do
  name="${entry%%|*}"
  read -r -a args <<<"${entry#*|}"
  for run in $(seq "$RUNS"); do
    start_server
    echo "== $name run $run/$RUNS (server pid $SERVER_PID, port $PORT)" >&2
    line="$(taskset -c 1 "$BENCH" "${args[@]}" \
      --port "$PORT" --app-id "$APP_ID" --key "$APP_KEY" --secret "$APP_SECRET" \
      --server-pid "$SERVER_PID" --timeout-secs 90)" || echo "plexus-bench exited with $?" >&2
    stop_server
    if [[ -n "$line" ]]; then
      echo "$line"
      printf '{"name":"%s","result":%s}\n' "$name" "$line" >>"$RESULTS"
    fi
  done
done
if [[ -n "${OUT_DIR:-}" ]]; then
  mkdir -p "$OUT_DIR"
  cp "$RESULTS" "$OUT_DIR/results.jsonl"
fi
if [[ -s "$WORK/server.err" ]] && grep -qE 'WARN|ERROR' "$WORK/server.err"; then
  echo "server warnings/errors:" >&2
  grep -E 'WARN|ERROR' "$WORK/server.err" | tail -20 >&2
fi

python3 bench/summarize.py "$RESULTS"
