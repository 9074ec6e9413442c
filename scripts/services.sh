#!/usr/bin/env bash
# Makes sure the real servers the tests talk to are up on their standard loopback ports:
# NATS with JetStream (4222), Redis (6379) and PostgreSQL (5432, trust auth, database `test`).
# A server that is down is started; one that is missing is installed from Debian's packages
# first. Idempotent: running it with everything up only checks the ports.
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local name=$1 port=$2
  for _ in $(seq 1 100); do
    up "$port" && return 0
    sleep 0.1
  done
  echo "services: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

apt_install() {
  echo "services: installing $* from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
}

if ! up 4222; then
  [ -x /usr/sbin/nats-server ] || apt_install nats-server
  mkdir -p /var/lib/nats-server /var/log
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_for NATS 4222
fi

if ! up 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis 6379
fi

if ! up 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  wait_for PostgreSQL 5432
fi
# The tests use database `test` with trust auth on loopback, as this machine is set up.
if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -Atc 'create database test' >/dev/null 2>&1 \
    || su postgres -c "psql -Atc 'create database test'" >/dev/null
fi
