#!/usr/bin/env bash
# Builds the Debian package of the plexus server with dpkg-deb alone (no cargo-deb):
#
#   packaging/deb/build.sh [--no-build] [--out DIR]
#
# 1. `cargo build --release -p plexus-server --bin plexus` (skipped with --no-build, which packages
#    the target/release/plexus already there);
# 2. lays out the package: /usr/bin/plexus, /etc/plexus/plexus.toml (no secrets: ${VAR}s filled
#    from the environment), /etc/default/plexus (the service's environment file, mode 0600), the
#    hardened systemd unit, a man page generated from the binary's own --help (so it cannot drift
#    from the flags), the maintainer scripts;
# 3. writes DIR/plexus_VERSION_ARCH.deb (default DIR: target/debian) and prints its path as the
#    last line of stdout.
#
# The version is the workspace's (Cargo.toml [workspace.package] version), and the binary must
# report the same number (`plexus --version`), so a stale binary is never packaged under a new one.
# Library dependencies come from dpkg-shlibdeps (package dpkg-dev). This script is also the build
# step of the Dockerfile, and scripts/package-test.sh builds, installs and runs what it makes.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/packaging/deb"
out="$root/target/debian"
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--no-build] [--out DIR]" >&2; exit 2 ;;
  esac
done

for tool in dpkg-deb dpkg-shlibdeps gzip objcopy; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is required (dpkg-dev, gzip, binutils)" >&2; exit 1; }
done

# The workspace version: the first `version = "…"` of the [workspace.package] table.
version="$(awk '
  /^\[/ { in_pkg = ($0 == "[workspace.package]") ; next }
  in_pkg && /^version[[:space:]]*=/ { gsub(/.*=[[:space:]]*"|".*/, ""); print; exit }
' "$root/Cargo.toml")"
[ -n "$version" ] || { echo "$0: no version in [workspace.package] of Cargo.toml" >&2; exit 1; }
arch="$(dpkg --print-architecture)"

if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --locked --release -p plexus-server --bin plexus >&2)
fi
bin="$root/target/release/plexus"
[ -x "$bin" ] || { echo "$0: $bin is missing (run without --no-build)" >&2; exit 1; }
reported="$("$bin" --version)"
if [ "${reported##* }" != "$version" ]; then
  echo "$0: $bin says '$reported', Cargo.toml says $version: rebuild it" >&2
  exit 1
fi

name="plexus_${version}_${arch}"
mkdir -p "$out"
stage="$(mktemp -d "$out/.stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/$name"

install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/etc/plexus" "$pkg/etc/default" \
  "$pkg/usr/lib/systemd/system" "$pkg/usr/share/man/man1" "$pkg/usr/share/doc/plexus"
install -m 0755 "$bin" "$pkg/usr/bin/plexus"
# The release profile keeps line tables (about 100 MB); the package ships function names only,
# as Debian's own packages do.
objcopy --strip-debug "$pkg/usr/bin/plexus"
install -m 0644 "$here/plexus.toml" "$pkg/etc/plexus/plexus.toml"
# Holds the app secret once the operator fills it in: readable by root only (systemd reads it
# before dropping to the plexus user).
install -m 0600 "$here/default" "$pkg/etc/default/plexus"
install -m 0644 "$here/plexus.service" "$pkg/usr/lib/systemd/system/plexus.service"
for script in postinst prerm postrm; do
  install -m 0755 "$here/$script" "$pkg/DEBIAN/$script"
done
printf '%s\n' /etc/plexus/plexus.toml /etc/default/plexus > "$pkg/DEBIAN/conffiles"

# The man page: the binary's own --help for every command, so it always matches the flags. Run
# with an empty environment: clap shows the value of a flag's variable when it is set.
help_of() { env -i "$bin" "$@" --help; }
roff_escape() {
  # Backslashes first, then hyphens (so flags copy and paste as ASCII), then control characters
  # at the start of a line.
  sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"
}
{
  printf '.TH PLEXUS 1 "" "plexus %s" "User Commands"\n' "$version"
  printf '.SH NAME\nplexus \\- self\\-hosted realtime server speaking the Pusher Channels protocol\n'
  printf '.SH SYNOPSIS\n'
  for cmd in "serve" "config check" "config print" "migrate" "info"; do
    printf '.B plexus %s\n[\\fIOPTIONS\\fR]\n.br\n' "$cmd"
  done
  printf '.SH DESCRIPTION\n.nf\n'
  help_of | roff_escape
  printf '.fi\n'
  for cmd in "serve" "config check" "config print" "migrate" "info"; do
    printf '.SH "PLEXUS %s"\n.nf\n' "$(echo "$cmd" | tr '[:lower:]' '[:upper:]')"
    # shellcheck disable=SC2086 # "config check" is two words on purpose
    help_of $cmd | roff_escape
    printf '.fi\n'
  done
  cat <<'EOF'
.SH FILES
.TP
.I /etc/plexus/plexus.toml
The configuration the service runs with (\fB\-\-config\fR). Secrets are not in it: it names
environment variables as ${VAR}.
.TP
.I /etc/default/plexus
The service's environment (systemd EnvironmentFile): PLEXUS_APP_ID, PLEXUS_APP_KEY,
PLEXUS_APP_SECRET and any other PLEXUS_* setting. Mode 0600.
.TP
.I /var/lib/plexus
The state directory (systemd StateDirectory): the durable webhook queue (\fB\-\-data\-dir\fR).
.SH SERVICE
.nf
systemctl enable \-\-now plexus     # after filling in /etc/default/plexus
journalctl \-u plexus
systemctl reload plexus           # SIGHUP: re\-read apps and TLS certificates
.fi
.SH SEE ALSO
The README of the plexus source tree: every setting, the HTTP API, clusters, TLS.
EOF
} > "$pkg/usr/share/man/man1/plexus.1"
gzip -9n "$pkg/usr/share/man/man1/plexus.1"

cat > "$pkg/usr/share/doc/plexus/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: plexus
Source: https://github.com/plexus-realtime/plexus

Files: *
Copyright: The plexus developers
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
chmod 0644 "$pkg/usr/share/doc/plexus/copyright"

# Shared libraries the binary links against, as dpkg-shlibdeps reports them (it wants a
# debian/control beside it).
shlibs_dir="$stage/shlibs"
mkdir -p "$shlibs_dir/debian"
printf 'Source: plexus\n\nPackage: plexus\nArchitecture: any\n' > "$shlibs_dir/debian/control"
shlibs="$(cd "$shlibs_dir" && dpkg-shlibdeps -O "$pkg/usr/bin/plexus" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')"
[ -n "$shlibs" ] || { echo "$0: dpkg-shlibdeps found no library dependencies" >&2; exit 1; }

installed_kb="$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)"
cat > "$pkg/DEBIAN/control" <<EOF
Package: plexus
Version: $version
Architecture: $arch
Maintainer: The plexus developers <plexus@invalid>
Installed-Size: $installed_kb
Depends: $shlibs, passwd, ca-certificates
Section: net
Priority: optional
Homepage: https://github.com/plexus-realtime/plexus
Description: self-hosted realtime server speaking the Pusher Channels protocol
 plexus speaks the Pusher Channels protocol v7 and HTTP API, so applications built on
 pusher-js, Laravel Echo and the Pusher server SDKs move to it by changing a host name.
 .
 This package installs the plexus binary, a systemd unit running it as the plexus user,
 the configuration /etc/plexus/plexus.toml and its environment file /etc/default/plexus.
EOF

deb="$out/$name.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
echo "$deb"
