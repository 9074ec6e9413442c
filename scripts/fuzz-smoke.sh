#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target in fuzz/ (nightly, AddressSanitizer, debug
# assertions) and runs each briefly, starting from its committed corpus. Any crash, panic,
# failed invariant, leak or timeout fails the script. The long runs and what they cover are in
# FUZZING.md.
#
#   scripts/fuzz-smoke.sh                      # every target
#   scripts/fuzz-smoke.sh frame_reader         # some targets
#   FUZZ_SMOKE_RUNS=50000 FUZZ_SMOKE_SECONDS=10 scripts/fuzz-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

# Pinned so a new cargo-fuzz release cannot change the build flags under CI.
CARGO_FUZZ_VERSION=0.13.2
RUNS="${FUZZ_SMOKE_RUNS:-300000}"
SECONDS_PER_TARGET="${FUZZ_SMOKE_SECONDS:-30}"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if [ "$(cargo +nightly fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
  cargo +nightly install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
  for target in "${targets[@]}"; do
    cargo +nightly fuzz build "$target"
  done
else
  mapfile -t targets < <(cargo +nightly fuzz list)
  cargo +nightly fuzz build
fi

for target in "${targets[@]}"; do
  # New inputs go to a scratch directory (listed first), so the committed corpus stays as it is.
  scratch="work/smoke/$target"
  rm -rf "$scratch"
  mkdir -p "$scratch" "corpus/$target"
  echo "== $target: up to $RUNS runs or ${SECONDS_PER_TARGET}s"
  log="work/smoke/$target.log"
  status=0
  cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
    -runs="$RUNS" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -jobs=1 -workers=1 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E -A3 '^(stat::number_of_executed_units|stat::peak_rss_mb|Done|INFO: seed corpus)|panicked|ERROR|SUMMARY' "$log" || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed (exit $status); the reproducer is in fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
echo "fuzz smoke: ${#targets[@]} targets, no crash"
