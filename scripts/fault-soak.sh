#!/usr/bin/env bash
# The whole fault suite on both engines, N times in a row, and a summary: how many runs passed,
# which tests failed in which run, how long each run took.
#
#   scripts/fault-soak.sh [RUNS=10]
#
# Runs as root (the namespace lab needs it) with nftables installed, like `CI=true cargo test`.
# Uses $CC_TEST_DATABASE_URL if set, else starts a private PostgreSQL with scripts/pg.sh (and
# stops it at the end). Each run's full output is kept in target/soak/run-K.out, the summary in
# target/soak/summary.txt. Give it a machine with nothing else running: the suite's scenarios
# have second-scale deadlines, and on two cores shared with compilers a scenario's premise (a
# settle within its deadline) can fail without anything being wrong with the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${1:-10}"
[[ "$RUNS" =~ ^[0-9]+$ && "$RUNS" -ge 1 ]] || { echo "fault-soak.sh: RUNS must be a positive number, got '$RUNS'" >&2; exit 2; }

OUT=target/soak
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"

if [[ -z "${CC_TEST_DATABASE_URL:-}" ]]; then
  trap 'scripts/pg.sh down > /dev/null 2>&1 || true' EXIT
  CC_TEST_DATABASE_URL="$(scripts/pg.sh up | tail -n 1)"
fi
export CC_TEST_DATABASE_URL CI=true

SUITE=(--test faults --test fault_hooks --test leases --test overload --test postgres_cluster --test failover)
echo "building the fault suite..."
cargo test "${SUITE[@]}" --no-run > "$OUT/build.out" 2>&1 || { tail -n 30 "$OUT/build.out"; exit 1; }

echo "fault soak: $RUNS run(s) of the whole fault suite, both engines, rev $(git rev-parse --short HEAD), started $(date -u +%FT%TZ)" | tee "$SUMMARY"
green=0
for k in $(seq 1 "$RUNS"); do
  start=$SECONDS
  if cargo test "${SUITE[@]}" --no-fail-fast -- --test-threads 1 > "$OUT/run-$k.out" 2>&1; then
    rc=0
    green=$((green + 1))
  else
    rc=$?
  fi
  counts="$(grep -E '^test result:' "$OUT/run-$k.out" | awk '{p += $4; f += $6} END {print p " passed, " f " failed"}')"
  echo "run $k: $([[ $rc == 0 ]] && echo ok || echo FAILED) ($counts, $((SECONDS - start)) s)" | tee -a "$SUMMARY"
  grep -E '^test .* FAILED$' "$OUT/run-$k.out" | sed 's/^/    /' | tee -a "$SUMMARY" || true
done
echo "$green of $RUNS run(s) green; outputs in $OUT/run-*.out" | tee -a "$SUMMARY"
[[ "$green" == "$RUNS" ]]
