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
#   scripts/cluster.sh up [N] --postgres    PostgreSQL instead of SQLite: starts a local server with
#                                           scripts/pg.sh (data in $CC_RUN_DIR/pg) and gives every
#                                           node --database-url-file, so every node runs a database
#                                           actor and none is the database node; `down` stops it too
#   scripts/cluster.sh secrets       create the run directory (0700), cookie, token and env (0600), and check the modes
#
# Partitions on one machine (root; `nft` from the nftables package):
#   scripts/cluster.sh up [N] --netns       each node in its own network namespace with its own
#                                           address 10.213.X.k (X = 0 unless taken), joined by a
#                                           bridge; the host reaches every node at 10.213.X.k
#   scripts/cluster.sh partition A B        cut A from B both ways (comma lists: n1,n2 n3); cuts add up
#   scripts/cluster.sh isolate NODE         cut NODE from every other node
#   scripts/cluster.sh heal                 remove every cut
# A cut drops packets (connections hang, as on a real network); `down` also removes the
# namespaces, the bridge and the host's veth, and a failed `up --netns` removes them at once.
#
# NODE is n2 or 2. State lives in $CC_RUN_DIR (default ./run): PID files, logs, the database,
# the cookie and API token files, and an env file to `source`. Only processes whose PID files
# this script wrote are ever signalled, and only after checking they still run our binary.
#
# Environment: CC_RUN_DIR, CC_PROFILE (release|debug, default release), CC_BASE_HTTP (8080),
# CC_BASE_CLUSTER (4700), CC_WAIT_S (60), CC_NODE_ARGS (extra flags for every node),
# CC_NODE_BIN (the binary nodes run; default this checkout's build, which the script always uses).
# Paths are printed relative to the current directory when they are under it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${CC_RUN_DIR:-$ROOT/run}"
PROFILE="${CC_PROFILE:-release}"
BASE_HTTP="${CC_BASE_HTTP:-8080}"
BASE_CLUSTER="${CC_BASE_CLUSTER:-4700}"
WAIT_S="${CC_WAIT_S:-60}"
BIN="$ROOT/target/$PROFILE/customer-cluster"
# Nodes may run another build (scripts/bench.sh --baseline); status and waits use $BIN.
NODE_BIN="${CC_NODE_BIN:-$BIN}"
# With `up --netns`: the namespace tag, subnet octet and host count, and the cut node pairs.
NETNS_STATE="$RUN/netns.env"
NETNS_CUTS="$RUN/netns.cuts"
# Shared with the Rust test lab (tests/support/netns.rs) so parallel labs never pick one subnet.
NETNS_LOCK="/tmp/customer-cluster-netlab.lock"
NETNS_TABLE="cc_nemesis"
NETNS_TAG=""
NETNS_SUBNET=""
NETNS_HOSTS=0
# With `up --postgres`: the URL every node is given (its presence selects PostgreSQL).
DATABASE_URL_FILE="$RUN/database-url"

die() { echo "cluster.sh: $*" >&2; exit 1; }
# A postgres:// URL on stdin with its password replaced by ***.
redact_url() { sed -E 's#^([a-z]+://[^:/@]*):[^@]*@#\1:***@#'; }
# A path as the user can paste it: relative to the current directory when under it.
rel() { case "$1" in "$PWD"/*) echo "${1#"$PWD"/}" ;; *) echo "$1" ;; esac; }

node_name() {
  local n="${1:-}"
  [[ -n "$n" ]] || die "missing NODE (e.g. n2)"
  n="${n#n}"
  [[ "$n" =~ ^[0-9]+$ ]] || die "NODE must look like n2 or 2, got '$1'"
  echo "n$n"
}
node_index() { echo "${1#n}"; }
netns_on() { [[ -n "$NETNS_TAG" ]]; }
# The address a node binds: its namespace's with --netns, else loopback.
node_ip() {
  if netns_on; then echo "10.213.$NETNS_SUBNET.$(node_index "$1")"; else echo "127.0.0.1"; fi
}
http_url() { echo "http://$(node_ip "$1"):$((BASE_HTTP + $(node_index "$1")))"; }
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

# The run directory (0700) and its secrets: cookie, API token, and the env file that holds
# the token — all 0600, written under umask 077 so no other user can read them, even briefly.
# chmod also tightens files left by older versions of this script.
secrets() {
  (umask 077; mkdir -p "$RUN")
  chmod 700 "$RUN"
  if [[ ! -s "$RUN/cookie" ]]; then
    (umask 077; od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$RUN/cookie")
  fi
  if [[ ! -s "$RUN/token" ]]; then
    (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$RUN/token")
  fi
  (
    umask 077
    {
      echo "export CUSTOMER_CLUSTER_NODE=$(http_url n1)"
      echo "export CUSTOMER_CLUSTER_TOKEN=$(cat "$RUN/token")"
      # The lab's addresses are private namespaces on this host: plain http is fine there.
      if netns_on; then echo "export CUSTOMER_CLUSTER_INSECURE_HTTP=true"; fi
    } > "$RUN/env"
  )
  chmod 600 "$RUN/cookie" "$RUN/token" "$RUN/env"
}

# `secrets` on its own, then a check that every secret file is 0600 and the directory 0700
# (.ci/run calls it on a scratch directory).
cmd_secrets() {
  secrets
  local f mode
  # With `up --postgres`, also the database URL and the PostgreSQL role's password.
  for f in "$RUN" "$RUN/cookie" "$RUN/token" "$RUN/env" "$DATABASE_URL_FILE" "$RUN/pg-password"; do
    [[ -e "$f" ]] || continue
    mode="$(stat -c %a "$f")"
    if [[ -d "$f" && "$mode" != 700 ]] || [[ -f "$f" && "$mode" != 600 ]]; then
      die "$f has mode $mode"
    fi
  done
  echo "secrets in $RUN: directory 0700, cookie/token/env 0600"
}

start_node() {
  local name="$1" i args
  i="$(node_index "$name")"
  [[ -n "$(live_pid "$name")" ]] && { echo "$name already runs (pid $(live_pid "$name"))"; return 0; }
  args=(node --cookie-file "$RUN/cookie" --api-token-file "$RUN/token" --data-dir "$RUN")
  # config/nodeK.toml (if any) supplies the rest, e.g. node 1's database; the flags below win
  # over it so CC_BASE_HTTP / CC_BASE_CLUSTER can move the whole cluster to other ports.
  # With PostgreSQL the node files are left out (node 1's names a SQLite file, which excludes
  # --database-url); the flags below set everything they would.
  if [[ -f "$DATABASE_URL_FILE" ]]; then
    args+=(--database-url-file "$DATABASE_URL_FILE")
  elif [[ -f "$ROOT/config/node$i.toml" ]]; then
    args+=(--config "$ROOT/config/node$i.toml")
  fi
  args+=(--name "$name" --http-addr "$(node_ip "$name"):$((BASE_HTTP + i))" --cluster-addr "$(node_ip "$name"):$((BASE_CLUSTER + i))")
  (( i > 1 )) && args+=(--seeds "$(node_ip n1):$((BASE_CLUSTER + 1))")
  # shellcheck disable=SC2206
  [[ -n "${CC_NODE_ARGS:-}" ]] && args+=(${CC_NODE_ARGS})
  local launch=("$NODE_BIN")
  if netns_on; then
    (( i <= NETNS_HOSTS )) || die "$name has no namespace (up --netns made $NETNS_HOSTS)"
    # `ip netns exec` execs the binary, so $! below is the node's own PID.
    launch=(ip netns exec "$(netns_name "$name")" "$NODE_BIN")
  fi
  nohup "${launch[@]}" "${args[@]}" >> "$RUN/$name.log" 2>&1 < /dev/null &
  echo $! > "$(pid_file "$name")"
  echo "started $name (pid $!, $(http_url "$name"), log $(rel "$RUN/$name.log"))"
}

# The CLI with the API token in its environment (CUSTOMER_CLUSTER_TOKEN), never on its
# command line, where every local user could read it in `ps` and /proc/PID/cmdline.
# The CLI refuses plain http:// off the loopback; the --netns lab's addresses are private
# namespaces on this host, so there it is allowed.
cli() {
  local insecure=false
  if netns_on; then insecure=true; fi
  CUSTOMER_CLUSTER_TOKEN="$(cat "$RUN/token")" CUSTOMER_CLUSTER_INSECURE_HTTP="$insecure" "$BIN" "$@"
}

# Number of members node $1 reports, or 0 if it does not answer.
members_seen() {
  local out
  out="$(cli status --json --node "$(http_url "$1")" --timeout-ms 1000 2>/dev/null)" || { echo 0; return; }
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

# True once every member of node $1's view holds the leases of exactly the shards placement
# gives it: shard leases move to a joining node only after the old holder releases them, so
# right after the members converge one node may still hold them all. Nodes that report no
# leases_held at all predate shard leases (CC_NODE_BIN): nothing to wait for.
leases_settled() {
  local out
  out="$(cli status --json --node "$(http_url "$1")" --timeout-ms 1000 2>/dev/null)" || return 1
  [[ "$out" == *'"leases_held"'* ]] || return 0
  paste -d ' ' \
    <(printf '%s' "$out" | grep -o '"owned_share":[0-9.e-]*' | cut -d: -f2) \
    <(printf '%s' "$out" | grep -o '"leases_held":[0-9a-z]*' | cut -d: -f2) \
    | awk 'BEGIN { ok = 0 } { ok = 1; if ($2 == "null" || ($1 * 1024 - $2) ^ 2 > 0.25) bad = 1 } END { exit !(ok && !bad) }'
}

wait_leases() {
  local deadline=$((SECONDS + WAIT_S))
  until leases_settled n1; do
    (( SECONDS < deadline )) || { echo "timed out waiting for the shard leases to settle (see cluster.sh status)" >&2; return 1; }
    sleep 0.2
  done
}

cmd_up() {
  local n=3 netns=0 postgres=0 arg i
  for arg in "$@"; do
    case "$arg" in
      --netns) netns=1 ;;
      --postgres) postgres=1 ;;
      *) [[ "$arg" =~ ^[1-9][0-9]*$ ]] || die "up takes a node count, --netns and --postgres, got '$arg'"; n="$arg" ;;
    esac
  done
  # The local server listens on the host's loopback, which namespaced nodes cannot reach.
  [[ "$netns$postgres" != 11 ]] || die "--postgres and --netns cannot be combined (the server is on the host's 127.0.0.1)"
  (umask 077; mkdir -p "$RUN")
  rm -f "$DATABASE_URL_FILE"
  if [[ "$postgres" == 1 ]]; then
    # The URL holds the role's password: owner-only from its first byte.
    (umask 077; CC_RUN_DIR="$RUN" "$ROOT/scripts/pg.sh" up | tail -n 1 > "$DATABASE_URL_FILE.tmp")
    chmod 600 "$DATABASE_URL_FILE.tmp"
    mv "$DATABASE_URL_FILE.tmp" "$DATABASE_URL_FILE"
    echo "PostgreSQL: $(redact_url < "$DATABASE_URL_FILE") (URL with the password in $(rel "$DATABASE_URL_FILE"); every node runs a database actor)"
  fi
  if [[ "$netns" == 1 ]]; then
    netns_preflight
    # Anything failing from here on stops what started and removes the namespaces.
    trap 'rc=$?; if [[ $rc != 0 ]]; then echo "up --netns failed; cleaning up" >&2; cmd_down; fi' EXIT
    netns_up "$n"
  fi
  build
  secrets
  for ((i = 1; i <= n; i++)); do start_node "n$i"; done
  echo "waiting until every node sees $n members..."
  wait_converged "$n"
  echo "waiting until every node holds the leases of its shards..."
  wait_leases
  trap - EXIT
  echo
  cli status --node "$(http_url n1)"
  echo
  echo "HTTP:  $(for ((i = 1; i <= n; i++)); do printf '%s ' "$(http_url "n$i")"; done)"
  echo "Token: in $(rel "$RUN/token") (not printed: terminals are logged and shared)"
  echo "Use:   source $(rel "$RUN/env")   # sets CUSTOMER_CLUSTER_NODE and CUSTOMER_CLUSTER_TOKEN for the CLI"
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
  if [[ -f "$DATABASE_URL_FILE" ]]; then CC_RUN_DIR="$RUN" "$ROOT/scripts/pg.sh" down; fi
  if netns_on; then netns_down; fi
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
  if netns_on; then
    echo "network namespaces ${NETNS_TAG}n1..n$NETNS_HOSTS on 10.213.$NETNS_SUBNET.0/24, cuts: $(netns_cuts_text)"
  fi
  [[ -n "$asked" ]] || { echo "no node is running"; return 0; }
  echo
  cli status --node "$(http_url "$asked")"
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
  [[ -f "$RUN/$name.log" ]] || die "no log for $name in $(rel "$RUN")"
  if [[ "${2:-}" == "-f" ]]; then tail -n 50 -f "$RUN/$name.log"; else tail -n 100 "$RUN/$name.log"; fi
}

# ---- network namespaces (up --netns) -------------------------------------------------------
#
# Layout, as in tests/support/netns.rs: a hub namespace holds bridge br0 (in its own namespace
# so the host's firewall never sees the bridged frames); each node's namespace has eth0 with
# 10.213.X.k on it; the host gets 10.213.X.254 on veth <tag> so curl and the CLI reach every
# node. Names carry the PID of the `up` that made them, and are written to $NETNS_STATE before
# anything is created, so `down` can always remove them.

netns_name() { echo "${NETNS_TAG}n$(node_index "$1")"; }

load_netns() {
  if [[ -f "$NETNS_STATE" ]]; then
    # shellcheck disable=SC1090
    source "$NETNS_STATE"
  fi
}

# A third octet no address on this host uses yet; 0 when free.
free_subnet() {
  local used x
  used="$(ip -o -4 addr show | grep -o 'inet 10\.213\.[0-9]*\.' | cut -d. -f3 | sort -un || true)"
  for x in $(seq 0 255); do
    grep -qx "$x" <<< "$used" || { echo "$x"; return 0; }
  done
  die "every 10.213.X.0/24 is in use"
}

# Checks that need no cleanup when they fail: nothing has been created yet.
netns_preflight() {
  local name
  (( EUID == 0 )) || die "--netns needs root (network namespaces and nftables)"
  command -v nft > /dev/null || die "nft not found (apt-get install -y nftables)"
  [[ ! -f "$NETNS_STATE" ]] || die "namespaces of an earlier 'up --netns' exist ($NETNS_STATE); 'scripts/cluster.sh down' first"
  for name in $(known_nodes); do
    [[ -z "$(live_pid "$name")" ]] || die "$name already runs; 'scripts/cluster.sh down' first"
  done
}

netns_up() {
  local n="$1" i hub ns
  mkdir -p "$RUN"
  exec 9> "$NETNS_LOCK"
  flock 9
  NETNS_TAG="ccs$$"
  NETNS_SUBNET="$(free_subnet)"
  NETNS_HOSTS="$n"
  printf 'NETNS_TAG=%s\nNETNS_SUBNET=%s\nNETNS_HOSTS=%s\n' "$NETNS_TAG" "$NETNS_SUBNET" "$n" > "$NETNS_STATE"
  : > "$NETNS_CUTS"
  hub="${NETNS_TAG}hub"
  ip netns add "$hub"
  ip -n "$hub" link set lo up
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" link set br0 up
  ip link add "$NETNS_TAG" type veth peer name obs netns "$hub"
  ip -n "$hub" link set obs master br0 up
  ip addr add "10.213.$NETNS_SUBNET.254/24" dev "$NETNS_TAG"
  ip link set "$NETNS_TAG" up
  exec 9>&-
  for ((i = 1; i <= n; i++)); do
    ns="$(netns_name "n$i")"
    ip netns add "$ns"
    ip -n "$hub" link add "n$i" type veth peer name eth0 netns "$ns"
    ip -n "$hub" link set "n$i" master br0 up
    ip -n "$ns" addr add "10.213.$NETNS_SUBNET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    echo "namespace $ns: n$i at 10.213.$NETNS_SUBNET.$i"
  done
  echo "host: 10.213.$NETNS_SUBNET.254 on $NETNS_TAG (bridge br0 in namespace $hub)"
}

# Removes every namespace and the host veth; kills whatever still runs inside (nodes were
# already stopped by cmd_down through their PID files).
netns_down() {
  local i ns pid
  for ((i = 1; i <= NETNS_HOSTS; i++)); do
    ns="$(netns_name "n$i")"
    for pid in $(ip netns pids "$ns" 2> /dev/null || true); do kill -KILL "$pid" 2> /dev/null || true; done
    ip netns del "$ns" 2> /dev/null || true
  done
  ip link del "$NETNS_TAG" 2> /dev/null || true
  ip netns del "${NETNS_TAG}hub" 2> /dev/null || true
  rm -f "$NETNS_STATE" "$NETNS_CUTS"
  echo "removed namespaces ${NETNS_TAG}* and 10.213.$NETNS_SUBNET.0/24"
  NETNS_TAG=""
}

need_netns() {
  netns_on || die "no namespaces: start the cluster with 'scripts/cluster.sh up --netns'"
}

# "n1,n2" -> "1 2", checking each node has a namespace.
node_list() {
  local name i
  for name in ${1//,/ }; do
    i="$(node_index "$(node_name "$name")")"
    (( i >= 1 && i <= NETNS_HOSTS )) || die "n$i has no namespace (hosts n1..n$NETNS_HOSTS)"
    echo "$i"
  done
}

netns_cuts_text() {
  [[ -s "$NETNS_CUTS" ]] || { echo "none"; return 0; }
  awk '{printf "%sn%s<->n%s", (NR > 1 ? ", " : ""), $1, $2} END {print ""}' "$NETNS_CUTS"
}

# Rewrites every namespace's nemesis table from $NETNS_CUTS, one nft transaction per node:
# drop input from each node it is cut from (both ends do it, so a cut is symmetric).
netns_apply() {
  local i peers
  for ((i = 1; i <= NETNS_HOSTS; i++)); do
    peers="$(awk -v k="$i" -v net="10.213.$NETNS_SUBNET." \
      '$1 == k {print net $2} $2 == k {print net $1}' "$NETNS_CUTS" | paste -sd, -)"
    {
      echo "add table inet $NETNS_TABLE"
      echo "delete table inet $NETNS_TABLE"
      if [[ -n "$peers" ]]; then
        echo "table inet $NETNS_TABLE {"
        echo "  chain input {"
        echo "    type filter hook input priority -300; policy accept;"
        echo "    ip saddr { $peers } drop"
        echo "  }"
        echo "}"
      fi
    } | ip netns exec "$(netns_name "n$i")" nft -f -
  done
  echo "cuts: $(netns_cuts_text)"
}

cmd_partition() {
  local a b x y side_a side_b
  need_netns
  [[ $# == 2 ]] || die "partition takes two sides, e.g. 'partition n2 n3' or 'partition n1,n2 n3'"
  # Assignments, so that a bad node name stops the script (set -e) before anything is cut.
  side_a="$(node_list "$1")"
  side_b="$(node_list "$2")"
  for x in $side_a; do
    for y in $side_b; do
      [[ "$x" != "$y" ]] || die "n$x is on both sides"
    done
  done
  for x in $side_a; do
    for y in $side_b; do
      a=$((x < y ? x : y)); b=$((x < y ? y : x))
      echo "$a $b" >> "$NETNS_CUTS"
    done
  done
  sort -un -k1,1 -k2,2 -o "$NETNS_CUTS" "$NETNS_CUTS"
  netns_apply
}

cmd_isolate() {
  local k others i
  need_netns
  k="$(node_list "${1:-}")"
  others="$(for ((i = 1; i <= NETNS_HOSTS; i++)); do [[ "$i" == "$k" ]] || printf 'n%s,' "$i"; done)"
  cmd_partition "n$k" "${others%,}"
}

cmd_heal() {
  need_netns
  : > "$NETNS_CUTS"
  netns_apply
}

main() {
  local cmd="${1:-}"
  shift || true
  load_netns
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
    partition) cmd_partition "$@" ;;
    isolate) cmd_isolate "$@" ;;
    heal) cmd_heal ;;
    secrets) cmd_secrets ;;
    ""|-h|--help|help) sed -n '2,37p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$cmd' (try --help)" ;;
  esac
}

main "$@"
