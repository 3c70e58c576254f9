#!/usr/bin/env bash
# Make the PostgreSQL server on 127.0.0.1:5432 ready for tests/test_postgres.py and the bench:
# start it if it is down, wait until it accepts connections, and create the role `multids`
# (LOGIN CREATEDB; the tests create and drop their own databases with it). Safe to run again.
set -euo pipefail

HOST=127.0.0.1
PORT=5432
ROLE=multids

ready() {
  pg_isready -q -h "$HOST" -p "$PORT"
}

if ! ready; then
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "setup-postgres: PostgreSQL is not running on $HOST:$PORT and pg_ctlcluster is missing" >&2
    exit 1
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "setup-postgres: starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true  # "already running" is fine
fi

for _ in $(seq 1 60); do
  ready && break
  sleep 0.5
done
if ! ready; then
  echo "setup-postgres: PostgreSQL did not accept connections on $HOST:$PORT within 30 s" >&2
  exit 1
fi

# Trust authentication for local users (this machine and CI): connect as the superuser.
psql -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U postgres -d postgres <<SQL
SELECT 'CREATE ROLE $ROLE LOGIN CREATEDB'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE')
\gexec
ALTER ROLE $ROLE LOGIN CREATEDB;
SQL

echo "setup-postgres: $HOST:$PORT ready, role $ROLE can create the test databases"
