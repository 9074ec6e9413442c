#!/usr/bin/env bash
# The operator's packages, tested as an operator would use them:
#
#   1. builds the .deb with packaging/deb/build.sh (the Dockerfile's build step too) and checks its
#      files, modes, control fields and maintainer scripts;
#   2. checks that the README's `plexus serve` synopsis names exactly the flags of the packaged
#      binary's --help, and that the man page (generated from --help) documents them;
#   3. installs it with dpkg -i, checks the plexus user, the state directory and the unit
#      (`systemd-analyze verify` where it exists, the hardening settings always);
#   4. runs the INSTALLED binary the way the unit does (its ExecStart, its Environment= lines, the
#      EnvironmentFile /etc/default/plexus), as the plexus user, configured only by the installed
#      config and environment variables, on a free 127.0.0.1 port: refused without the app's
#      secrets; with them /up, /ready, a WebSocket handshake, a signed HTTP API publish and query,
#      unsigned and wrongly signed requests refused, /metrics, the Dockerfile's own HEALTHCHECK
#      command; SIGTERM and exit 0;
#   5. dpkg -r keeps the config, dpkg --purge removes everything;
#   6. the Dockerfile and deploy/kubernetes/ checks (tests/packaging, node:test).
#
# Needs root (dpkg -i), dpkg-dev, curl, openssl, setpriv and Node.js ≥ 20 with npm. No systemd
# needs to run. Refuses to start when a plexus package is already installed (it would purge it).
# PACKAGE_TEST_NO_BUILD=1 packages the target/release/plexus already built instead of running
# cargo build first.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

passed=0
pass() { passed=$((passed + 1)); echo "ok $passed - $*"; }
fail() { echo "not ok - $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "must run as root (dpkg -i)"
for tool in dpkg-deb dpkg-shlibdeps curl openssl setpriv node npm; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done
if dpkg-query -W -f='${Status}' plexus 2>/dev/null | grep -qv 'not-installed'; then
  fail "a plexus package is already installed here; this test installs and purges its own"
fi

work="$(mktemp -d /tmp/plexus-package-test.XXXXXX)"
server_pid=""
touched_dpkg=0
user_existed=0
getent passwd plexus >/dev/null && user_existed=1
cleanup() {
  local rc=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "$touched_dpkg" = 1 ] && dpkg-query -W plexus >/dev/null 2>&1; then
    dpkg --purge plexus >/dev/null 2>&1 || echo "cleanup: dpkg --purge plexus failed" >&2
  fi
  if [ "$user_existed" = 0 ] && getent passwd plexus >/dev/null; then
    userdel plexus 2>/dev/null || true
  fi
  if [ "$user_existed" = 0 ] && getent group plexus >/dev/null; then
    groupdel plexus 2>/dev/null || true
  fi
  if [ "$rc" != 0 ]; then
    for log in "$work"/server.out "$work"/server.err; do
      [ -s "$log" ] && { echo "--- $log" >&2; tail -n 30 "$log" >&2; }
    done
    echo "package-test: $passed passed, 1 failed" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Polls a command until it succeeds or the deadline (seconds) passes; bounded by construction.
wait_for() {
  local seconds=$1; shift
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# ---------------------------------------------------------------------------------------------
# 1. Build and inspect the package.
build_args=()
[ "${PACKAGE_TEST_NO_BUILD:-0}" = 1 ] && build_args+=(--no-build)
deb="$(packaging/deb/build.sh "${build_args[@]}" --out "$work/out" | tail -n 1)"
[ -f "$deb" ] || fail "build.sh made no package ($deb)"
version="$(awk '/^\[/ { p = ($0 == "[workspace.package]"); next } p && /^version/ { gsub(/.*= *"|".*/, ""); print; exit }' Cargo.toml)"
arch="$(dpkg --print-architecture)"
[ "$(basename "$deb")" = "plexus_${version}_${arch}.deb" ] || fail "package named $(basename "$deb")"
pass "build.sh made $(basename "$deb")"

[ "$(dpkg-deb -f "$deb" Package)" = plexus ] || fail "Package field"
[ "$(dpkg-deb -f "$deb" Version)" = "$version" ] || fail "Version $(dpkg-deb -f "$deb" Version) is not Cargo.toml's $version"
[ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "Architecture field"
depends="$(dpkg-deb -f "$deb" Depends)"
for dep in libc6 passwd ca-certificates; do
  grep -q "\\b$dep\\b" <<<"$depends" || fail "Depends lacks $dep: $depends"
done
pass "control: plexus $version $arch, Depends: $depends"

dpkg-deb -c "$deb" > "$work/contents"
expect_file() { # mode path
  grep -qE "^$1 root/root .* \./${2#/}\$" "$work/contents" || {
    cat "$work/contents" >&2
    fail "the package lacks $2 with mode $1, root-owned"
  }
}
expect_file '-rwxr-xr-x' /usr/bin/plexus
expect_file '-rw-r--r--' /etc/plexus/plexus.toml
expect_file '-rw-------' /etc/default/plexus
expect_file '-rw-r--r--' /usr/lib/systemd/system/plexus.service
expect_file '-rw-r--r--' /usr/share/man/man1/plexus.1.gz
expect_file '-rw-r--r--' /usr/share/doc/plexus/copyright
files="$(grep -c '^-' "$work/contents")"
[ "$files" = 6 ] || { cat "$work/contents" >&2; fail "the package has $files files, expected 6"; }
pass "contents: binary, config, environment file (0600), unit, man page, copyright; nothing else"

dpkg-deb -e "$deb" "$work/control"
[ "$(cat "$work/control/conffiles")" = "$(printf '/etc/plexus/plexus.toml\n/etc/default/plexus')" ] \
  || fail "conffiles: $(cat "$work/control/conffiles")"
for script in postinst prerm postrm; do
  [ -x "$work/control/$script" ] || fail "$script missing or not executable"
  sh -n "$work/control/$script" || fail "$script: syntax error"
done
pass "conffiles are the config and the environment file; maintainer scripts parse"

dpkg-deb -x "$deb" "$work/root"
config="$work/root/etc/plexus/plexus.toml"
if grep -nE '"(app-id|app-key|app-secret)"|change-me' "$config"; then
  fail "the packaged config holds development or placeholder credentials"
fi
for field in id key secret; do
  upper="$(tr '[:lower:]' '[:upper:]' <<<"$field")"
  grep -qE "^$field = \"\\\$\\{PLEXUS_APP_$upper\\}\"" "$config" || fail "apps.0.$field is not \${PLEXUS_APP_$upper}"
done
pass "the packaged config names its credentials as \${PLEXUS_APP_ID|KEY|SECRET}, holds none"

# ---------------------------------------------------------------------------------------------
# 2. The README's synopsis and the man page match the packaged binary's flags.
pkg_bin="$work/root/usr/bin/plexus"
flags_of() { grep -oE '^\s+(-[A-Za-z], )?--[a-z][a-z-]*' | grep -oE -- '--[a-z][a-z-]*' | grep -vxE -- '--(help|version)' | sort -u; }
"$pkg_bin" serve --help | flags_of > "$work/help-flags"
# The synopsis block of "## Running it": from `plexus serve [` to the `plexus config check` line.
awk '/^plexus serve \[/ { on = 1 } /^plexus config check/ { on = 0 } on' README.md \
  | grep -oE -- '--[a-z][a-z-]*' | sort -u > "$work/readme-flags"
[ -s "$work/readme-flags" ] || fail "no 'plexus serve [...]' synopsis found in README.md"
diff -u "$work/readme-flags" "$work/help-flags" >&2 \
  || fail "README.md's 'plexus serve' synopsis (-) and 'plexus serve --help' (+) name different flags"
for sub in check print; do
  "$pkg_bin" config "$sub" --help | flags_of | grep -vxE -- '--json' > "$work/config-$sub"
  extra="$(comm -23 "$work/config-$sub" "$work/help-flags")"
  [ -z "$extra" ] || fail "'plexus config $sub' has flags the README's [same flags] does not list: $extra"
done
"$pkg_bin" config print --help | grep -qE -- '--json' || fail "'plexus config print' has no --json"
pass "README.md's 'plexus serve' synopsis lists exactly the $(wc -l < "$work/help-flags") flags of --help"

zcat "$work/root/usr/share/man/man1/plexus.1.gz" > "$work/plexus.1"
if command -v groff >/dev/null; then
  MANWIDTH=120 man -l "$work/plexus.1" 2>"$work/man.err" > "$work/man.txt" || { cat "$work/man.err" >&2; fail "man could not render plexus.1"; }
  [ ! -s "$work/man.err" ] || { cat "$work/man.err" >&2; fail "man warned about plexus.1"; }
else
  sed -e 's/\\-/-/g' "$work/plexus.1" > "$work/man.txt"
fi
while read -r flag; do
  grep -qF -- "$flag" "$work/man.txt" || fail "the man page does not document $flag"
done < "$work/help-flags"
grep -qF "plexus $version" "$work/man.txt" || fail "the man page does not carry version $version"
pass "the man page renders and documents every flag of 'plexus serve'"

# ---------------------------------------------------------------------------------------------
# 3. Install.
touched_dpkg=1
dpkg -i "$deb" > "$work/dpkg-i.log" 2>&1 || { cat "$work/dpkg-i.log" >&2; fail "dpkg -i failed"; }
[ "$(dpkg-query -W -f='${Status}' plexus)" = "install ok installed" ] || fail "dpkg says: $(dpkg-query -W -f='${Status}' plexus)"
[ "$(/usr/bin/plexus --version | sed "s/.* //")" = "$version" ] || fail "/usr/bin/plexus --version: $(/usr/bin/plexus --version)"
getent passwd plexus > "$work/passwd" || fail "postinst made no plexus user"
IFS=: read -r _ _ plexus_uid plexus_gid _ plexus_home plexus_shell < "$work/passwd"
[ "$plexus_uid" -lt 1000 ] || fail "plexus is not a system user (uid $plexus_uid)"
[ "$plexus_shell" = /usr/sbin/nologin ] || fail "plexus's shell is $plexus_shell"
[ "$plexus_home" = /var/lib/plexus ] || fail "plexus's home is $plexus_home"
[ "$(stat -c '%U:%G %a' /var/lib/plexus)" = "plexus:plexus 750" ] || fail "/var/lib/plexus is $(stat -c '%U:%G %a' /var/lib/plexus)"
[ "$(stat -c '%U:%G %a' /etc/default/plexus)" = "root:root 600" ] || fail "/etc/default/plexus is $(stat -c '%U:%G %a' /etc/default/plexus)"
grep -q 'PLEXUS_APP_SECRET' "$work/dpkg-i.log" || fail "postinst did not tell the operator to set the secrets"
pass "dpkg -i: installed, system user plexus (uid $plexus_uid, nologin), /var/lib/plexus 0750, /etc/default/plexus 0600"

unit=/usr/lib/systemd/system/plexus.service
for setting in User=plexus Group=plexus NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes \
  PrivateTmp=yes StateDirectory=plexus 'Environment=PLEXUS_DATA_DIR=%S/plexus' \
  'EnvironmentFile=-/etc/default/plexus' 'CapabilityBoundingSet=' \
  'ExecStart=/usr/bin/plexus serve --config /etc/plexus/plexus.toml'; do
  grep -qxF "$setting" "$unit" || fail "the unit lacks $setting"
done
grep -qE '^LimitNOFILE=[0-9]+$' "$unit" || fail "the unit sets no LimitNOFILE"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$unit" > "$work/verify.log" 2>&1 || { cat "$work/verify.log" >&2; fail "systemd-analyze verify $unit"; }
  [ ! -s "$work/verify.log" ] || { cat "$work/verify.log" >&2; fail "systemd-analyze verify warned about $unit"; }
  pass "the unit is hardened and systemd-analyze verify accepts it"
else
  pass "the unit is hardened (systemd-analyze not installed: not verified)"
fi

# ---------------------------------------------------------------------------------------------
# 4. Run the installed binary as the unit would: its ExecStart, Environment= and EnvironmentFile.
read -r -a exec_start <<<"$(sed -n 's/^ExecStart=//p' "$unit")"
unit_env=()
while IFS= read -r line; do unit_env+=("${line//%S//var/lib}"); done < <(sed -n 's/^Environment=//p' "$unit")
# The variables of an EnvironmentFile (KEY=VALUE lines, # comments), without a shell.
env_file_vars() {
  grep -E '^[A-Za-z_][A-Za-z0-9_]*=' /etc/default/plexus || true
}
start_installed() {
  local vars=()
  while IFS= read -r line; do vars+=("$line"); done < <(env_file_vars)
  : > "$work/server.out"; : > "$work/server.err"
  (cd / && exec setpriv --reuid=plexus --regid=plexus --init-groups --no-new-privs -- \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "${unit_env[@]}" "${vars[@]}" "${exec_start[@]}") \
    > "$work/server.out" 2> "$work/server.err" &
  server_pid=$!
}
exited() { ! kill -0 "$server_pid" 2>/dev/null; }

# Without the secrets (the file as installed: all commented out) it must refuse to start.
[ -z "$(env_file_vars)" ] || fail "the installed /etc/default/plexus sets variables: $(env_file_vars)"
start_installed
wait_for 20 exited || fail "the installed plexus started without PLEXUS_APP_* set"
status=0; wait "$server_pid" || status=$?
server_pid=""
[ "$status" != 0 ] || fail "plexus without credentials exited 0"
grep -q 'PLEXUS_APP_' "$work/server.err" || fail "the refusal does not name the missing variable: $(cat "$work/server.err")"
pass "without /etc/default/plexus filled in, the installed plexus refuses to start (exit $status): $(grep -m1 'PLEXUS_APP_' "$work/server.err")"

# The operator fills in /etc/default/plexus. Loopback and any free port for this test, and a
# webhook endpoint (nothing listens there), set by variables alone, so the durable webhook queue
# opens in data_dir.
app_id=4242
app_key="pkgtest-$(openssl rand -hex 8)"
app_secret="$(openssl rand -hex 32)"
cat >> /etc/default/plexus <<EOF
PLEXUS_APP_ID=$app_id
PLEXUS_APP_KEY=$app_key
PLEXUS_APP_SECRET=$app_secret
PLEXUS_HOST=127.0.0.1
PLEXUS_PORT=0
PLEXUS_METRICS_PORT=0
PLEXUS_APPS__0__WEBHOOKS__0__URL=http://127.0.0.1:9/plexus-package-test
PLEXUS_APPS__0__WEBHOOKS__0__EVENTS__0=channel_occupied
EOF
start_installed
# Done waiting when it says it listens, or when it has exited (reported just below).
listening() { grep -qE '^plexus listening on ' "$work/server.out" || exited; }
wait_for 30 listening || fail "the installed plexus did not say it was listening within 30 s"
exited && fail "the installed plexus exited at start"
addr="$(sed -nE 's/^plexus listening on ([0-9.]+:[0-9]+)$/\1/p' "$work/server.out" | head -n 1)"
metrics_addr="$(sed -nE 's/^plexus metrics on ([0-9.]+:[0-9]+)$/\1/p' "$work/server.out" | head -n 1)"
[ "${addr%:*}" = 127.0.0.1 ] || fail "listening on $addr, not 127.0.0.1"
port="${addr##*:}"
base="http://$addr"
[ "$(ps -o user= -p "$server_pid")" = plexus ] || fail "the server runs as $(ps -o user= -p "$server_pid")"
[ "$(readlink "/proc/$server_pid/exe")" = /usr/bin/plexus ] || fail "the server is $(readlink "/proc/$server_pid/exe")"
up() { curl -fsS --max-time 2 "$base/up" > /dev/null 2>&1; }
wait_for 20 up || fail "GET /up did not answer 200 within 20 s"
pass "the installed /usr/bin/plexus runs as plexus on $addr (config + environment only)"

[ "$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$base/up")" = 200 ] || fail "/up"
[ "$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$base/ready")" = 200 ] || fail "/ready"
pass "GET /up and GET /ready answer 200"

# The packaged state directory is the data_dir: the webhook queue is created there.
[ "$(stat -c %U /var/lib/plexus/webhooks.redb 2>/dev/null)" = plexus ] \
  || fail "no /var/lib/plexus/webhooks.redb owned by plexus: data_dir is elsewhere ($(ls -la /var/lib/plexus))"
pass "the webhook queue is /var/lib/plexus/webhooks.redb (the unit's StateDirectory), owned by plexus"

# A WebSocket handshake with the configured key gets pusher:connection_established.
curl -sS -N --http1.1 --max-time 3 -o "$work/ws.out" \
  -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
  -H "Sec-WebSocket-Key: $(openssl rand -base64 16)" \
  "$base/app/$app_key?protocol=7&client=package-test&version=1" 2>/dev/null || true
grep -aq 'pusher:connection_established' "$work/ws.out" || fail "no pusher:connection_established over the WebSocket"
pass "a WebSocket to /app/$app_key is welcomed with pusher:connection_established"

# Signed HTTP API requests (Pusher's auth: HMAC-SHA256 of "METHOD\nPATH\nsorted query").
sign() { # method path query [secret]
  printf '%s\n%s\n%s' "$1" "$2" "$3" | openssl dgst -sha256 -hmac "${4:-$app_secret}" -r | cut -d' ' -f1
}
api() { # method path body secret → HTTP status, body in $work/api.out
  local method=$1 path=$2 body=$3 secret=$4 query
  query="auth_key=$app_key&auth_timestamp=$(date +%s)&auth_version=1.0"
  if [ -n "$body" ]; then
    query="$query&body_md5=$(printf '%s' "$body" | openssl dgst -md5 -r | cut -d' ' -f1)"
  fi
  query="$query&auth_signature=$(sign "$method" "$path" "$query" "$secret")"
  if [ -n "$body" ]; then
    curl -sS --max-time 5 -o "$work/api.out" -w '%{http_code}' -X "$method" \
      -H 'Content-Type: application/json' --data-binary "$body" "$base$path?$query"
  else
    curl -sS --max-time 5 -o "$work/api.out" -w '%{http_code}' -X "$method" "$base$path?$query"
  fi
}
event='{"name":"deployed","channels":["package-test"],"data":"{\"from\":\"the .deb\"}"}'
code="$(api POST "/apps/$app_id/events" "$event" "$app_secret")"
[ "$code" = 200 ] || fail "a signed publish answered $code: $(cat "$work/api.out")"
code="$(api GET "/apps/$app_id/channels" "" "$app_secret")"
[ "$code" = 200 ] && grep -q '"channels"' "$work/api.out" || fail "a signed channel query answered $code: $(cat "$work/api.out")"
pass "signed HTTP API: publish 200, channel query 200"

code="$(api POST "/apps/$app_id/events" "$event" "app-secret")"
[ "$code" = 401 ] || fail "a publish signed with the development secret answered $code"
code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
  --data-binary "$event" "$base/apps/$app_id/events")"
[ "$code" = 401 ] || fail "an unsigned publish answered $code"
code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$base/apps/app-id/channels")"
[ "$code" != 200 ] || fail "the development app answers"
pass "unsigned and wrongly signed requests are refused (401); the development app is not served"

[ -n "$metrics_addr" ] || fail "no 'plexus metrics on' line"
curl -fsS --max-time 5 "http://$metrics_addr/metrics" > "$work/metrics" || fail "GET /metrics on $metrics_addr"
grep -qE "^plexus_events_published_total\\{[^}]*\\} [1-9]" "$work/metrics" \
  || { grep plexus_events_published "$work/metrics" >&2; fail "/metrics does not count the publish"; }
pass "/metrics on $metrics_addr counts the publish"

# The Dockerfile's HEALTHCHECK command, run as it is, against the installed server.
(cd tests/packaging && { [ -d node_modules ] && [ node_modules -nt package-lock.json ] || npm ci --no-audit --no-fund --silent; })
mapfile -d '' healthcheck < <(node tests/packaging/healthcheck-cmd.js)
[ "${#healthcheck[@]}" -gt 0 ] || fail "no HEALTHCHECK command read from the Dockerfile"
PLEXUS_PORT="$port" timeout 5 "${healthcheck[@]}" || fail "the Dockerfile's HEALTHCHECK fails against a healthy server"
pass "the Dockerfile's HEALTHCHECK command passes against the running server"

# SIGTERM: graceful stop, exit 0.
kill -TERM "$server_pid"
wait_for 25 exited || fail "plexus did not exit within 25 s of SIGTERM"
status=0; wait "$server_pid" || status=$?
server_pid=""
[ "$status" = 0 ] || fail "plexus exited $status after SIGTERM"
! up || fail "/up still answers after the stop"
if PLEXUS_PORT="$port" timeout 5 "${healthcheck[@]}" 2>/dev/null; then
  fail "the Dockerfile's HEALTHCHECK passes with no server"
fi
pass "SIGTERM: exit 0; /up and the HEALTHCHECK then fail"

# ---------------------------------------------------------------------------------------------
# 5. Remove, then purge.
dpkg -r plexus > "$work/dpkg-r.log" 2>&1 || { cat "$work/dpkg-r.log" >&2; fail "dpkg -r failed"; }
[ ! -e /usr/bin/plexus ] || fail "dpkg -r left /usr/bin/plexus"
[ ! -e "$unit" ] || fail "dpkg -r left the unit"
[ -f /etc/plexus/plexus.toml ] && [ -f /etc/default/plexus ] || fail "dpkg -r removed the configuration"
pass "dpkg -r: binary and unit gone, configuration kept"
dpkg --purge plexus > "$work/dpkg-purge.log" 2>&1 || { cat "$work/dpkg-purge.log" >&2; fail "dpkg --purge failed"; }
for path in /usr/bin/plexus "$unit" /etc/plexus /etc/default/plexus /var/lib/plexus /usr/share/man/man1/plexus.1.gz /usr/share/doc/plexus; do
  [ ! -e "$path" ] || fail "dpkg --purge left $path"
done
! dpkg -s plexus > /dev/null 2>&1 || fail "dpkg still knows plexus after the purge"
touched_dpkg=0
pass "dpkg --purge: every file, the configuration and /var/lib/plexus gone"

# ---------------------------------------------------------------------------------------------
# 6. The Dockerfile and the Kubernetes manifests.
(cd tests/packaging && npm test) > "$work/node.log" 2>&1 || { cat "$work/node.log" >&2; fail "tests/packaging (Dockerfile, deploy/kubernetes)"; }
node_pass="$(sed -nE 's/^# pass ([0-9]+)$/\1/p' "$work/node.log")"
pass "tests/packaging: $node_pass node:test checks of the Dockerfile and deploy/kubernetes/"

echo "package-test: $passed passed, 0 failed"
