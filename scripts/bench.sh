#!/usr/bin/env bash
# Benchmarks with baselines from the same invocation. Builds release, then:
#   3-node cluster (n1 hosts the database):
#     ceiling   GET /health on one node (the HTTP stack with no cluster work)
#     get-local GET routed to each key's owner (no hop)
#     get-remote GET routed to a non-owner (one remote hop)
#     mix       80% GET / 20% PATCH, uniform keys, any entry node
#     mix-zipf  the same with zipf(0.99) keys
#     create    POST only (durable writes through the cluster)
#     ping      bare heartbeat round trips n1 -> n1 and n1 -> n2 (the cost of one hop)
#     get-*-1k  the same GETs open-loop at 1000 req/s (latency without queueing)
#   1-node cluster (baseline for the price of distribution):
#     GET (closed loop and @1k/s), mix, create (group commit), create with --db-max-batch 1
#   with --postgres, a 3-node cluster on a local PostgreSQL (scripts/pg.sh, fsync on, fresh
#   data per cluster; every node runs a Database actor):
#     mix, create (group commit), create with --db-max-batch 1
# and prints every run plus ratios: CRUD ÷ ceiling, remote ÷ local, 3-node ÷ 1-node, group
# commit ÷ one commit per write (and PostgreSQL ÷ SQLite). Results (JSON) stay in
# $CC_RUN_DIR/bench.
#
# Usage: scripts/bench.sh [--quick] [--micro] [--postgres] | scripts/bench.sh --scan
#   --quick     3 s per run instead of 10 (a smoke run)
#   --micro     also run the criterion micro-benchmarks and the memory benchmark
#   --postgres  also run the 3-node PostgreSQL cluster and compare it with SQLite
#   --scan      only this: the resident size of a node after reads of CC_SCAN_IDS (200000)
#               distinct stored ids, without a cap and with max_active_customers=CC_SCAN_CAP
#               (20000), and the ratio (memory benchmark in scan mode, one process per run)
# Env: CC_RUN_DIR (default ./run/bench), CC_BENCH_S, CC_BENCH_CONCURRENCY (default 32), CC_BENCH_KEYS (2000),
#      CC_BASE_HTTP (8080) and CC_BASE_CLUSTER (4700) as for cluster.sh (node k on base+k)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CC_RUN_DIR="${CC_RUN_DIR:-$ROOT/run/bench}"
export CC_PROFILE=release
export CC_BASE_HTTP="${CC_BASE_HTTP:-8080}"
export CC_BASE_CLUSTER="${CC_BASE_CLUSTER:-4700}"
CLUSTER="$ROOT/scripts/cluster.sh"
BIN="$ROOT/target/release/customer-cluster"
OUT="$CC_RUN_DIR/results"
SECS="${CC_BENCH_S:-10}"
CONC="${CC_BENCH_CONCURRENCY:-32}"
KEYS="${CC_BENCH_KEYS:-2000}"
MICRO=0
POSTGRES=0
SCAN=0
for arg in "$@"; do
  case "$arg" in
    --quick) SECS=3 ;;
    --micro) MICRO=1 ;;
    --postgres) POSTGRES=1 ;;
    --scan) SCAN=1 ;;
    *) echo "bench.sh: unknown argument $arg (use --quick, --micro, --postgres, --scan)" >&2; exit 2 ;;
  esac
done

# The PostgreSQL server (if any) stops with the cluster; its data goes too.
cleanup() {
  "$CLUSTER" down > /dev/null 2>&1 || true
  if [[ "$POSTGRES" == 1 ]]; then "$ROOT/scripts/pg.sh" destroy > /dev/null 2>&1 || true; fi
}
trap cleanup EXIT INT TERM

# scan_rss CAP: resident bytes after the scan, on a node with max_active_customers=CAP.
scan_rss() {
  local log="$CC_RUN_DIR/scan-$1.txt"
  (cd "$ROOT" && CC_MEMORY_CUSTOMERS="$SCAN_IDS" CC_MEMORY_MAX_ACTIVE="$1"     cargo bench --bench memory 2>/dev/null) > "$log"
  grep -E '^scan of' "$log" >&2
  sed -n 's/^scan_rss_bytes=//p' "$log"
}

if [[ "$SCAN" == 1 ]]; then
  SCAN_IDS="${CC_SCAN_IDS:-200000}"
  SCAN_CAP="${CC_SCAN_CAP:-20000}"
  mkdir -p "$CC_RUN_DIR"
  echo "== RSS after a scan of $SCAN_IDS distinct ids =="
  uncapped="$(scan_rss none)"
  capped="$(scan_rss "$SCAN_CAP")"
  awk -v u="$uncapped" -v c="$capped" -v cap="$SCAN_CAP" 'BEGIN {
    printf "without a cap: %.1f MiB\nwith max_active_customers=%s: %.1f MiB\ncapped / uncapped: %.2f\n",
      u / 1048576, cap, c / 1048576, c / u }'
  exit 0
fi

# HTTP URL of node $1 (1, 2, 3), where cluster.sh started it.
url() { echo "http://127.0.0.1:$((CC_BASE_HTTP + $1))"; }
N1="$(url 1)"
NODES3="$N1,$(url 2),$(url 3)"

# fresh_cluster N [--postgres]: N nodes on empty storage (SQLite files or a new PostgreSQL).
fresh_cluster() {
  local n="$1"
  shift
  "$CLUSTER" down > /dev/null 2>&1 || true
  rm -f "$CC_RUN_DIR"/n*.db "$CC_RUN_DIR"/n*.db-wal "$CC_RUN_DIR"/n*.db-shm
  "$ROOT/scripts/pg.sh" destroy > /dev/null 2>&1 || true
  "$CLUSTER" up "$n" "$@" > "$CC_RUN_DIR/up-$n.log"
  # shellcheck source=/dev/null
  source "$CC_RUN_DIR/env"
}

# run NAME LABEL KEYS [bench flags...]
run() {
  local name="$1" label="$2" keys="$3"
  shift 3
  "$BIN" bench --label "$label" --duration-s "$SECS" --warmup-s 1 --concurrency "$CONC" \
    --keys "$keys" --out "$OUT/$name.json" "$@" > "$OUT/$name.txt"
  head -n 3 "$OUT/$name.txt"
}

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt
echo "== machine: $(nproc) cores; nodes and load generator share them =="
echo
echo "== 3-node cluster =="
fresh_cluster 3
run ceiling     "ceiling: GET /health" 1         --nodes "$N1" --path /health
run get_local   "3 nodes: GET via owner" "$KEYS"  --nodes "$NODES3" --route owner --mix get=100
run get_remote  "3 nodes: GET via non-owner" "$KEYS" --nodes "$NODES3" --route non-owner --mix get=100
run mix3        "3 nodes: 80/20 get/update" "$KEYS" --nodes "$NODES3" --route any --mix get=80,update=20
run mix3_zipf   "3 nodes: 80/20 zipf(0.99)" "$KEYS" --nodes "$NODES3" --route any --mix get=80,update=20 --distribution zipf
run create3     "3 nodes: create" 1              --nodes "$NODES3" --route any --mix create=100
# Open loop at a modest fixed rate: latency without queueing (coordinated omission corrected).
run get_local_1k  "3 nodes: GET via owner @1k/s" "$KEYS"     --nodes "$NODES3" --route owner --mix get=100 --rate 1000
run get_remote_1k "3 nodes: GET via non-owner @1k/s" "$KEYS" --nodes "$NODES3" --route non-owner --mix get=100 --rate 1000
echo
echo "bare heartbeat ping, sequential (no customer work):"
"$BIN" ping n1 --count 1000 --node "$N1" | tee "$OUT/ping_local.txt"
"$BIN" ping n2 --count 1000 --node "$N1" | tee "$OUT/ping_remote.txt"

if [[ "$POSTGRES" == 1 ]]; then
  echo
  echo "== 3-node cluster on PostgreSQL (local server, fsync on; every node a Database actor) =="
  fresh_cluster 3 --postgres
  run mix3_pg     "3 nodes PG: 80/20 get/update" "$KEYS" --nodes "$NODES3" --route any --mix get=80,update=20
  run create3_pg  "3 nodes PG: create (group commit)" 1 --nodes "$NODES3" --route any --mix create=100
  CC_NODE_ARGS="--db-max-batch 1" fresh_cluster 3 --postgres
  run create3_pg_nogc "3 nodes PG: create, 1 commit/write" 1 --nodes "$NODES3" --route any --mix create=100
fi

echo
echo "== 1-node cluster (baseline) =="
fresh_cluster 1
run mix1        "1 node: 80/20 get/update" "$KEYS" --nodes "$N1" --mix get=80,update=20
run get1        "1 node: GET (active customer)" "$KEYS" --nodes "$N1" --mix get=100
run get1_1k     "1 node: GET @1k/s" "$KEYS"      --nodes "$N1" --mix get=100 --rate 1000
run create1     "1 node: create (group commit)" 1 --nodes "$N1" --mix create=100
CC_NODE_ARGS="--db-max-batch 1" fresh_cluster 1
run create1_nogc "1 node: create, 1 fsync/write" 1 --nodes "$N1" --mix create=100
"$CLUSTER" down > /dev/null

echo
echo "== results =="
r() { echo "$1=$OUT/$2.json/$OUT/$3.json"; }
PG_RUNS=()
if [[ "$POSTGRES" == 1 ]]; then
  PG_RUNS=("$OUT"/{mix3_pg,create3_pg,create3_pg_nogc}.json
    --ratio "$(r 'PostgreSQL ÷ SQLite (3-node 80/20 mix)' mix3_pg mix3)"
    --ratio "$(r 'PostgreSQL ÷ SQLite (3-node create)' create3_pg create3)"
    --ratio "$(r 'PG group commit ÷ 1 commit/write (3-node create)' create3_pg create3_pg_nogc)")
fi
"$BIN" bench-report "$OUT"/{ceiling,get_local,get_remote,get_local_1k,get_remote_1k,mix3,mix3_zipf,create3,get1,get1_1k,mix1,create1,create1_nogc}.json \
  --ratio "$(r 'GET via owner ÷ ceiling' get_local ceiling)" \
  --ratio "$(r 'remote hop ÷ local (GET, closed loop)' get_remote get_local)" \
  --ratio "$(r 'remote hop ÷ local (GET @1k/s)' get_remote_1k get_local_1k)" \
  --ratio "$(r '3-node via owner ÷ 1-node (GET)' get_local get1)" \
  --ratio "$(r '3-node ÷ 1-node (80/20 mix)' mix3 mix1)" \
  --ratio "$(r 'zipf ÷ uniform (3-node mix)' mix3_zipf mix3)" \
  --ratio "$(r '3-node ÷ 1-node (create)' create3 create1)" \
  --ratio "$(r 'group commit ÷ 1 fsync/write (create)' create1 create1_nogc)" \
  "${PG_RUNS[@]}" \
  | tee "$OUT/summary.txt"

if [[ "$MICRO" == 1 ]]; then
  echo
  echo "== micro-benchmarks (criterion) =="
  (cd "$ROOT" && cargo bench --bench micro -- --warm-up-time 1 --measurement-time 3 2>/dev/null | grep -E "^[a-z_/0-9]+ +time:|^[a-z_/0-9]+$|time:|thrpt:")
  echo
  echo "== memory per active customer actor =="
  (cd "$ROOT" && cargo bench --bench memory 2>/dev/null | grep -vE "^(Compiling|Finished|Running)")
fi
