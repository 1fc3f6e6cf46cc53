#!/usr/bin/env bash
# Makes sure a local PostgreSQL answers on 127.0.0.1:5432 for `make dev` and
# `make test`: installs Debian's postgresql when it is missing, lets the
# postgres user in over loopback without a password (the default
# DATABASE_URL; fine on a development machine, not on a shared host), and
# starts the cluster. Idempotent; instant when it is up. Setting
# DATABASE_URL or TUNEFORGE_TEST_DATABASE_URL (your own server) skips it.
set -euo pipefail

if [ -n "${DATABASE_URL:-}" ] || [ -n "${TUNEFORGE_TEST_DATABASE_URL:-}" ]; then
  exit 0
fi

answers() {
  PGCONNECT_TIMEOUT=3 psql -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1
}
if command -v psql >/dev/null 2>&1 && answers; then
  exit 0
fi

if command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q && [ ! -d /etc/postgresql ]; then
  echo "a PostgreSQL answers on 127.0.0.1:5432, but user postgres cannot connect without a password;" \
    "set DATABASE_URL (make dev) and TUNEFORGE_TEST_DATABASE_URL (make test) to a URL that can" >&2
  exit 1
fi

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL is not installed; as root, run: apt-get install postgresql (or set DATABASE_URL)" >&2
    exit 1
  fi
  echo "installing Debian's postgresql (once)" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
conf=/etc/postgresql/$version/main
if [ -z "$version" ] || [ ! -d "$conf" ]; then
  echo "no PostgreSQL cluster in /etc/postgresql; create one with: pg_createcluster <version> main" >&2
  exit 1
fi

# Loopback connections as postgres need no password: the development
# default, postgres://postgres@127.0.0.1:5432. The lines go first, since
# pg_hba.conf takes the first match.
hba=$conf/pg_hba.conf
marker="# tuneforge: the postgres user over loopback, no password"
if ! grep -qF "$marker" "$hba"; then
  if [ ! -w "$hba" ]; then
    echo "$hba needs a trust line for postgres on 127.0.0.1; run this script as root" >&2
    exit 1
  fi
  echo "letting user postgres in over loopback without a password: two trust lines at the top of $hba" >&2
  tmp=$(mktemp "$hba.XXXXXX")
  { echo "$marker"
    echo "host all postgres 127.0.0.1/32 trust"
    echo "host all postgres ::1/128 trust"
    cat "$hba"; } > "$tmp"
  # Renamed into place (never half written), with the file's owner and mode.
  chown --reference="$hba" "$tmp" && chmod --reference="$hba" "$tmp" && mv "$tmp" "$hba"
  # A running cluster rereads it; a stopped one reads it at start.
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  # Room for `make cluster` (a Temporal role holds up to 15 connections)
  # beside the tests' databases; Debian's default is 100.
  if [ -d "$conf/conf.d" ] && [ -w "$conf/conf.d" ] && [ ! -f "$conf/conf.d/tuneforge.conf" ]; then
    echo "max_connections = 300" > "$conf/conf.d/tuneforge.conf"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi
for _ in $(seq 1 30); do
  answers && exit 0
  sleep 1
done
echo "PostgreSQL $version did not let postgres in on 127.0.0.1:5432 within 30 s; see /var/log/postgresql/postgresql-$version-main.log" >&2
exit 1
