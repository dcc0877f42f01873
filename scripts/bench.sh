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
# With --baseline REV, only the 3-node core runs (ceiling, GET via owner, GET via non-owner,
# 80/20 mix), first on a 3-node cluster of REV's release build, then on this checkout's; both
# tables, before ÷ after ratios, and the shard-lease statements each node of this checkout's
# cluster sent per renew interval during each run. REV is built in a git worktree
# (target/bench-baseline/src, removed after a good build; cargo's target dir
# target/bench-baseline/target is kept for the next REV) and its binary is kept in
# target/bench-baseline/<commit>/, so a second run against the same REV builds nothing.
# The current binary is the load generator for both clusters.
#
# Usage: scripts/bench.sh [--quick] [--micro] [--postgres] | scripts/bench.sh --scan
#        scripts/bench.sh --baseline REV [--quick]
#   --quick     3 s per run instead of 10 (a smoke run)
#   --micro     also run the criterion micro-benchmarks and the memory benchmark
#   --postgres  also run the 3-node PostgreSQL cluster and compare it with SQLite
#   --scan      only this: the resident size of a node after reads of CC_SCAN_IDS (200000)
#               distinct stored ids, without a cap and with max_active_customers=CC_SCAN_CAP
#               (20000), and the ratio (memory benchmark in scan mode, one process per run)
#   --baseline REV  only this: the core runs on REV (a commit, tag or branch) and on this
#               checkout, in one invocation (e.g. --baseline 0b8bebf, before the shard leases)
# Env: CC_RUN_DIR (default ./run/bench), CC_BENCH_S, CC_BENCH_CONCURRENCY (default 32), CC_BENCH_KEYS (2000),
#      CC_BASE_HTTP (8080) and CC_BASE_CLUSTER (4700) as for cluster.sh (node k on base+k),
#      CUSTOMER_CLUSTER_LEASE_RENEW_MS (500) the renew interval of this checkout's nodes,
#      CC_BENCH_ROUNDS (1) with --baseline: before/after pairs, in alternating order
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
ROUNDS="${CC_BENCH_ROUNDS:-1}"
MICRO=0
POSTGRES=0
SCAN=0
BASELINE=""
# The renew interval this checkout's nodes run with (the default of --lease-renew-ms unless
# set), the unit of the lease statement rate. Nodes that predate leases ignore the variable.
export CUSTOMER_CLUSTER_LEASE_RENEW_MS="${CUSTOMER_CLUSTER_LEASE_RENEW_MS:-500}"
RENEW_MS="$CUSTOMER_CLUSTER_LEASE_RENEW_MS"
usage() { echo "bench.sh: $1 (use --quick, --micro, --postgres, --scan, --baseline REV)" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --quick) SECS=3 ;;
    --micro) MICRO=1 ;;
    --postgres) POSTGRES=1 ;;
    --scan) SCAN=1 ;;
    --baseline)
      [[ $# -ge 2 && -n "$2" && "$2" != -* ]] || usage "--baseline needs a revision, e.g. --baseline 0b8bebf"
      BASELINE="$2"
      shift
      ;;
    --baseline=*)
      BASELINE="${1#--baseline=}"
      [[ -n "$BASELINE" && "$BASELINE" != -* ]] || usage "--baseline needs a revision, e.g. --baseline=0b8bebf"
      ;;
    *) usage "unknown argument $1" ;;
  esac
  shift
done
if [[ -n "$BASELINE" && "$MICRO$POSTGRES$SCAN" != 000 ]]; then
  usage "--baseline runs only the core SQLite runs; it combines with --quick only"
fi

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

# core_run PREFIX NAME: one of the runs --baseline compares, on the running 3-node cluster;
# its result goes to $OUT/PREFIX<NAME>.json.
CORE_RUNS=(ceiling get_local get_remote mix3)
core_run() {
  local n="$1$2"
  case "$2" in
    ceiling)    run "$n" "ceiling: GET /health" 1 --nodes "$N1" --path /health ;;
    get_local)  run "$n" "3 nodes: GET via owner" "$KEYS" --nodes "$NODES3" --route owner --mix get=100 ;;
    get_remote) run "$n" "3 nodes: GET via non-owner" "$KEYS" --nodes "$NODES3" --route non-owner --mix get=100 ;;
    mix3)       run "$n" "3 nodes: 80/20 get/update" "$KEYS" --nodes "$NODES3" --route any --mix get=80,update=20 ;;
    *) echo "bench.sh: no core run $2" >&2; exit 1 ;;
  esac
}
core_runs() {
  local name
  for name in "${CORE_RUNS[@]}"; do core_run "$1" "$name"; done
}

# A --ratio argument for bench-report: NAME=A.json/B.json (A ÷ B).
r() { echo "$1=$OUT/$2.json/$OUT/$3.json"; }

# ---- --baseline REV ------------------------------------------------------------------------

BASE_DIR="$ROOT/target/bench-baseline"
die() { echo "bench.sh: $*" >&2; exit 1; }

# build_baseline SHA: builds SHA's release binary unless kept from an earlier run; prints its
# path. The worktree is reused if an interrupted build left it, and removed after a good build.
build_baseline() {
  local sha="$1" src="$BASE_DIR/src" bin="$BASE_DIR/$1/customer-cluster" log="$BASE_DIR/build.log"
  if [[ -x "$bin" ]]; then
    echo "baseline binary kept from an earlier run: $bin" >&2
    echo "$bin"
    return 0
  fi
  mkdir -p "$BASE_DIR"
  git -C "$ROOT" worktree prune
  # Only a worktree of its own: inside this checkout, git -C would otherwise find ours.
  if [[ "$(git -C "$src" rev-parse --show-toplevel 2> /dev/null)" == "$src" ]]; then
    git -C "$src" checkout --quiet --force --detach "$sha" || die "cannot check out $sha in $src"
  else
    rm -rf "$src"
    git -C "$ROOT" worktree add --quiet --detach "$src" "$sha" || die "cannot create a worktree for $sha in $src"
  fi
  # Without its own Cargo.toml, cargo would find this checkout's one above it and build that.
  if [[ ! -f "$src/Cargo.toml" ]]; then
    git -C "$ROOT" worktree remove --force "$src"
    die "$sha has no Cargo.toml at its root: not a revision of this project"
  fi
  echo "building $sha (release, in $src, target dir $BASE_DIR/target; log $log)..." >&2
  if ! (cd "$src" && CARGO_TARGET_DIR="$BASE_DIR/target" cargo build --release --manifest-path "$src/Cargo.toml" --bin customer-cluster) > "$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "building the baseline $sha failed (full log: $log; worktree left in $src)"
  fi
  mkdir -p "$BASE_DIR/$sha"
  cp "$BASE_DIR/target/release/customer-cluster" "$bin.tmp"
  mv "$bin.tmp" "$bin"
  git -C "$ROOT" worktree remove --force "$src"
  echo "$bin"
}

# The node flags cluster.sh passes (without --postgres); a baseline must accept every one.
check_node_flags() {
  local help flag
  help="$("$1" node --help 2>&1)" || die "$1 node --help failed: $help"
  for flag in --cookie-file --api-token-file --data-dir --config --name --http-addr --cluster-addr --seeds; do
    grep -q -- "$flag" <<< "$help" || die "the baseline's node has no $flag, which scripts/cluster.sh passes"
  done
}

# lease_snapshot FILE: "node kind count" of customer_lease_statements_total on n1..n3, then
# "time <epoch seconds>" and "active <customer actors active on the cluster>".
lease_snapshot() {
  local i body
  {
    for i in 1 2 3; do
      body="$(curl -fsS --max-time 5 "$(url "$i")/metrics")" || die "GET $(url "$i")/metrics failed"
      awk -v n="n$i" '/^customer_lease_statements_total\{/ && match($0, /kind="[a-z_]+"/) {
        print n, substr($0, RSTART + 6, RLENGTH - 7), $NF }' <<< "$body"
    done
    echo "time $(date +%s.%N)"
    # The token comes from the environment (run/env exports it), not the command line.
    "$BIN" status --json --node "$N1" --timeout-ms 5000 \
      | grep -o '"active_customers":[0-9]*' | awk -F: '{ a += $2 } END { print "active", a + 0 }'
  } > "$1"
}

# lease_rate LABEL BEFORE AFTER: statements each node sent between two snapshots, per renew
# interval, and the totals by kind.
lease_rate() {
  awk -v label="$1" -v renew_ms="$RENEW_MS" '
    FNR == NR { if ($1 == "time") t0 = $2; else if ($1 != "active") b[$1 " " $2] = $3; next }
    $1 == "time" { t1 = $2; next }
    $1 == "active" { active = $2; next }
    { d = $3 - b[$1 " " $2]; node[$1] += d; kind[$2] += d }
    END {
      intervals = (t1 - t0) * 1000 / renew_ms
      line = ""; worst = 0
      for (n = 1; n <= 3; n++) {
        r = node["n" n] / intervals
        line = line sprintf("%sn%d %.2f", (n > 1 ? ", " : ""), n, r)
        if (r > worst) worst = r
      }
      kinds = ""
      for (k in kind) if (kind[k] > 0) kinds = kinds sprintf(" %s=%d", k, kind[k])
      printf "%-28s %s (max %.2f) over %.1f s = %.1f intervals; %d customers active after; by kind:%s\n",
        label, line, worst, t1 - t0, intervals, active, kinds
    }' "$2" "$3"
}

# core_runs_watched PREFIX: core_runs, with a lease snapshot around each run and the rates.
core_runs_watched() {
  local p="$1" name prev=""
  : > "$OUT/${p}leases.txt"
  lease_snapshot "$OUT/${p}lease-0.snap"
  prev="$OUT/${p}lease-0.snap"
  for name in "${CORE_RUNS[@]}"; do
    core_run "$p" "$name"
    lease_snapshot "$OUT/${p}lease-$name.snap"
    lease_rate "$name" "$prev" "$OUT/${p}lease-$name.snap" >> "$OUT/${p}leases.txt"
    prev="$OUT/${p}lease-$name.snap"
  done
  lease_rate "all four runs" "$OUT/${p}lease-0.snap" "$prev" >> "$OUT/${p}leases.txt"
}

# before_runs P / after_runs P: the core runs on a fresh cluster of the baseline / this
# checkout (with the lease statement rates), results prefixed P.
before_runs() {
  echo
  echo "== before: $BASE_DESC, 3-node cluster =="
  CC_NODE_BIN="$BASE_BIN" fresh_cluster 3
  core_runs "before_$1"
}
after_runs() {
  echo
  echo "== after: this checkout ($HEAD_DESC), 3-node cluster =="
  fresh_cluster 3
  core_runs_watched "after_$1"
}

# baseline_report P: both tables, before ÷ after, and the lease statement rates of round P.
baseline_report() {
  local b="before_$1" a="after_$1"
  echo "before: $BASE_DESC"
  "$BIN" bench-report "$OUT"/"$b"{ceiling,get_local,get_remote,mix3}.json \
    --ratio "$(r 'GET via owner ÷ ceiling' "${b}get_local" "${b}ceiling")"
  echo
  echo "after: this checkout ($HEAD_DESC)"
  "$BIN" bench-report "$OUT"/"$a"{ceiling,get_local,get_remote,mix3}.json \
    --ratio "$(r 'GET via owner ÷ ceiling' "${a}get_local" "${a}ceiling")"
  echo
  echo "before ÷ after (throughput above 1× means the baseline was faster):"
  "$BIN" bench-report \
    --ratio "$(r 'ceiling: GET /health' "${b}ceiling" "${a}ceiling")" \
    --ratio "$(r '3 nodes: GET via owner' "${b}get_local" "${a}get_local")" \
    --ratio "$(r '3 nodes: GET via non-owner' "${b}get_remote" "${a}get_remote")" \
    --ratio "$(r '3 nodes: 80/20 get/update' "${b}mix3" "${a}mix3")"
  echo
  echo "lease statements per node per renew interval ($RENEW_MS ms), this checkout, during each run:"
  cat "$OUT/${a}leases.txt"
}

if [[ -n "$BASELINE" ]]; then
  [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "CC_BENCH_ROUNDS must be a positive number, got '$ROUNDS'"
  git -C "$ROOT" rev-parse --git-dir > /dev/null 2>&1 || die "--baseline needs a git checkout ($ROOT is not one)"
  BASE_SHA="$(git -C "$ROOT" rev-parse --verify --quiet "$BASELINE^{commit}")" \
    || die "--baseline $BASELINE: no such commit (try a hash from git log)"
  BASE_BIN="$(build_baseline "$BASE_SHA")"
  check_node_flags "$BASE_BIN"
  HEAD_DESC="$(git -C "$ROOT" rev-parse --short HEAD)"
  [[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]] || HEAD_DESC="$HEAD_DESC + uncommitted changes"
  BASE_DESC="$BASELINE ($(git -C "$ROOT" rev-parse --short "$BASE_SHA"))"
  mkdir -p "$OUT"
  rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.snap
  echo "== machine: $(nproc) cores; nodes and load generator share them; $(uptime | sed 's/.*load/load/') =="
  # Rounds alternate the order (before first, then after first) so a load that drifts
  # during the invocation does not always favour the same build.
  for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then
      before_runs "r${round}_"
      after_runs "r${round}_"
    else
      after_runs "r${round}_"
      before_runs "r${round}_"
    fi
  done
  "$CLUSTER" down > /dev/null
  echo
  echo "== results; at the end $(uptime | sed 's/.*load/load/') =="
  {
    for ((round = 1; round <= ROUNDS; round++)); do
      ((ROUNDS == 1)) || { echo; echo "-- round $round of $ROUNDS --"; }
      baseline_report "r${round}_"
    done
  } | tee "$OUT/summary.txt"
  exit 0
fi

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt
echo "== machine: $(nproc) cores; nodes and load generator share them =="
echo
echo "== 3-node cluster =="
fresh_cluster 3
core_runs ""
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
