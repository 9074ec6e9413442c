#!/usr/bin/env bash
# Runs the Autobahn|Testsuite WebSocket conformance cases (1-7, 9, 10) against the `ws-echo`
# example — plexus's own codec and connection loop — on both transports: the default one and
# the tokio-tungstenite comparison build, so the two stay comparable. Then the permessage-deflate
# cases (12, 13) against the default transport, the one that negotiates the extension. Fails
# unless every case is OK, NON-STRICT or INFORMATIONAL. Reports land in
# target/autobahn/{plexus,tungstenite,plexus-deflate}/.
#
#   scripts/autobahn.sh [CASES [DEFLATE_CASES]]   # JSON lists, e.g. '["1.*","2.*"]'; "none" skips
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-'["1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.*","10.*"]'}
deflate_cases=${2:-'["12.*","13.*"]'}

# The suite's runner is the team's shared tool (it installs autobahntestsuite for Python 2.7).
run=""
for candidate in "${AUTOBAHN_RUN:-}" ../shared/tools/autobahn/run.sh /work/shared/tools/autobahn/run.sh; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then run=$candidate; break; fi
done
[ -n "$run" ] || { echo "Autobahn runner not found: set AUTOBAHN_RUN=path/to/run.sh" >&2; exit 2; }

pid=""
# The server dies of the signal (status 143), which is how it should end: not a failure.
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
trap stop EXIT

# Starts an echo binary on a free port; sets `pid` and `port`. Not called in a command
# substitution: a subshell would keep `pid` to itself, and `stop` would leave the server running.
start_echo() {
  local log
  log=$(mktemp)
  "$1" --port 0 >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    if grep -q "listening on" "$log"; then
      port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$log")
      return
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "ws-echo did not start" >&2; exit 1
}

for transport in tungstenite plexus; do
  if [ "$transport" = tungstenite ]; then
    cargo build --release -p plexus-server --example ws-echo --features tungstenite
    cp --remove-destination target/release/examples/ws-echo target/release/examples/ws-echo-tungstenite
    binary=target/release/examples/ws-echo-tungstenite
  else
    cargo build --release -p plexus-server --example ws-echo
    binary=target/release/examples/ws-echo
  fi
  start_echo "$binary"
  echo "Autobahn against ws-echo ($transport transport) on port $port" >&2
  bash "$run" "ws://127.0.0.1:$port" "$cases" "$PWD/target/autobahn/$transport"
  stop
done

if [ "$deflate_cases" != none ]; then
  start_echo target/release/examples/ws-echo
  echo "Autobahn permessage-deflate cases against ws-echo (plexus transport) on port $port" >&2
  bash "$run" "ws://127.0.0.1:$port" "$deflate_cases" "$PWD/target/autobahn/plexus-deflate"
  stop
fi
