#!/usr/bin/env bash
# A throwaway local PostgreSQL for development, tests and `cluster.sh up --postgres`.
#
#   scripts/pg.sh up       initdb (first time) into $CC_RUN_DIR/pg (default ./run/pg) and start it
#                          on its own free port and socket directory; prints the URL last
#   scripts/pg.sh url      prints the URL (postgres://cc:<password>@…) of the running server
#   scripts/pg.sh status   says whether it runs, where, and on which port
#   scripts/pg.sh down     stops it (the data directory stays; `up` starts it again)
#   scripts/pg.sh destroy  stops it and deletes its data directory
#
# Uses the server binaries already on the machine (/usr/lib/postgresql/*/bin, `pg_config
# --bindir`, PATH); touches no system service. Run as root, it runs the server as the
# `postgres` user (initdb refuses root). Nothing here listens beyond 127.0.0.1.
#
# Who can get in: the application role `cc` owns the database `customers` and may create
# databases (the tests make one each), but is no superuser, so it cannot run programs on the
# host (`COPY … TO PROGRAM`) or read its files. It logs in over TCP with a SCRAM password that
# `up` generates once into $CC_RUN_DIR/pg-password (0600) and puts in the URL; keep that URL
# in files and environments, off command lines. The superuser `postgres` logs in only over the
# Unix socket, only as the OS user running the server (peer), and the socket's directory is
# 0700: other local users can neither use it nor log in over TCP without the password.
set -euo pipefail

RUN_DIR="${CC_RUN_DIR:-$(pwd)/run}"
# Owner-only from the start (it holds pg-password; cluster.sh closes it the same way), so where
# the server's files go below does not change when cluster.sh later closes it.
(umask 077; mkdir -p "$RUN_DIR")
RUN_DIR="$(cd "$RUN_DIR" && pwd)"
PG_DIR="$RUN_DIR/pg"
# As root the server runs as `postgres`, which must reach the data directory: when some parent
# of the run directory is closed to it (a checkout under /root), keep the server's files in a
# directory of their own under /tmp, named after the run directory so every call finds it.
if [[ "$(id -u)" == 0 ]] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$RUN_DIR"; then
  PG_DIR="/tmp/cc-pg-$(printf '%s' "$RUN_DIR" | md5sum | cut -c1-12)"
fi
DATA="$PG_DIR/data"
SOCK="$PG_DIR/sock"
PORT_FILE="$PG_DIR/port"
LOG="$PG_DIR/server.log"
PASSWORD_FILE="$RUN_DIR/pg-password"
DB_NAME="customers"
DB_USER="cc"

die() { echo "pg.sh: $*" >&2; exit 1; }

find_bindir() {
  local candidate
  for candidate in /usr/lib/postgresql/*/bin; do
    [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" ]] && { echo "$candidate"; return; }
  done
  if command -v pg_config >/dev/null 2>&1; then
    candidate="$(pg_config --bindir)"
    [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" ]] && { echo "$candidate"; return; }
  fi
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return
  fi
  die "no PostgreSQL server binaries found (initdb, pg_ctl). Install them with:
    apt-get install postgresql        (Debian/Ubuntu; the service need not run)
then run this again."
}

BIN="$(find_bindir)"

# Runs a server binary as the postgres user when we are root (initdb and postgres refuse root).
as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user (apt-get install postgresql creates it)"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null \
    || echo $(( 20000 + RANDOM % 20000 ))
}

port() { cat "$PORT_FILE" 2>/dev/null || true; }

# The role's password: hex, so it needs no escaping in the URL or in SQL.
password() { cat "$PASSWORD_FILE"; }

url() { echo "postgres://$DB_USER:$(password)@127.0.0.1:$(port)/$DB_NAME"; }

# The OS user the server runs as: the only one the superuser's peer login maps.
server_os_user() { if [[ "$(id -u)" == 0 ]]; then echo postgres; else id -un; fi; }

# Access rules, rewritten on every start so a data directory made by an older version of this
# script (which trusted every local connection) is closed too. First match wins.
write_access_rules() {
  as_owner tee "$DATA/pg_hba.conf" >/dev/null <<HBA
# Written by scripts/pg.sh on every start.
# The superuser: Unix socket only, and only as the OS user that runs the server.
local all postgres          peer map=server_owner
host  all postgres 0.0.0.0/0 reject
host  all postgres ::/0      reject
# Everyone else: a SCRAM password (the socket directory is 0700 besides).
local all all               scram-sha-256
host  all all 127.0.0.1/32  scram-sha-256
host  all all ::1/128       scram-sha-256
HBA
  printf '# Written by scripts/pg.sh: the OS user running the server is the superuser.\nserver_owner %s postgres\n' \
    "$(server_os_user)" | as_owner tee "$DATA/pg_ident.conf" >/dev/null
}

running() { [[ -f "$DATA/postmaster.pid" ]] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

cmd_up() {
  (umask 077; mkdir -p "$PG_DIR" "$SOCK")
  chmod 700 "$PG_DIR" "$SOCK"
  if [[ "$(id -u)" == 0 ]]; then
    chown postgres "$PG_DIR" "$SOCK"
  fi
  if [[ ! -s "$PASSWORD_FILE" ]]; then
    (umask 077; od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$PASSWORD_FILE")
  fi
  chmod 600 "$PASSWORD_FILE"
  if running; then
    echo "already running on port $(port)"
    url
    return
  fi
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    # initdb wants a superuser password with a password method; nobody needs it (the superuser
    # logs in by peer only), so it is random and thrown away.
    local pwfile
    pwfile="$(mktemp "$PG_DIR/initdb-pw.XXXXXX")"
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$pwfile"
    if [[ "$(id -u)" == 0 ]]; then chown postgres "$pwfile"; fi
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --pwfile="$pwfile" \
      --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 \
      || { rm -f "$pwfile"; die "initdb failed; see $PG_DIR/initdb.log"; }
    rm -f "$pwfile"
  fi
  write_access_rules
  [[ -s "$PORT_FILE" ]] || free_port >"$PORT_FILE"
  # fsync stays on: the store's "acknowledged = durable" claim is tested against this server.
  as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 -o \
    "-p $(port) -k $SOCK -c listen_addresses=127.0.0.1 -c max_connections=200 -c unix_socket_permissions=0700 -c password_encryption=scram-sha-256" \
    start >/dev/null \
    || die "the server did not start; see $LOG"
  # On stdin, never on a command line. ALTER on every start: a role made by an older version of
  # this script was a superuser without a password.
  as_owner "$BIN/psql" -h "$SOCK" -p "$(port)" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt >/dev/null <<SQL
SELECT 'CREATE ROLE $DB_USER' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER')
\gexec
ALTER ROLE $DB_USER WITH LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '$(password)';
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$DB_NAME')
\gexec
ALTER DATABASE $DB_NAME OWNER TO $DB_USER;
SQL
  as_owner "$BIN/postgres" --version | sed 's/^/started /' >&2
  url
}

cmd_down() {
  if running; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    echo "stopped (data kept in $DATA)"
  elif stop_left_behind; then
    :
  else
    echo "not running"
  fi
}

# A server started under $RUN_DIR/pg while the run directory was still open to `postgres`, and
# closed since (cluster.sh makes it owner-only): pg_ctl, which runs as postgres, can no longer
# reach it, so root stops it by its postmaster PID (SIGINT: a fast shutdown).
stop_left_behind() {
  local pidfile="$RUN_DIR/pg/data/postmaster.pid" pid
  [[ "$(id -u)" == 0 && "$PG_DIR" != "$RUN_DIR/pg" && -f "$pidfile" ]] || return 1
  pid="$(head -1 "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  kill -INT "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { echo "stopped (data kept in $RUN_DIR/pg/data)"; return 0; }
    sleep 0.1
  done
  die "the server in $RUN_DIR/pg (pid $pid) did not stop within 10 s"
}

cmd_status() {
  if running; then
    echo "running: port $(port), data $DATA, socket $SOCK, pid $(head -1 "$DATA/postmaster.pid")"
    url
  else
    echo "not running (data: $([[ -d "$DATA" ]] && echo "$DATA" || echo none))"
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  url) running || die "not running: scripts/pg.sh up"; url ;;
  status) cmd_status ;;
  destroy) cmd_down; rm -rf "$PG_DIR"; rm -f "$PASSWORD_FILE"; echo "removed $PG_DIR" ;;
  *) echo "usage: $0 up|down|url|status|destroy" >&2; exit 2 ;;
esac
