#!/usr/bin/env bash
# Runs `plexus-bench hostile` against a fresh plexus server it configures: honest load alone
# (baseline), then the same honest load with 100 attackers, then a settle period; prints the one
# JSON result line (with what the server's log and metrics showed added) and a readable summary.
# Server pinned to CPU 0, load generator to CPU 1, as bench/run.sh does.
#
#   bench/hostile.sh                        # defaults: 5,000 subscribers, 20 s baseline, 60 s attack
#   bench/hostile.sh --duration 30          # any plexus-bench hostile flag is passed through
#   bench/hostile.sh --attacks tcp_idle,api_unsigned
#   PLEXUS_BIN=path/to/plexus bench/hostile.sh   # another server build
#   OUT_DIR=dir bench/hostile.sh            # also keep results.jsonl, config and server log there
#   QUIET_LOAD=1.5 bench/hostile.sh         # first wait (at most QUIET_WAIT_SECS, default 900)
#                                           # for the 1-minute load average to drop below 1.5
#
# Apps in the config: A (honest subscribers and publisher; webhooks channel_occupied/vacated to
# the bench's /a), B (honest presence users; member_added/removed webhooks to /b), and two
# tenant apps whose owners attack the others: C (client events on) and D (HS256 tokens on).
# The attackers know A's id and key, never A's or B's secret.
#
# The server logs at RUST_LOG (default: info, plus debug for the WebSocket and session modules,
# whose refusals echo what a client sent) so that forged log lines can be counted.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -p plexus-server -p plexus-bench >&2
fi
SERVER="${PLEXUS_BIN:-target/release/plexus}"
BENCH=target/release/plexus-bench

# On a shared machine other work on either core distorts both phases; optionally wait for quiet.
if [[ -n "${QUIET_LOAD:-}" ]]; then
  waited=0
  until python3 -c "import sys; sys.exit(0 if float(open('/proc/loadavg').read().split()[0]) < $QUIET_LOAD else 1)"; do
    if (( waited >= ${QUIET_WAIT_SECS:-900} )); then
      echo "load average still $(cut -d' ' -f1 /proc/loadavg) after ${waited} s; running anyway" >&2
      break
    fi
    sleep 10
    waited=$((waited + 10))
  done
fi

WORK="$(mktemp -d)"
SERVER_PID=""
stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 300); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "server $SERVER_PID ignored SIGTERM for 30 s; killing it" >&2
      kill -KILL "$SERVER_PID"
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
cleanup() {
  stop_server
  if [[ -n "${OUT_DIR:-}" ]]; then
    mkdir -p "$OUT_DIR"
    cp "$WORK"/plexus.toml "$WORK"/server.err "$OUT_DIR"/ 2>/dev/null || true
    [[ -s "$WORK/results.jsonl" ]] && cp "$WORK/results.jsonl" "$OUT_DIR/results.jsonl"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A free port for the bench's webhook endpoint (the config must name it before the server starts).
HOOK_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

A_ID=hostile-a A_KEY=hostile-a-key A_SECRET=hostile-a-secret
B="hostile-b:hostile-b-key:hostile-b-secret"
C="tenant-c:tenant-c-key:tenant-c-secret"
D="tenant-d:tenant-d-key:tenant-d-secret"

CONFIG="$WORK/plexus.toml"
cat >"$CONFIG" <<EOF
[server]
host = "127.0.0.1"
port = 0

# A deployment facing the internet turns these on. Honest clients come from 127.0.0.1,
# attackers from 127.0.0.2 and up, so per-IP limits only bite the attackers; the per-app API
# limit is shared by everyone who names the app.
[server.rate_limits]
api_per_app_per_sec = 1000
api_per_app_burst = 2000
api_per_ip_per_sec = 500
api_per_ip_burst = 1000
ws_connections_per_ip_per_sec = 500
ws_connections_per_ip_burst = 6000

[metrics]
port = 0

[webhooks]
data_dir = "$WORK/webhooks"

[[apps]]
id = "$A_ID"
key = "$A_KEY"
secret = "$A_SECRET"

[[apps.webhooks]]
url = "http://127.0.0.1:$HOOK_PORT/a"
events = ["channel_occupied", "channel_vacated"]

[[apps]]
id = "${B%%:*}"
key = "$(cut -d: -f2 <<<"$B")"
secret = "$(cut -d: -f3 <<<"$B")"

[[apps.webhooks]]
url = "http://127.0.0.1:$HOOK_PORT/b"
events = ["member_added", "member_removed"]

[[apps]]
id = "${C%%:*}"
key = "$(cut -d: -f2 <<<"$C")"
secret = "$(cut -d: -f3 <<<"$C")"
enable_client_messages = true

[[apps]]
id = "${D%%:*}"
key = "$(cut -d: -f2 <<<"$D")"
secret = "$(cut -d: -f3 <<<"$D")"
enable_tokens = true
EOF

: >"$WORK/server.out"
: >"$WORK/server.err"
# No panic backtraces (RUST_BACKTRACE may be set in a developer's shell): a production server
# runs without them, and resolving one per panic would cost the server more than the panic.
RUST_BACKTRACE="${SERVER_RUST_BACKTRACE:-0}" \
RUST_LOG="${RUST_LOG:-info,plexus_server::ws=debug,plexus_core::session=debug}" \
  taskset -c 0 "$SERVER" serve --config "$CONFIG" >"$WORK/server.out" 2>>"$WORK/server.err" &
SERVER_PID=$!
PORT="" METRICS=""
for _ in $(seq 100); do
  PORT="$(sed -n 's/^plexus listening on .*:\([0-9][0-9]*\)$/\1/p' "$WORK/server.out")"
  METRICS="$(sed -n 's/^plexus metrics on \(.*\)$/\1/p' "$WORK/server.out")"
  [[ -n "$PORT" ]] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "server exited before listening:" >&2
    cat "$WORK/server.err" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$PORT" ]]; then
  echo "server did not print its listening line within 10 s" >&2
  exit 1
fi
echo "== hostile (server pid $SERVER_PID, port $PORT, metrics ${METRICS:-none}, webhooks 127.0.0.1:$HOOK_PORT)" >&2

line="$(taskset -c 1 "$BENCH" hostile \
  --port "$PORT" --app-id "$A_ID" --key "$A_KEY" --secret "$A_SECRET" \
  --server-pid "$SERVER_PID" --webhook-port "$HOOK_PORT" \
  --app-b "$B" --tenant "$C" --token-tenant "$D" "$@")" || echo "plexus-bench exited with $?" >&2

# What only the server's side shows: its counters, and its log (panics, forged lines).
METRICS_TEXT="$WORK/metrics.txt"
if [[ -n "$METRICS" ]]; then
  python3 - "$METRICS" >"$METRICS_TEXT" <<'PY' || true
import sys, urllib.request
print(urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode())
PY
fi
alive=true
kill -0 "$SERVER_PID" 2>/dev/null || alive=false
stop_server

if [[ -z "$line" ]]; then
  echo "no result line" >&2
  exit 1
fi
line="$(python3 - "$line" "$WORK/server.err" "$METRICS_TEXT" "$alive" <<'PY'
import json, re, sys
result = json.loads(sys.argv[1])
ansi = re.compile(r"\x1b\[[0-9;]*m")
log = [ansi.sub("", l) for l in open(sys.argv[2], errors="replace").read().splitlines()]
marker = "PLEXUS_BENCH_FORGED_LOG_LINE"
result["server_log"] = {
    "alive_at_end": sys.argv[4] == "true",
    "lines": len(log),
    "panics": sum("panicked at" in l for l in log),
    "panic_sites": sorted({m.group(1) for l in log for m in [re.search(r"panicked at ([^:]+:\d+)", l)] if m}),
    "forged_lines": sum(l.startswith(marker) for l in log),
    "warn": sum(" WARN " in l for l in log),
    "error": sum(" ERROR " in l for l in log),
    "too_many_open_files": sum("Too many open files" in l for l in log),
}
wanted = ("plexus_webhook_events_dropped_total", "plexus_rate_limited_total",
          "plexus_connections_refused_total", "plexus_slow_consumer_closes_total",
          "plexus_connections", "plexus_sse_streams", "plexus_api_key_refusals_total")
metrics = {}
try:
    for l in open(sys.argv[3]):
        if l.startswith(wanted):
            name, _, value = l.rstrip().rpartition(" ")
            metrics[name] = float(value)
except OSError:
    pass
result["server_metrics_at_end"] = metrics
print(json.dumps(result, separators=(",", ":")))
PY
)"
echo "$line"
printf '{"name":"hostile","result":%s}\n' "$line" >"$WORK/results.jsonl"
python3 bench/summarize.py "$WORK/results.jsonl"
