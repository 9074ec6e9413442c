#!/usr/bin/env bash
# Cross-node fan-out: three plexus nodes joined over a real NATS or Redis server, subscribers
# spread round-robin over the three, events published over HTTP to the first node, so two thirds
# of every delivery crosses the bus. The same scenario on one node (local adapter) runs first for
# comparison. Nodes (and the bus server, already running) share CPU 0; the load generator has
# CPU 1.
#
#   bench/cluster.sh              # broadcast and fanout over local, nats, redis; RUNS (default 3) each
#   RUNS=1 bench/cluster.sh nats  # one bus, one run
#   SET=interest NODES=6 bench/cluster.sh nats redis
#       # what each node hears of the bus (#17): 1,200 subscribers, 600 events/s over HTTP to
#       # node 1, on 6 channels (node k serves only channels k, k+N, ...: "partitioned", with
#       # NODES 3 or 6) and on 7 (every node serves every channel: "round-robin"); prints each
#       # node's cluster messages and bytes received and its CPU seconds, medians over runs
#
# Needs NATS on 127.0.0.1:4222 and Redis on 127.0.0.1:6379 (scripts/services.sh starts them).
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
BUSES=("${@:-local nats redis}")
read -r -a BUSES <<<"${BUSES[*]}"
# name | plexus-bench arguments
SCENARIOS=(
  "broadcast|broadcast --subscribers 2000 --events 200"
  "fanout-1k-50|fanout --subscribers 1000 --channels 1 --rate 50 --duration 10"
)
NODES="${NODES:-3}"
if [[ "${SET:-standard}" == interest ]]; then
  # Subscriber i connects to node i mod NODES and joins channel i mod channels.
  SCENARIOS=(
    "partitioned|fanout --subscribers 1200 --channels 6 --rate 600 --duration 10"
    "round-robin|fanout --subscribers 1200 --channels 7 --rate 600 --duration 10"
  )
fi
METRICS_BASE=19600

./scripts/services.sh
cargo build --release -p plexus-server -p plexus-bench >&2
SERVER="${PLEXUS_BIN:-target/release/plexus}"
BENCH=target/release/plexus-bench
WORK="$(mktemp -d)"
PIDS=()

stop_nodes() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_nodes; rm -rf "$WORK"' EXIT

# Starts node $2 of a cluster on bus $1; appends its pid to PIDS and its port to PORTS.
start_node() {
  local bus=$1 n=$2 prefix=$3
  local dir="$WORK/node$n"
  mkdir -p "$dir"
  {
    printf '[server]\nhost = "127.0.0.1"\nport = 0\n\n'
    # Metrics only where they are read: the standard set stays comparable with earlier runs.
    if [[ "${SET:-standard}" == interest ]]; then
      printf '[metrics]\nenabled = true\nhost = "127.0.0.1"\nport = %s\n\n' "$((METRICS_BASE + n))"
    else
      printf '[metrics]\nenabled = false\n\n'
    fi
    if [[ "$bus" != local ]]; then
      printf '[adapter]\ndriver = "%s"\nprefix = "%s"\n\n' "$bus" "$prefix"
    fi
    printf '[[apps]]\nid = "bench"\nkey = "bench-key"\nsecret = "bench-secret"\n'
  } >"$dir/plexus.toml"
  taskset -c 0 "$SERVER" serve --config "$dir/plexus.toml" >"$dir/out" 2>"$dir/err" &
  PIDS+=("$!")
  for _ in $(seq 150); do
    local port
    port="$(sed -n 's/^plexus listening on .*:\([0-9][0-9]*\)$/\1/p' "$dir/out")"
    if [[ -n "$port" ]]; then
      PORTS+=("$port")
      return 0
    fi
    sleep 0.1
  done
  echo "node $n did not start:" >&2
  cat "$dir/err" >&2
  exit 1
}

# What each node of the run heard of the bus and the CPU it used, one JSON line per node.
record_nodes() {
  local n
  for n in $(seq "${#PIDS[@]}"); do
    local pid=${PIDS[$((n - 1))]} metrics messages bytes ticks
    metrics="$(curl -s "http://127.0.0.1:$((METRICS_BASE + n))/metrics" || true)"
    messages="$(awk '/^plexus_cluster_messages_received_total/ {print $2}' <<<"$metrics")"
    bytes="$(awk '/^plexus_cluster_bytes_received_total/ {print $2}' <<<"$metrics")"
    ticks="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
    printf '{"run":"%s","node":%s,"messages":%s,"bytes":%s,"cpu_secs":%s}\n' "$1" "$n" \
      "${messages:-0}" "${bytes:-0}" "$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {print t / hz}')" \
      >>"$NODE_FIGURES"
  done
}

RESULTS="$WORK/results.jsonl"
NODE_FIGURES="$WORK/nodes.jsonl"
: >"$RESULTS"
: >"$NODE_FIGURES"
for entry in "${SCENARIOS[@]}"; do
  name="${entry%%|*}"
  read -r -a args <<<"${entry#*|}"
  for bus in "${BUSES[@]}"; do
    for run in $(seq "$RUNS"); do
      PORTS=()
      prefix="bench$$r$run"
      nodes=$NODES
      [[ "$bus" == local ]] && nodes=1
      for n in $(seq "$nodes"); do start_node "$bus" "$n" "$prefix"; done
      subscriber_ports="$(IFS=,; echo "${PORTS[*]}")"
      echo "== $name over $bus, run $run/$RUNS (nodes on ports $subscriber_ports)" >&2
      line="$(taskset -c 1 "$BENCH" "${args[@]}" --port "${PORTS[0]}" --subscriber-ports "$subscriber_ports" \
        --app-id bench --key bench-key --secret bench-secret --server-pid "${PIDS[0]}" --timeout-secs 90)" \
        || echo "plexus-bench exited with $?" >&2
      if [[ "${SET:-standard}" == interest ]]; then record_nodes "$name-$bus-$nodes"; fi
      stop_nodes
      if [[ -n "$line" ]]; then
        echo "$line"
        printf '{"name":"%s-%s","result":%s}\n' "$name" "$bus" "$line" >>"$RESULTS"
      fi
    done
  done
done
python3 bench/summarize.py "$RESULTS"
if [[ -s "$NODE_FIGURES" ]]; then
  python3 - "$NODE_FIGURES" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    figures = json.loads(line)
    for key in ("messages", "bytes", "cpu_secs"):
        runs[figures["run"]][(figures["node"], key)].append(figures[key])
print("# per node, medians over runs: cluster messages and bytes received, CPU seconds")
for run, figures in runs.items():
    nodes = sorted({node for node, _ in figures})
    cells = [f"node {n}: {statistics.median(figures[(n, 'messages')]):.0f} msgs, "
             f"{statistics.median(figures[(n, 'bytes')]) / 1e6:.1f} MB, "
             f"{statistics.median(figures[(n, 'cpu_secs')]):.1f} s" for n in nodes]
    print(f"{run}: " + "; ".join(cells))
PY
fi
