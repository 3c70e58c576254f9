#!/usr/bin/env bash
# Streaming replicas for tests/test_replicas.py and bench/replicas.py: two PostgreSQL primaries,
# each with a hot-standby replica made by pg_basebackup, on this machine only.
#
#   15/multids_a          127.0.0.1:5433  primary A (the tests put users, products, default here)
#   15/multids_a_replica  127.0.0.1:5434  streaming replica of A
#   15/multids_b          127.0.0.1:5435  primary B (orders, reviews)
#   15/multids_b_replica  127.0.0.1:5436  streaming replica of B
#
# Two primaries, because the case that matters is an order committed on one server after its
# user on another: pausing replay on A's replica leaves B's replica replaying.
# Trust for connections and replication on 127.0.0.1 only; fsync off (test data). The
# machine's own cluster on 5432 is not touched. Idempotent: creates what is missing, starts
# what is stopped, and makes a replica again from its primary when it is not in recovery.
set -euo pipefail

HOST=127.0.0.1
ROLE=multids
version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
if [ -z "$version" ] || ! command -v pg_createcluster >/dev/null; then
  echo "setup-replicas: PostgreSQL's cluster tools (pg_createcluster) are missing" >&2
  exit 1
fi
bindir=/usr/lib/postgresql/$version/bin

as_postgres() { runuser -u postgres -- "$@"; }
ready() { pg_isready -q -h "$HOST" -p "$1"; }
sql() { psql -qAtX -v ON_ERROR_STOP=1 -h "$HOST" -p "$1" -U postgres -d postgres -c "$2"; }

wait_ready() {  # port; fails (no exit) when nothing answers within 60 s
  for _ in $(seq 1 120); do
    ready "$1" && return 0
    sleep 0.5
  done
  echo "setup-replicas: nothing accepts connections on $HOST:$1 after 60 s" >&2
  return 1
}

configure() {  # cluster name, port
  local conf=/etc/postgresql/$version/$1
  cat >"$conf/conf.d/multids-replicas.conf" <<CONF
listen_addresses = '$HOST'
port = $2
max_connections = 200
shared_buffers = 32MB
fsync = off
full_page_writes = off
wal_level = replica
max_wal_senders = 10
hot_standby = on
hot_standby_feedback = on
wal_keep_size = 256MB
CONF
  cat >"$conf/pg_hba.conf" <<HBA
local   all          all                 trust
host    all          all   $HOST/32      trust
host    replication  all   $HOST/32      trust
HBA
}

start() {  # cluster name, port; fails when the cluster cannot start
  if ! ready "$2"; then
    if ! pg_ctlcluster --skip-systemctl-redirect "$version" "$1" start; then
      # "already running" (still starting) is fine; anything else is not
      [ "$(pg_lsclusters -h "$version" "$1" | awk '{print $4}')" = online ] || return 1
    fi
  fi
  wait_ready "$2"
}

primary() {  # cluster name, port
  if [ ! -d "/etc/postgresql/$version/$1" ]; then
    echo "setup-replicas: creating primary $1 on $2"
    pg_createcluster "$version" "$1" -p "$2" >/dev/null
  fi
  configure "$1" "$2"
  start "$1" "$2" || exit 1
  sql "$2" "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'" | grep -q 1 ||
    sql "$2" "CREATE ROLE $ROLE LOGIN CREATEDB"
}

replica() {  # cluster name, port, primary's port
  local data=/var/lib/postgresql/$version/$1
  if [ -d "/etc/postgresql/$version/$1" ]; then
    if start "$1" "$2" && [ "$(sql "$2" 'SELECT pg_is_in_recovery()' 2>/dev/null)" = "t" ]; then
      # A paused replay (a test stopped half-way) must not outlive the run.
      sql "$2" "SELECT pg_wal_replay_resume()" >/dev/null
      sql "$2" "ALTER SYSTEM RESET recovery_min_apply_delay" >/dev/null
      sql "$2" "SELECT pg_reload_conf()" >/dev/null
      return 0
    fi
    echo "setup-replicas: $1 is not a replica of $HOST:$3; making it again"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$1" stop -m immediate || true
    pg_dropcluster "$version" "$1"
  fi
  echo "setup-replicas: creating replica $1 on $2 from $HOST:$3"
  pg_createcluster "$version" "$1" -p "$2" >/dev/null
  configure "$1" "$2"
  find "$data" -mindepth 1 -delete  # pg_basebackup fills the empty directory
  as_postgres "$bindir/pg_basebackup" -h "$HOST" -p "$3" -U postgres -D "$data" -R -X stream -c fast
  start "$1" "$2" || exit 1
}

primary multids_a 5433
primary multids_b 5435
replica multids_a_replica 5434 5433
replica multids_b_replica 5436 5435

for port in 5434 5436; do
  if [ "$(sql "$port" 'SELECT pg_is_in_recovery()')" != "t" ]; then
    echo "setup-replicas: $HOST:$port is up but not a replica" >&2
    exit 1
  fi
done
echo "setup-replicas: primaries on 5433 and 5435, their streaming replicas on 5434 and 5436"
