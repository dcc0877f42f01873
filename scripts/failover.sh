#!/usr/bin/env bash
# Failover experiment: a 3-node cluster (n1 hosts the database) under a steady read/write
# workload, one fault per scenario, each healed before the next:
#   kill       SIGKILL n2, then restart it                    — crash
#   freeze     SIGSTOP n3, then SIGCONT                        — hung process / silent partition
# and, as root, with every node in its own network namespace (scripts/cluster.sh up --netns):
#   isolate    cut n2 from both peers, then heal              — full partition of one node
#   minority   cut the database node n1 from n2 and n3, heal  — the database on the minority side
#   partial    cut n2 from n3 while both reach n1, heal       — partial partition
#   db-cut     cut n3 from the database node n1 only, heal    — node-to-database cut
# Per scenario it prints: detection time (until every other node agrees; n/a when the others
# never all lose the node, as in a partial cut), how long the customers the node owned took to
# be written again (p50/p99/max), 503s by entry node, acknowledged writes lost, stale reads,
# and the linearizability checker's verdict on the recorded history (saved for
# `customer-cluster check-history`). Any lost write, stale read or non-linearizable history
# makes the script exit non-zero. The workload and its report are `customer-cluster workload`.
#
# Usage: scripts/failover.sh [SCENARIO...]   (default: every scenario this user can run)
# Env:   CC_RUN_DIR (default ./run/failover), CC_PROFILE (release|debug), CC_PHASE_S (seconds
#        before, during and after each fault; default 8), CC_CUSTOMERS (default 120),
#        CC_CONCURRENCY (default 12), CC_BASE_HTTP (8080) and CC_BASE_CLUSTER (4700) as for
#        cluster.sh (node k on HTTP base+k, cluster base+k)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CC_RUN_DIR="${CC_RUN_DIR:-$ROOT/run/failover}"
export CC_PROFILE="${CC_PROFILE:-release}"
PHASE_S="${CC_PHASE_S:-8}"
export CC_BASE_HTTP="${CC_BASE_HTTP:-8080}" CC_BASE_CLUSTER="${CC_BASE_CLUSTER:-4700}"
CLUSTER="$ROOT/scripts/cluster.sh"
BIN="$ROOT/target/$CC_PROFILE/customer-cluster"
RUN="$CC_RUN_DIR"
WORKLOAD_PID_FILE="$RUN/workload.pid"
PROCESS_SCENARIOS=(kill freeze)
PARTITION_SCENARIOS=(isolate minority partial db-cut)

cleanup() {
  local status=$?
  stop_workload
  "$CLUSTER" down > /dev/null 2>&1 || true
  exit "$status"
}

# Stops a workload this script started (checked by its command line before signalling).
stop_workload() {
  if [[ -f "$WORKLOAD_PID_FILE" ]]; then
    local wpid
    wpid="$(cat "$WORKLOAD_PID_FILE")"
    if [[ -r "/proc/$wpid/cmdline" ]] && tr '\0' ' ' < "/proc/$wpid/cmdline" | grep -q "customer-cluster workload"; then
      kill "$wpid" 2>/dev/null || true
    fi
    rm -f "$WORKLOAD_PID_FILE"
  fi
}
trap cleanup EXIT INT TERM

# HTTP URL of node $1 (n1..n3): on loopback, or at its namespace's address with --netns.
url() {
  local i="${1#n}" subnet
  if [[ -f "$RUN/netns.env" ]]; then
    subnet="$(sed -n 's/^NETNS_SUBNET=//p' "$RUN/netns.env")"
    echo "http://10.213.$subnet.$i:$((CC_BASE_HTTP + i))"
  else
    echo "http://127.0.0.1:$((CC_BASE_HTTP + i))"
  fi
}

# A path as the user can paste it: relative to the current directory when under it.
rel() { case "$1" in "$PWD"/*) echo "${1#"$PWD"/}" ;; *) echo "$1" ;; esac; }

# Waits until node $1 answers /v1/cluster with $2 members.
wait_members() {
  local want="$2" deadline=$((SECONDS + 60)) got
  while (( SECONDS < deadline )); do
    got="$(CUSTOMER_CLUSTER_INSECURE_HTTP=true "$BIN" status --json --node "$(url "$1")" --timeout-ms 500 2>/dev/null | grep -o '"cluster_addr"' | wc -l | tr -d ' ')" || got=0
    [[ "$got" == "$want" ]] && return 0
    sleep 0.2
  done
  echo "timed out waiting for $1 to see $want members" >&2
  return 1
}

# Appends an event (`<unix ms> <kind> <node>`) for the workload's report.
event() {
  echo "$(date +%s%3N) $1 $2" >> "$EVENTS"
  echo "[$(date +%T)] $1 $2"
}

# The fault of scenario $1, and its heal.
inject() {
  case "$1" in
    kill) "$CLUSTER" kill n2 > /dev/null; event kill n2 ;;
    freeze) "$CLUSTER" freeze n3 > /dev/null; event freeze n3 ;;
    isolate) "$CLUSTER" isolate n2 > /dev/null; event isolate n2 ;;
    minority) "$CLUSTER" partition n1 n2,n3 > /dev/null; event isolate n1 ;;
    partial) "$CLUSTER" partition n2 n3 > /dev/null; event cut n3 ;;
    db-cut) "$CLUSTER" partition n3 n1 > /dev/null; event cut n3 ;;
  esac
}
heal() {
  case "$1" in
    kill) event restart n2; "$CLUSTER" restart n2 > /dev/null ;;
    freeze) event thaw n3; "$CLUSTER" thaw n3 > /dev/null ;;
    isolate) event heal n2; "$CLUSTER" heal > /dev/null ;;
    minority) event heal n1; "$CLUSTER" heal > /dev/null ;;
    partial | db-cut) event heal n3; "$CLUSTER" heal > /dev/null ;;
  esac
  wait_members n1 3
  wait_members n2 3
  wait_members n3 3
}

# One scenario: workload for PHASE_S, the fault for PHASE_S, heal, PHASE_S more; then the
# workload reads everything back, checks the history and prints its report.
scenario() {
  local name="$1" status=0
  EVENTS="$RUN/$name.events"
  : > "$EVENTS"
  echo
  echo "=== scenario $name ==="
  "$BIN" workload \
    --nodes "$(url n1),$(url n2),$(url n3)" \
    --customers "${CC_CUSTOMERS:-120}" --concurrency "${CC_CONCURRENCY:-12}" \
    --duration-s $((PHASE_S * 3 + 3)) --events "$EVENTS" --out "$RUN/$name.json" \
    --history "$RUN/$name.history.jsonl" \
    > "$RUN/$name.out" 2> "$RUN/$name.err" &
  echo $! > "$WORKLOAD_PID_FILE"
  until grep -q "workload running" "$RUN/$name.err" 2>/dev/null; do
    kill -0 "$(cat "$WORKLOAD_PID_FILE")" 2>/dev/null || { cat "$RUN/$name.err" >&2; exit 1; }
    sleep 0.2
  done
  sleep "$PHASE_S"
  inject "$name"
  sleep "$PHASE_S"
  heal "$name"
  wait "$(cat "$WORKLOAD_PID_FILE")" || status=$?
  rm -f "$WORKLOAD_PID_FILE"
  # The report without its per-second timeline (kept in $RUN/$name.out and .json).
  sed '/^== timeline/,$d' "$RUN/$name.out"
  grep -v "^workload running" "$RUN/$name.err" >&2 || true
  echo "history: $(rel "$RUN/$name.history.jsonl") (customer-cluster check-history FILE)"
  return "$status"
}

scenarios=("$@")
if (( ${#scenarios[@]} == 0 )); then
  scenarios=("${PROCESS_SCENARIOS[@]}")
  if (( EUID == 0 )) && command -v nft > /dev/null; then
    scenarios+=("${PARTITION_SCENARIOS[@]}")
  else
    echo "!! partition scenarios (${PARTITION_SCENARIOS[*]}) skipped: they need root and nft" >&2
    echo "!! (each node in its own network namespace); run 'sudo scripts/failover.sh'" >&2
  fi
fi
netns=()
for s in "${scenarios[@]}"; do
  case "$s" in
    kill | freeze) ;;
    isolate | minority | partial | db-cut) netns=(--netns) ;;
    *) echo "unknown scenario '$s' (kill freeze isolate minority partial db-cut)" >&2; exit 2 ;;
  esac
done
if (( ${#netns[@]} )) && (( EUID != 0 )); then
  echo "scenarios ${scenarios[*]} need root: network namespaces and nftables" >&2
  exit 2
fi

mkdir -p "$RUN"
"$CLUSTER" down > /dev/null 2>&1 || true
rm -f "$RUN"/n*.db "$RUN"/n*.db-wal "$RUN"/n*.db-shm "$RUN"/n*.log "$RUN"/*.events "$RUN"/*.json \
  "$RUN"/*.jsonl "$RUN"/*.out "$RUN"/*.err
"$CLUSTER" up 3 "${netns[@]}"
# shellcheck source=/dev/null
source "$RUN/env"

failed=()
for s in "${scenarios[@]}"; do
  scenario "$s" || failed+=("$s")
done
echo
if (( ${#failed[@]} )); then
  echo "FAILED scenarios: ${failed[*]} (reports and histories in $(rel "$RUN"))"
  exit 1
fi
echo "every scenario kept its promises (reports and histories in $(rel "$RUN"))"
