#!/usr/bin/env bash
# Local cluster control: start, inspect, break and stop a cluster of customer-cluster nodes
# on 127.0.0.1. Node k listens on HTTP 808k and cluster 470k; node 1 hosts the database.
#
#   scripts/cluster.sh up [N]        build once, start N nodes (default 3), wait until all see N members
#   scripts/cluster.sh down          stop every node (SIGTERM, then SIGKILL after a grace period)
#   scripts/cluster.sh status        which nodes run, and the cluster as node 1 (or any live node) sees it
#   scripts/cluster.sh kill NODE     SIGKILL one node (crash)
#   scripts/cluster.sh stop NODE     SIGTERM one node (graceful leave)
#   scripts/cluster.sh freeze NODE   SIGSTOP one node (hung process / silent partition)
#   scripts/cluster.sh thaw NODE     SIGCONT a frozen node
#   scripts/cluster.sh restart NODE  start a node again (killing it first if it runs)
#   scripts/cluster.sh logs NODE [-f] print (or follow) a node's log
#
# NODE is n2 or 2. State lives in $CC_RUN_DIR (default ./run): PID files, logs, the database,
# the cookie and API token files, and an env file to `source`. Only processes whose PID files
# this script wrote are ever signalled, and only after checking they still run our binary.
#
# Environment: CC_RUN_DIR, CC_PROFILE (release|debug, default release), CC_BASE_HTTP (8080),
# CC_BASE_CLUSTER (4700), CC_WAIT_S (60), CC_NODE_ARGS (extra flags for every node).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${CC_RUN_DIR:-$ROOT/run}"
PROFILE="${CC_PROFILE:-release}"
BASE_HTTP="${CC_BASE_HTTP:-8080}"
BASE_CLUSTER="${CC_BASE_CLUSTER:-4700}"
WAIT_S="${CC_WAIT_S:-60}"
BIN="$ROOT/target/$PROFILE/customer-cluster"

die() { echo "cluster.sh: $*" >&2; exit 1; }

node_name() {
  local n="${1:-}"
  [[ -n "$n" ]] || die "missing NODE (e.g. n2)"
  n="${n#n}"
  [[ "$n" =~ ^[0-9]+$ ]] || die "NODE must look like n2 or 2, got '$1'"
  echo "n$n"
}
node_index() { echo "${1#n}"; }
http_url() { echo "http://127.0.0.1:$((BASE_HTTP + $(node_index "$1")))"; }
pid_file() { echo "$RUN/$1.pid"; }

# PID of a node if it is running our binary, else empty.
live_pid() {
  local f pid
  f="$(pid_file "$1")"
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "customer-cluster node"; then
    echo "$pid"
  fi
}

known_nodes() {
  local f
  for f in "$RUN"/n*.pid; do
    [[ -e "$f" ]] && basename "$f" .pid
  done | sort -V
}

build() {
  echo "building ($PROFILE)..."
  local flag=()
  [[ "$PROFILE" == "release" ]] && flag=(--release)
  (cd "$ROOT" && cargo build --quiet "${flag[@]}" --bin customer-cluster)
}

secrets() {
  mkdir -p "$RUN"
  if [[ ! -s "$RUN/cookie" ]]; then
    (umask 077; od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$RUN/cookie")
  fi
  if [[ ! -s "$RUN/token" ]]; then
    (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$RUN/token")
  fi
  {
    echo "export CUSTOMER_CLUSTER_NODE=$(http_url n1)"
    echo "export CUSTOMER_CLUSTER_TOKEN=$(cat "$RUN/token")"
  } > "$RUN/env"
}

start_node() {
  local name="$1" i args
  i="$(node_index "$name")"
  [[ -n "$(live_pid "$name")" ]] && { echo "$name already runs (pid $(live_pid "$name"))"; return 0; }
  args=(node --cookie-file "$RUN/cookie" --api-token-file "$RUN/token" --data-dir "$RUN")
  # config/nodeK.toml (if any) supplies the rest, e.g. node 1's database; the flags below win
  # over it so CC_BASE_HTTP / CC_BASE_CLUSTER can move the whole cluster to other ports.
  [[ -f "$ROOT/config/node$i.toml" ]] && args+=(--config "$ROOT/config/node$i.toml")
  args+=(--name "$name" --http-addr "127.0.0.1:$((BASE_HTTP + i))" --cluster-addr "127.0.0.1:$((BASE_CLUSTER + i))")
  (( i > 1 )) && args+=(--seeds "127.0.0.1:$((BASE_CLUSTER + 1))")
  # shellcheck disable=SC2206
  [[ -n "${CC_NODE_ARGS:-}" ]] && args+=(${CC_NODE_ARGS})
  nohup "$BIN" "${args[@]}" >> "$RUN/$name.log" 2>&1 < /dev/null &
  echo $! > "$(pid_file "$name")"
  echo "started $name (pid $!, $(http_url "$name"), log $RUN/$name.log)"
}

# Number of members node $1 reports, or 0 if it does not answer.
members_seen() {
  local out
  out="$("$BIN" status --json --node "$(http_url "$1")" --token "$(cat "$RUN/token")" --timeout-ms 1000 2>/dev/null)" || { echo 0; return; }
  printf '%s' "$out" | grep -o '"cluster_addr"' | wc -l | tr -d ' '
}

wait_converged() {
  local n="$1" deadline name
  deadline=$((SECONDS + WAIT_S))
  for name in $(known_nodes); do
    [[ -n "$(live_pid "$name")" ]] || continue
    until [[ "$(members_seen "$name")" == "$n" ]]; do
      if [[ -z "$(live_pid "$name")" ]]; then
        echo "$name exited; last log lines:" >&2
        tail -n 20 "$RUN/$name.log" >&2
        return 1
      fi
      (( SECONDS < deadline )) || { echo "timed out waiting for $name to see $n members" >&2; return 1; }
      sleep 0.2
    done
  done
}

cmd_up() {
  local n="${1:-3}" i
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "up takes a node count, got '$n'"
  build
  secrets
  for ((i = 1; i <= n; i++)); do start_node "n$i"; done
  echo "waiting until every node sees $n members..."
  wait_converged "$n"
  echo
  "$BIN" status --node "$(http_url n1)" --token "$(cat "$RUN/token")"
  echo
  echo "HTTP:  $(for ((i = 1; i <= n; i++)); do printf '%s ' "$(http_url "n$i")"; done)"
  echo "Token: $(cat "$RUN/token")"
  echo "Use:   source $RUN/env   # sets CUSTOMER_CLUSTER_NODE and CUSTOMER_CLUSTER_TOKEN for the CLI"
}

signal_node() {
  local sig="$1" name pid
  name="$(node_name "${2:-}")"
  pid="$(live_pid "$name")"
  [[ -n "$pid" ]] || die "$name is not running"
  kill "-$sig" "$pid"
  echo "sent SIG$sig to $name (pid $pid)"
}

cmd_stop_one() {
  local name pid
  name="$(node_name "${1:-}")"
  pid="$(live_pid "$name")"
  [[ -n "$pid" ]] || die "$name is not running"
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    [[ -z "$(live_pid "$name")" ]] && { echo "$name stopped"; return 0; }
    sleep 0.1
  done
  echo "$name did not stop within 10 s; sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_down() {
  local name pid any=0
  for name in $(known_nodes); do
    pid="$(live_pid "$name")"
    if [[ -n "$pid" ]]; then
      any=1
      kill -CONT "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for _ in $(seq 1 100); do
    local alive=0
    for name in $(known_nodes); do [[ -n "$(live_pid "$name")" ]] && alive=1; done
    [[ "$alive" == 0 ]] && break
    sleep 0.1
  done
  for name in $(known_nodes); do
    pid="$(live_pid "$name")"
    [[ -n "$pid" ]] && { echo "$name still running; SIGKILL" >&2; kill -KILL "$pid" || true; }
    rm -f "$(pid_file "$name")"
  done
  [[ "$any" == 1 ]] && echo "cluster stopped" || echo "no node was running"
}

cmd_status() {
  local name pid asked=""
  for name in $(known_nodes); do
    pid="$(live_pid "$name")"
    if [[ -z "$pid" ]]; then
      echo "$name: not running"
    elif [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == T* ]]; then
      echo "$name: frozen (pid $pid, SIGSTOP)"
    else
      echo "$name: running (pid $pid, $(http_url "$name"))"
      [[ -z "$asked" ]] && asked="$name"
    fi
  done
  [[ -n "$asked" ]] || { echo "no node is running"; return 0; }
  echo
  "$BIN" status --node "$(http_url "$asked")" --token "$(cat "$RUN/token")"
}

cmd_restart() {
  local name
  name="$(node_name "${1:-}")"
  [[ -x "$BIN" ]] || build
  secrets
  if [[ -n "$(live_pid "$name")" ]]; then
    kill -KILL "$(live_pid "$name")"
    sleep 0.2
  fi
  start_node "$name"
}

cmd_logs() {
  local name
  name="$(node_name "${1:-}")"
  [[ -f "$RUN/$name.log" ]] || die "no log for $name in $RUN"
  if [[ "${2:-}" == "-f" ]]; then tail -n 50 -f "$RUN/$name.log"; else tail -n 100 "$RUN/$name.log"; fi
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    kill) signal_node KILL "$@" ;;
    stop) cmd_stop_one "$@" ;;
    freeze) signal_node STOP "$@" ;;
    thaw) signal_node CONT "$@" ;;
    restart) cmd_restart "$@" ;;
    logs) cmd_logs "$@" ;;
    ""|-h|--help|help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$cmd' (try --help)" ;;
  esac
}

main "$@"
