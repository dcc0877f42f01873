#!/usr/bin/env bash
# The container test: builds the image, runs the compose cluster, breaks it under a workload and
# checks that nothing is left behind. CI runs it after `cargo test` (.ci/run); it is not part of
# `cargo test`, so a machine without Docker still runs the README's test command.
#
#   scripts/docker-test.sh
#
# 1. Build: base image (debootstrap when it cannot be pulled), release binary, node and
#    nemesis images; prints the node image's size.
# 2. SQLite cluster (compose, default profile): every node healthy and seeing 3 members; CRUD
#    through each node's published port; X-Owner-Node spread over n1, n2 and n3; no node warns
#    about its advertised address, and a node told to advertise a name that does not resolve
#    says so in exactly one log line; `docker stop` is a graceful leave (exit code 0).
# 3. Faults, each under its own `customer-cluster workload` run from the host against the
#    published ports (the fault-test harness: it records every request and the member lists,
#    and fails on any stale read or lost acknowledged write):
#      kill      docker kill n2 (SIGKILL), then docker start n2
#      pause     docker pause n3 (every process frozen), then unpause
#      isolate   nftables in n3's namespace drops n1 and n2 (and they drop n3), then heal
#      partial   n2 and n3 cut from each other, both still reach n1, then heal
#    A scenario passes when the workload's verdict is green: 0 stale reads, 0 acknowledged
#    writes lost. The table (also in $CC_TEST_DIR/results.md) gives, per scenario, detection,
#    how long the moved customers took to be written again, how many seconds of the run were
#    disrupted (a request failed or none succeeded), and how long after the end of the fault
#    all three nodes saw each other again.
# 4. PostgreSQL profile: the same checks as 2 when the binary has --database-url; otherwise a
#    loud SKIP (the engine is being built; until it lands this is the only allowed skip).
# 5. `docker compose down -v` leaves no container, network or volume of the project behind.
#
# Without Docker it exits 0 with a note, except under CI=true, where that is a failure.
# Env: CC_PHASE_S (seconds per phase, default 6), CC_CUSTOMERS (60), CC_CONCURRENCY (6),
#      CC_TEST_DIR (default ./run/docker-test), CC_TEST_KEEP=1 (leave the cluster up on failure),
#      CC_TEST_PROJECT (compose project, default cc-test: another name keeps two runs apart,
#      with CC_IMAGE, CC_NEMESIS_IMAGE and CC_POSTGRES_IMAGE naming their own images).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER_SH="$ROOT/scripts/docker.sh"
BIN="$ROOT/target/release/customer-cluster"
PHASE_S="${CC_PHASE_S:-6}"
CUSTOMERS="${CC_CUSTOMERS:-60}"
CONCURRENCY="${CC_CONCURRENCY:-6}"
export CC_PROJECT="${CC_TEST_PROJECT:-cc-test}"
export CC_DOCKER_DIR="${CC_TEST_DIR:-$ROOT/run/docker-test}"
DIR="$CC_DOCKER_DIR"
RESULTS="$DIR/results.md"
PROBE="cc-test-advertise-probe"
WORKLOAD_PID=""
STARTED=$SECONDS

say() { echo "[$(date +%T)] $*"; }
fail() { echo "docker-test: FAIL: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }

# ---- preflight -------------------------------------------------------------------------------

if ! command -v docker > /dev/null || ! docker info > /dev/null 2>&1; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "docker-test: FAIL: CI=true but no usable Docker Engine (docker info failed): the container tests cannot run" >&2
    exit 1
  fi
  echo "docker-test: no usable Docker Engine here; skipping the container tests (CI fails instead)"
  exit 0
fi
if ! docker compose version > /dev/null 2>&1 && ! command -v docker-compose > /dev/null; then
  fail "neither 'docker compose' nor docker-compose is installed"
fi
command -v curl > /dev/null || fail "curl is needed"

# Three free host ports for the published HTTP ports (nothing answers on them now).
port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }
pick_ports() {
  local p=19081 k=1
  while (( k <= 3 )); do
    if port_free "$p"; then export "CC_HTTP_PORT_N$k=$p"; k=$((k + 1)); fi
    p=$((p + 1))
  done
}

cleanup() {
  local status=$?
  if [[ -n "$WORKLOAD_PID" ]] && kill -0 "$WORKLOAD_PID" 2> /dev/null; then kill "$WORKLOAD_PID" 2> /dev/null || true; fi
  docker rm -f -v "$PROBE" > /dev/null 2>&1 || true
  if [[ "$status" != 0 && "${CC_TEST_KEEP:-}" == 1 ]]; then
    echo "docker-test: failed; cluster left up for inspection (CC_PROJECT=$CC_PROJECT CC_DOCKER_DIR=$DIR scripts/docker.sh down)" >&2
  else
    "$DOCKER_SH" down > /dev/null 2>&1 || true
  fi
  echo "docker-test: $([[ $status == 0 ]] && echo passed || echo FAILED) after $((SECONDS - STARTED)) s"
  exit "$status"
}
trap cleanup EXIT INT TERM

# ---- helpers ---------------------------------------------------------------------------------

url_of() { echo "http://127.0.0.1:$(eval echo "\$CC_HTTP_PORT_N${1#n}")"; }
# The token travels in files and environments only: curl reads the header docker.sh wrote
# (-H @file), the workload reads CUSTOMER_CLUSTER_TOKEN.
auth_header() { echo "$DIR/auth-header"; }

# curl with the token: prints the status code; headers to $DIR/h, body to $DIR/b.
api() {
  local method="$1" url="$2" body="${3:-}" args=()
  [[ -n "$body" ]] && args=(-H "Content-Type: application/json" --data "$body")
  curl -sS -m 10 -X "$method" -D "$DIR/h" -o "$DIR/b" -w '%{http_code}' \
    -H @"$(auth_header)" "${args[@]}" "$url"
}
header() { grep -i "^$1:" "$DIR/h" | head -n 1 | cut -d: -f2- | tr -d ' \r'; }
json_field() { grep -o "\"$1\":[^,}]*" "$DIR/b" | head -n 1 | cut -d: -f2- | tr -d '"'; }

wait_healthy_nodes() {
  local name id deadline=$((SECONDS + 90))
  for name in n1 n2 n3; do
    id="$(node_cid "$name")"
    until [[ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" == healthy ]]; do
      (( SECONDS < deadline )) || fail "$name is not healthy (HEALTHCHECK) after 90 s"
      sleep 0.5
    done
  done
}

members_seen() {
  local body
  body="$(curl -fsS -m 2 -H @"$(auth_header)" "$(url_of "$1")/v1/cluster" 2> /dev/null)" \
    || { echo 0; return 0; }
  grep -o '"cluster_addr"' <<< "$body" | wc -l | tr -d ' '
}

# ms until every node lists 3 members (fails after 60 s).
wait_three() {
  local from deadline name
  from="$(now_ms)"
  deadline=$((SECONDS + 60))
  for name in n1 n2 n3; do
    until [[ "$(members_seen "$name")" == 3 ]]; do
      (( SECONDS < deadline )) || fail "$name does not see 3 members 60 s after the fault ended"
      sleep 0.2
    done
  done
  echo $(( $(now_ms) - from ))
}

# CRUD through every node's published port, and X-Owner-Node over all three nodes.
check_crud() {
  local label="$1" k code id owners="" i entry tag
  tag="$(now_ms)"
  for k in 1 2 3; do
    entry="$(url_of "n$k")"
    code="$(api POST "$entry/v1/customers" "{\"name\":\"Crud $k\",\"email\":\"crud-$tag-$k@example.com\"}")"
    [[ "$code" == 201 ]] || fail "$label: create through n$k answered $code: $(cat "$DIR/b")"
    id="$(json_field id)"
    [[ -n "$id" && -n "$(header X-Owner-Node)" ]] || fail "$label: create through n$k: no id or X-Owner-Node"
    code="$(api GET "$(url_of "n$(( k % 3 + 1 ))")/v1/customers/$id")"
    [[ "$code" == 200 && "$(json_field name)" == "Crud $k" ]] || fail "$label: read back through n$(( k % 3 + 1 )): $code $(cat "$DIR/b")"
    code="$(api PATCH "$(url_of "n$(( (k + 1) % 3 + 1 ))")/v1/customers/$id" '{"name":"Crud patched"}')"
    [[ "$code" == 200 && "$(json_field version)" == 2 ]] || fail "$label: patch: $code $(cat "$DIR/b")"
    code="$(api GET "$entry/v1/customers/$id")"
    [[ "$code" == 200 && "$(json_field name)" == "Crud patched" ]] || fail "$label: patch not visible through n$k: $code"
    code="$(api DELETE "$entry/v1/customers/$id")"
    [[ "$code" == 204 || "$code" == 200 ]] || fail "$label: delete through n$k answered $code"
    code="$(api GET "$(url_of "n$(( k % 3 + 1 ))")/v1/customers/$id")"
    [[ "$code" == 404 ]] || fail "$label: deleted customer still answers $code"
  done
  # 30 creates rotating over the entry nodes; every node must own some.
  for i in $(seq 1 30); do
    code="$(api POST "$(url_of "n$(( i % 3 + 1 ))")/v1/customers" "{\"name\":\"Spread $i\",\"email\":\"spread-$tag-$i@example.com\"}")"
    [[ "$code" == 201 ]] || fail "$label: create $i answered $code"
    owners+="$(header X-Owner-Node) "
  done
  for k in 1 2 3; do
    [[ " $owners " == *" n$k "* ]] || fail "$label: no customer of 30 is owned by n$k (owners: $owners)"
  done
  say "$label: CRUD through n1, n2, n3 ok; X-Owner-Node of 30 creates: $(tr ' ' '\n' <<< "$owners" | sort | uniq -c | awk 'NF == 2 {printf "%s=%s ", $2, $1}')"
}

node_cid() {
  docker ps -aq --filter "label=com.docker.compose.project=$CC_PROJECT" --filter "label=com.docker.compose.service=$1"
}

check_advertise() {
  local name n deadline
  for name in n1 n2 n3; do
    n="$(docker logs "$(node_cid "$name")" 2>&1 | grep -c "advertised address" || true)"
    [[ "$n" == 0 ]] || fail "$name warns about its advertised address: $(docker logs "$(node_cid "$name")" 2>&1 | grep "advertised address")"
  done
  # -v on removal: the image declares a VOLUME, and its anonymous volume must go too.
  docker run -d --name "$PROBE" --label "cc-test=$CC_PROJECT" -e CUSTOMER_CLUSTER_NAME=probe -e CUSTOMER_CLUSTER_COOKIE=probe-cookie-of-32-bytes-length \
    -e CUSTOMER_CLUSTER_ADVERTISE_ADDR=nowhere.invalid:4701 "${CC_IMAGE:-customer-cluster:local}" > /dev/null
  deadline=$((SECONDS + 30))
  until docker logs "$PROBE" 2>&1 | grep -q "is up"; do
    (( SECONDS < deadline )) || fail "the advertise probe node did not start: $(docker logs "$PROBE" 2>&1 | tail -n 5)"
    sleep 0.3
  done
  n="$(docker logs "$PROBE" 2>&1 | grep -c "advertised address nowhere.invalid:4701" || true)"
  [[ "$n" == 1 ]] || fail "a node advertising nowhere.invalid:4701 logged $n lines about it (want 1)"
  say "advertised addresses: no warning on n1..n3; a node advertising nowhere.invalid says: $(docker logs "$PROBE" 2>&1 | grep -o "advertised address nowhere.invalid:4701.*" | cut -c1-90)..."
  docker rm -f -v "$PROBE" > /dev/null
}

# compose.yaml's containment, as Docker applied it, on every running service of the project.
check_containment() {
  local name id settings
  for name in "$@"; do
    id="$(node_cid "$name")"
    settings="$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}} {{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}' "$id")"
    [[ "$settings" =~ ^true\ \[ALL\]\ \[no-new-privileges(:true)?\]\ [1-9][0-9]*\ [1-9][0-9]*$ ]] \
      || fail "$name runs without compose.yaml's containment (read-only, cap_drop ALL, no-new-privileges, mem and pids limits): $settings"
    # As root, who owns /etc: only the read-only mount stops it.
    ! docker exec -u 0 "$id" touch /etc/cc-probe 2> /dev/null || fail "$name's root file system is writable"
  done
  say "containment: $* read-only, no capabilities, no-new-privileges, memory and pids limits"
}

# The nodes' PostgreSQL role (docker/postgres/entrypoint): no login without its password, no
# network login as the superuser, no superuser rights; and the password is in no container's
# environment (docker inspect shows environments to anyone with the docker socket).
check_postgres_roles() {
  local pg name answer
  pg="$(node_cid postgres)"
  ! docker exec "$pg" psql -w -h 127.0.0.1 -U customer_cluster -d customers -Atc 'select 1' > /dev/null 2>&1 \
    || fail "PostgreSQL lets customer_cluster in without a password"
  ! docker exec "$pg" psql -w -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' > /dev/null 2>&1 \
    || fail "PostgreSQL lets the superuser in over the network"
  answer="$(docker exec "$pg" bash -c 'PGPASSWORD="$(cat /run/secrets/pg_password)" psql -w -h 127.0.0.1 -U customer_cluster -d customers -Atc "select rolsuper from pg_roles where rolname = current_user"')" \
    || fail "the nodes' role cannot log in with its password"
  [[ "$answer" == f ]] || fail "the nodes' role customer_cluster is a superuser"
  for name in n1 n2 n3 postgres; do
    ! docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$(node_cid "$name")" | grep -qF "$(cat "$DIR/pg_password")" \
      || fail "the PostgreSQL password is in $name's environment"
  done
  say "postgres roles: the nodes' customer_cluster is no superuser and needs its password; no network login as postgres; the password is in no environment"
}

check_graceful_stop() {
  local id
  "$DOCKER_SH" stop n3 > /dev/null
  id="$(node_cid n3)"
  [[ "$(docker inspect -f '{{.State.ExitCode}}' "$id")" == 0 ]] || fail "n3 exited with $(docker inspect -f '{{.State.ExitCode}}' "$id") after docker stop"
  docker logs "$id" 2>&1 | grep -q "node stopped" || fail "n3's log does not show a graceful stop"
  "$DOCKER_SH" start n3 > /dev/null
  say "docker stop n3: SIGTERM reached the node, graceful leave, exit code 0; back after $(wait_three) ms"
}

# When a fault took effect, unix ms. A kill's recovery is over in milliseconds (the peers' TCP
# sessions close at once), faster than the time docker.sh takes to return, so its moment is the
# one Docker recorded for the container's death (FinishedAt, read from the same host clock);
# anything else is stamped as docker.sh returns (its effects take seconds to be noticed).
fault_at() {
  local kind="$1" node="$2"
  if [[ "$kind" == kill ]]; then
    date -d "$(docker inspect -f '{{.State.FinishedAt}}' "$(node_cid "$node")")" +%s%3N
  else
    now_ms
  fi
}
event() { echo "$1 $2 $3" >> "$4"; }

# One fault scenario under its own workload. Args: name, fault description, fault command,
# fault event "kind node", heal command, heal event "kind node".
scenario() {
  local name="$1" what="$2" fault="$3" fault_ev="$4" heal="$5" heal_ev="$6"
  local events="$DIR/$name.events" out="$DIR/$name.out" err="$DIR/$name.err" t0 t_fault rc=0 rejoin
  : > "$events"
  CUSTOMER_CLUSTER_TOKEN="$(cat "$DIR/token")" "$BIN" workload --nodes "$(url_of n1),$(url_of n2),$(url_of n3)" \
    --customers "$CUSTOMERS" --concurrency "$CONCURRENCY" --duration-s $((PHASE_S * 3)) \
    --events "$events" --out "$DIR/$name.json" > "$out" 2> "$err" &
  WORKLOAD_PID=$!
  until grep -q "workload running" "$err" 2> /dev/null; do
    kill -0 "$WORKLOAD_PID" 2> /dev/null || { cat "$err" >&2; fail "$name: the workload did not start"; }
    sleep 0.1
  done
  t0="$(now_ms)"
  sleep "$PHASE_S"
  # Events are stamped once the fault is in force: recovery counts writes sent after it.
  eval "$fault" > /dev/null
  t_fault="$(fault_at "${fault_ev% *}" "${fault_ev#* }")"
  event "$t_fault" "${fault_ev% *}" "${fault_ev#* }" "$events"
  say "$name: $what"
  sleep "$PHASE_S"
  eval "$heal" > /dev/null
  event "$(now_ms)" "${heal_ev% *}" "${heal_ev#* }" "$events"
  rejoin="$(wait_three)"
  wait "$WORKLOAD_PID" || rc=$?
  WORKLOAD_PID=""
  summarize "$name" "$what" "$rc" "$t0" "$t_fault" "$rejoin"
  [[ "$rc" == 0 ]] || { cat "$out" "$err" >&2; fail "$name: the workload's verdict is red (exit $rc)"; }
}

# One row of the results table, from the workload's text report.
summarize() {
  local name="$1" what="$2" rc="$3" t0="$4" t_fault="$5" rejoin="$6" out="$DIR/$1.out"
  local line detected recovery stale lost errs unreachable bad_s fault_s
  line="$(grep -E "^[a-z]+ +[a-z0-9-]+ +detected" "$out" | head -n 1)"
  detected="$(grep -o "detected after [^;]*" <<< "$line" | sed 's/detected after //')"
  recovery="$(grep -o "max [0-9]* ms" <<< "$line" | sed 's/max //' || true)"
  errs="$(grep -o "next 15 s: [0-9]*" <<< "$line" | grep -o "[0-9]*$")"
  unreachable="$(grep -o "unreachable: [0-9]*" <<< "$line" | grep -o "[0-9]*$")"
  stale="$(grep -o "^stale reads: [0-9]*" "$out" | grep -o "[0-9]*$")"
  lost="$(grep -o "^acknowledged writes lost: [0-9]*" "$out" | grep -o "[0-9]*$")"
  # Seconds of the timeline, from the fault to the run's last full second, in which a request
  # failed (error or no answer) or none succeeded (the timeline has no row for a second in which
  # nothing completed: every worker was waiting on a stuck request).
  fault_s=$(( (t_fault - t0) / 1000 ))
  bad_s="$(awk -v f="$fault_s" '
    /^== timeline/ {on = 1; next}
    on && $1 ~ /^[0-9]+$/ {seen[$1] = 1; bad[$1] = ($4 + $5) > 0; if ($1 > last) last = $1}
    END {for (s = f; s < last; s++) if (!(s in seen) || bad[s]) n++; print n + 0}' "$out")"
  printf '| %s | %s | %s | %s | %s s | %s ms | %s / %s | %s | %s | %s |\n' \
    "$name" "$what" "${detected:-n/a}" "${recovery:-n/a}" "$bad_s" "$rejoin" "$errs" "$unreachable" \
    "$stale" "$lost" "$([[ "$rc" == 0 ]] && echo green || echo "RED ($rc)")" >> "$RESULTS"
}

# ---- the run ---------------------------------------------------------------------------------

mkdir -p "$DIR"
docker volume ls -q | sort > "$DIR/volumes.before"
pick_ports
"$DOCKER_SH" down > /dev/null 2>&1 || true

say "== build =="
t=$SECONDS
"$DOCKER_SH" build
say "build: $((SECONDS - t)) s"
[[ -x "$BIN" ]] || fail "no release binary at $BIN"

say "== SQLite cluster =="
t=$SECONDS
"$DOCKER_SH" up > "$DIR/up.out" || { cat "$DIR/up.out"; fail "scripts/docker.sh up failed"; }
say "up: every node sees 3 members after $((SECONDS - t)) s"
wait_healthy_nodes
say "HEALTHCHECK: n1, n2, n3 healthy"
check_containment n1 n2 n3
check_crud "sqlite"
check_advertise
check_graceful_stop

say "== faults under a workload ($CUSTOMERS customers, $CONCURRENCY workers, phases of $PHASE_S s) =="
{
  echo "| scenario | fault | detected after | moved customers written again (max) | seconds disrupted | all 3 members again after the fault ended | errors / unreachable (15 s) | stale reads | acknowledged writes lost | verdict |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$RESULTS"
scenario kill "docker kill n2 (SIGKILL), docker start n2 after ${PHASE_S} s" \
  "'$DOCKER_SH' kill n2" "kill n2" "'$DOCKER_SH' start n2" "restart n2"
scenario pause "docker pause n3 (frozen) for ${PHASE_S} s" \
  "'$DOCKER_SH' pause n3" "freeze n3" "'$DOCKER_SH' unpause n3" "thaw n3"
scenario isolate "n3 cut from n1 and n2 for ${PHASE_S} s (clients still reach n3)" \
  "'$DOCKER_SH' isolate n3" "isolate n3" "'$DOCKER_SH' heal" "heal n3"
scenario partial "n2 and n3 cut from each other for ${PHASE_S} s, both reach n1" \
  "'$DOCKER_SH' partition n2 n3" "partition n2-n3" "'$DOCKER_SH' heal" "heal n2-n3"
echo
cat "$RESULTS"
echo

say "== PostgreSQL profile =="
# Read the help first: `grep -q` would stop reading early, and with pipefail the SIGPIPE'd
# `docker run` would make the test say "no" for a binary that has the flag.
node_help="$(docker run --rm "${CC_IMAGE:-customer-cluster:local}" node --help 2> /dev/null || true)"
if grep -q -- '--database-url' <<< "$node_help"; then
  "$DOCKER_SH" down > /dev/null
  "$DOCKER_SH" build --postgres > /dev/null
  t=$SECONDS
  "$DOCKER_SH" up --postgres > "$DIR/up-postgres.out" || { cat "$DIR/up-postgres.out"; fail "up --postgres failed"; }
  say "up --postgres: every node sees 3 members after $((SECONDS - t)) s"
  wait_healthy_nodes
  check_containment n1 n2 n3 postgres
  check_postgres_roles
  check_crud "postgres"
  scenario pg-kill "postgres profile: docker kill n2, docker start n2 after ${PHASE_S} s" \
    "'$DOCKER_SH' kill n2" "kill n2" "'$DOCKER_SH' start n2" "restart n2"
  tail -n 1 "$RESULTS"
else
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  echo "!!! SKIPPED: the postgres profile. customer-cluster in ${CC_IMAGE:-customer-cluster:local} has no"
  echo "!!! --database-url: the PostgreSQL engine has not landed. This is the one skip allowed, and only"
  echo "!!! until that engine lands; after that this block runs the profile."
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
fi

say "== down =="
"$DOCKER_SH" down > /dev/null
left="$(docker ps -aq --filter "label=com.docker.compose.project=$CC_PROJECT")"
left+="$(docker network ls -q --filter "label=com.docker.compose.project=$CC_PROJECT")"
left+="$(docker volume ls -q --filter "label=com.docker.compose.project=$CC_PROJECT")"
left+="$(docker volume ls -q | grep "^${CC_PROJECT}_" || true)$(docker network ls --format '{{.Name}}' | grep "^${CC_PROJECT}_" || true)"
left+="$(docker ps -aq --filter "ancestor=${CC_NEMESIS_IMAGE:-customer-cluster-nemesis:local}")"
left+="$(docker ps -aq --filter "label=cc-test=$CC_PROJECT")"
# Anonymous volumes (the image's VOLUME) of containers this run started and removed.
left+="$(comm -13 "$DIR/volumes.before" <(docker volume ls -q | sort) | grep -E "^[0-9a-f]{64}$" || true)"
[[ -z "$left" ]] || fail "docker compose down -v left something behind: $left"
say "down -v: no container, network or volume of $CC_PROJECT is left"
