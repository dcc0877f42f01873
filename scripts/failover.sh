#!/usr/bin/env bash
# Failover experiment: a 3-node cluster under a steady read/write workload, then
#   1. SIGKILL n2 (a node without the database)   — crash
#   2. restart n2                                  — rejoin
#   3. SIGSTOP n3                                  — frozen process / silent partition
#   4. SIGCONT n3                                  — it comes back
# and a report: detection time per event, how long the customers the node owned took to be
# written again (p50/p99/max), errors clients saw, customers per node before/after, stale
# reads and acknowledged writes lost (both must be 0; the script exits non-zero otherwise).
# The workload and its report are `customer-cluster workload` (src/faults/).
#
# Usage: scripts/failover.sh            (phases of CC_PHASE_S seconds, default 8)
# Env:   CC_RUN_DIR (default ./run/failover), CC_PROFILE (release|debug), CC_PHASE_S,
#        CC_CUSTOMERS (default 120), CC_CONCURRENCY (default 12), CC_BASE_HTTP (8080) and
#        CC_BASE_CLUSTER (4700) as for cluster.sh (node k on HTTP base+k, cluster base+k)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CC_RUN_DIR="${CC_RUN_DIR:-$ROOT/run/failover}"
export CC_PROFILE="${CC_PROFILE:-release}"
export CC_BASE_HTTP="${CC_BASE_HTTP:-8080}"
export CC_BASE_CLUSTER="${CC_BASE_CLUSTER:-4700}"
PHASE_S="${CC_PHASE_S:-8}"
CLUSTER="$ROOT/scripts/cluster.sh"
BIN="$ROOT/target/$CC_PROFILE/customer-cluster"
RUN="$CC_RUN_DIR"
EVENTS="$RUN/events"
WORKLOAD_PID_FILE="$RUN/workload.pid"
# HTTP URL of node $1 (n2 or 2), where cluster.sh started it.
url() { echo "http://127.0.0.1:$((CC_BASE_HTTP + ${1#n}))"; }
# A path as the user can paste it: relative to the current directory when under it.
rel() { case "$1" in "$PWD"/*) echo "${1#"$PWD"/}" ;; *) echo "$1" ;; esac; }

cleanup() {
  local status=$?
  if [[ -f "$WORKLOAD_PID_FILE" ]]; then
    local wpid
    wpid="$(cat "$WORKLOAD_PID_FILE")"
    if [[ -r "/proc/$wpid/cmdline" ]] && tr '\0' ' ' < "/proc/$wpid/cmdline" | grep -q "customer-cluster workload"; then
      kill "$wpid" 2>/dev/null || true
    fi
    rm -f "$WORKLOAD_PID_FILE"
  fi
  "$CLUSTER" down > /dev/null 2>&1 || true
  exit "$status"
}
trap cleanup EXIT INT TERM

event() {
  echo "$(date +%s%3N) $1 $2" >> "$EVENTS"
  echo "[$(date +%T)] $1 $2"
}

# Waits until the node named $1 answers /v1/cluster with $2 members.
wait_members() {
  local url want="$2" deadline=$((SECONDS + 60)) got
  url="$(url "$1")"
  while (( SECONDS < deadline )); do
    got="$("$BIN" status --json --node "$url" --timeout-ms 500 2>/dev/null | grep -o '"cluster_addr"' | wc -l | tr -d ' ')" || got=0
    [[ "$got" == "$want" ]] && return 0
    sleep 0.2
  done
  echo "timed out waiting for $1 to see $want members" >&2
  return 1
}

mkdir -p "$RUN"
"$CLUSTER" down > /dev/null 2>&1 || true
rm -f "$RUN"/n*.db "$RUN"/n*.db-wal "$RUN"/n*.db-shm "$RUN"/n*.log "$EVENTS" "$RUN/failover.json"
"$CLUSTER" up 3
# shellcheck source=/dev/null
source "$RUN/env"
: > "$EVENTS"

echo
echo "starting the workload (${CC_CUSTOMERS:-120} customers, ${CC_CONCURRENCY:-12} workers)..."
"$BIN" workload \
  --nodes "$(url n1),$(url n2),$(url n3)" \
  --customers "${CC_CUSTOMERS:-120}" --concurrency "${CC_CONCURRENCY:-12}" \
  --duration-s $((PHASE_S * 5 + 5)) --events "$EVENTS" --out "$RUN/failover.json" \
  > "$RUN/workload.out" 2> "$RUN/workload.err" &
echo $! > "$WORKLOAD_PID_FILE"
until grep -q "workload running" "$RUN/workload.err" 2>/dev/null; do
  kill -0 "$(cat "$WORKLOAD_PID_FILE")" 2>/dev/null || { cat "$RUN/workload.err" >&2; exit 1; }
  sleep 0.2
done

sleep "$PHASE_S"
# Leaving events are stamped after the signal: recovery counts only writes sent after it.
"$CLUSTER" kill n2 > /dev/null
event kill n2
sleep "$PHASE_S"
event restart n2
"$CLUSTER" restart n2 > /dev/null
wait_members n1 3
sleep "$PHASE_S"
"$CLUSTER" freeze n3 > /dev/null
event freeze n3
sleep "$PHASE_S"
event thaw n3
"$CLUSTER" thaw n3 > /dev/null
wait_members n1 3

echo "waiting for the workload to finish and verify every acknowledged write..."
status=0
wait "$(cat "$WORKLOAD_PID_FILE")" || status=$?
rm -f "$WORKLOAD_PID_FILE"
echo
cat "$RUN/workload.out"
grep -v "^workload running" "$RUN/workload.err" >&2 || true
echo "report: $(rel "$RUN/failover.json")   logs: $(rel "$RUN")/n*.log"
exit "$status"
