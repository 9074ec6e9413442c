#!/usr/bin/env bash
# Runs the whole test suite: Rust unit, property and loopback integration tests, the typed
# TypeScript client's tests (clients/js), then the Node conformance suite (pusher-js and the
# pusher server SDK against a real `plexus serve`).
# One release build serves both, so the binary is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."

# NATS, Redis and PostgreSQL: the cluster, bus and app-store tests use the real servers.
./scripts/services.sh

cargo test --workspace --release

if ! command -v npm >/dev/null 2>&1; then
  echo "npm is required for the conformance suite; installing Node.js from Debian" >&2
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
# Typed channels' TypeScript client (clients/js): the committed generated client must match the
# Rust wiring of examples/chat, then its type tests and runtime tests against the chat example.
cargo build --release -p chat-example
generated=clients/js/test/generated/chat.ts
if ! target/release/chat-example codegen typescript ../../src/index.js | diff -u "$generated" -; then
  echo "$generated is stale: regenerate it with" >&2
  echo "  target/release/chat-example codegen typescript ../../src/index.js > $generated" >&2
  exit 1
fi
(
  cd clients/js
  [ -d node_modules ] && [ node_modules -nt package-lock.json ] || npm ci --no-audit --no-fund
  CHAT_BIN="$(pwd)/../../target/release/chat-example" PLEXUS_BIN="$(pwd)/../../target/release/plexus" npm test
)

(
  cd tests/conformance
  [ -d node_modules ] && [ node_modules -nt package-lock.json ] || npm ci --no-audit --no-fund
  PLEXUS_BIN="$(pwd)/../../target/release/plexus" npm test
)

# The dashboard in headless Chromium: Debian's package, driven by playwright-core (never a
# browser download of its own). The screenshot is left in target/browser/.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium for the browser tests" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
(
  cd tests/browser
  [ -d node_modules ] && [ node_modules -nt package-lock.json ] || npm ci --no-audit --no-fund
  PLEXUS_BIN="$(pwd)/../../target/release/plexus" npm test
)

# The operator's packages (README, "Install"): the .deb built, installed, served from as the
# plexus user and purged; the Dockerfile and deploy/kubernetes/ checked (tests/packaging).
# It packages the release binary the tests above ran (a `cargo build -p plexus-server` here would
# resolve features for that package alone and rebuild it).
PACKAGE_TEST_NO_BUILD=1 ./scripts/package-test.sh
