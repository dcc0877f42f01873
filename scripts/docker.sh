#!/usr/bin/env bash
# Container cluster control: the twin of scripts/cluster.sh for Docker. Three nodes (compose.yaml)
# on the private network `cluster`, each with its own address, advertising its service name;
# the host reaches node k's HTTP API on a published port (default 127.0.0.1:908k).
#
#   scripts/docker.sh base             make the base image ($CC_BASE_IMAGE) from debootstrap when
#                                      docker has none and cannot pull it (debootstrap needs root)
#   scripts/docker.sh build            base, `cargo build --release` on the host, and the images:
#                                      node ($CC_IMAGE), nemesis (nftables), postgres
#   scripts/docker.sh up [--postgres]  build what is missing, write the secrets, start n1..n3 (and
#                                      PostgreSQL), wait until every node sees 3 members
#   scripts/docker.sh down             docker compose down -v: containers, network and volumes
#   scripts/docker.sh status           containers, cuts, and the cluster as a live node sees it
#   scripts/docker.sh kill NODE        SIGKILL the node (docker kill): a crash
#   scripts/docker.sh stop NODE        SIGTERM (docker stop): a graceful leave
#   scripts/docker.sh start NODE       start a killed or stopped node again (cuts are re-applied)
#   scripts/docker.sh pause NODE       freeze every process of the container (cgroup freezer)
#   scripts/docker.sh unpause NODE     thaw it
#   scripts/docker.sh partition A B    drop packets between A and B both ways (comma lists:
#                                      n1,n2 n3); cuts add up
#   scripts/docker.sh isolate NODE     cut NODE from every other node
#   scripts/docker.sh heal             remove every cut
#   scripts/docker.sh logs NODE [-f]   print (or follow) a node's log
#   scripts/docker.sh secrets [--postgres]  write the cookie, API token, PostgreSQL password and
#                                      database URL files, and each node's storage settings
#                                      (storage-nK.env)
#
# Partitions are real: a throwaway "nemesis" container (in the host's PID namespace, with
# SYS_ADMIN, SYS_PTRACE and NET_ADMIN) enters each node's network namespace with nsenter and
# loads an nftables table that drops input from the peers the node is cut from, as cluster.sh
# does with namespaces. Connections hang as on a real network, and the host still reaches every
# node's HTTP port, so clients can keep asking a cut-off node. The node image carries no
# firewall tools and its containers get no NET_ADMIN; nothing needs root on the host: the
# docker group is enough.
#
# NODE is n2 or 2. State lives in $CC_DOCKER_DIR (default ./run/docker, mode 0700): the secret
# files compose mounts, the cut list, the storage mode of the running cluster, an env file to
# `source` for the CLI, and auth-header (0600), the token as a header curl reads with
# `-H @file`. No secret is ever put on a command line or printed.
#
# Environment: CC_DOCKER_DIR, CC_PROJECT (compose project, default customer-cluster), CC_IMAGE
# (customer-cluster:local), CC_BASE_IMAGE (debian:bookworm-slim), CC_NEMESIS_IMAGE,
# CC_POSTGRES_IMAGE, CC_HTTP_PORT_N1..N3 (9081..9083), CC_BIND (127.0.0.1), CC_WAIT_S (90),
# CC_DEBIAN_MIRROR (http://deb.debian.org/debian), CC_DEBIAN_SUITE (bookworm).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${CC_DOCKER_DIR:-$ROOT/run/docker}"
PROJECT="${CC_PROJECT:-customer-cluster}"
IMAGE="${CC_IMAGE:-customer-cluster:local}"
BASE_IMAGE="${CC_BASE_IMAGE:-debian:bookworm-slim}"
NEMESIS_IMAGE="${CC_NEMESIS_IMAGE:-customer-cluster-nemesis:local}"
POSTGRES_IMAGE="${CC_POSTGRES_IMAGE:-customer-cluster-postgres:15}"
WAIT_S="${CC_WAIT_S:-90}"
NODES=(n1 n2 n3)
CUTS="$STATE/cuts"
NFT_TABLE="cc_nemesis"
export CC_SECRETS_DIR="$STATE" CC_IMAGE="$IMAGE" CC_BASE_IMAGE="$BASE_IMAGE" CC_POSTGRES_IMAGE="$POSTGRES_IMAGE"

die() { echo "docker.sh: $*" >&2; exit 1; }

node_name() {
  local n="${1:-}"
  [[ -n "$n" ]] || die "missing NODE (e.g. n2)"
  n="n${n#n}"
  [[ " ${NODES[*]} " == *" $n "* ]] || die "NODE must be one of ${NODES[*]} (or 1..3), got '$1'"
  echo "$n"
}

# `docker compose` (v2) when the plugin is there, else the standalone docker-compose (v1.28+,
# which knows profiles). The project name keeps its containers apart from anything else.
compose() {
  local tool=(docker compose)
  docker compose version > /dev/null 2>&1 || tool=(docker-compose)
  "${tool[@]}" -p "$PROJECT" -f "$ROOT/compose.yaml" "$@"
}

image_exists() { docker image inspect "$1" > /dev/null 2>&1; }
image_size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1 / 1e6}'; }

# Container id of a service (any state), or empty. By compose's labels: `docker ps` answers in
# milliseconds where the v1 docker-compose takes a second per call.
cid() {
  docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" | head -n 1
}
state_of() {
  local id
  id="$(cid "$1")"
  [[ -n "$id" ]] || { echo "absent"; return 0; }
  docker inspect -f '{{.State.Status}}' "$id"
}
need_cid() {
  local id
  id="$(cid "$1")"
  [[ -n "$id" ]] || die "$1 has no container; 'scripts/docker.sh up' first"
  echo "$id"
}
# The host's URL for a node's published HTTP port.
http_url() {
  local hostport
  hostport="$(docker port "$(cid "$1")" 8080/tcp 2> /dev/null | head -n 1)"
  [[ -n "$hostport" ]] || return 1
  echo "http://${hostport/0.0.0.0/127.0.0.1}"
}
ip_of() {
  docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$(need_cid "$1")" | awk '{print $1}'
}

# ---- images ----------------------------------------------------------------------------------

# The base image: present, pulled, or made here with debootstrap (variant minbase, trimmed the
# way Debian's -slim images are: no docs, man pages, locales or apt lists).
cmd_base() {
  if image_exists "$BASE_IMAGE"; then
    echo "base image $BASE_IMAGE: present ($(image_size "$BASE_IMAGE"))"
    return 0
  fi
  if timeout 60 docker pull -q "$BASE_IMAGE" > /dev/null 2>&1; then
    echo "base image $BASE_IMAGE: pulled"
    return 0
  fi
  local suite="${CC_DEBIAN_SUITE:-bookworm}" mirror="${CC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  local sudo=() rootfs start=$SECONDS
  if (( EUID != 0 )); then
    command -v sudo > /dev/null || die "cannot pull $BASE_IMAGE, and debootstrap needs root (or sudo)"
    sudo=(sudo)
  fi
  command -v debootstrap > /dev/null || die "cannot pull $BASE_IMAGE: install debootstrap (apt-get install -y debootstrap) to make it here"
  rootfs="$(mktemp -d "${TMPDIR:-/tmp}/cc-base.XXXXXX")"
  # shellcheck disable=SC2064
  trap "${sudo[*]} rm -rf '$rootfs'" EXIT
  echo "base image $BASE_IMAGE: not pullable; debootstrap --variant=minbase $suite from $mirror..."
  "${sudo[@]}" debootstrap --variant=minbase "$suite" "$rootfs/root" "$mirror" > "$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
  "${sudo[@]}" bash -s "$rootfs/root" <<'EOF'
set -euo pipefail
r="$1"
# As Debian's docker images do: never install docs again, and keep apt's caches empty.
cat > "$r/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
cat > "$r/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' > "$r/etc/apt/apt.conf.d/docker-no-languages"
find "$r/usr/share/doc" -mindepth 2 ! -name copyright -delete 2> /dev/null || true
find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/var/lib/apt/lists/* \
  "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb "$r"/var/log/*.log
EOF
  "${sudo[@]}" tar --numeric-owner -C "$rootfs/root" -c . \
    | docker import -c 'CMD ["bash"]' -m "debootstrap --variant=minbase $suite" - "$BASE_IMAGE" > /dev/null
  "${sudo[@]}" rm -rf "$rootfs" "$rootfs.log"
  trap - EXIT
  echo "base image $BASE_IMAGE: made in $((SECONDS - start)) s ($(image_size "$BASE_IMAGE"))"
}

# docker build with its output in $STATE/build.log, shown only when the build fails (the
# legacy builder's deprecation notice and the steps are noise otherwise).
quiet_build() {
  mkdir -p "$STATE"
  docker build "$@" > "$STATE/build.log" 2>&1 || { cat "$STATE/build.log" >&2; die "docker build $* failed"; }
}

# The node image, from a binary built on the host (Dockerfile target `prebuilt`): a staging
# directory is the whole build context, so target/ (gigabytes) is never sent to the daemon.
build_node_image() {
  local ctx="$STATE/context" bin="$ROOT/target/release/customer-cluster"
  echo "building the release binary (cargo build --release)..."
  (cd "$ROOT" && nice cargo build --quiet --release --bin customer-cluster)
  rm -rf "$ctx"
  mkdir -p "$ctx/config" "$ctx/docker"
  cp "$bin" "$ctx/customer-cluster"
  # Line tables are for local debugging; the image keeps symbols (backtraces name functions).
  if command -v strip > /dev/null; then strip --strip-debug "$ctx/customer-cluster"; fi
  cp "$ROOT/config/container.toml" "$ctx/config/"
  cp "$ROOT/docker/healthcheck" "$ctx/docker/"
  quiet_build -f "$ROOT/Dockerfile" --target prebuilt --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -t "$IMAGE" "$ctx"
  docker run --rm "$IMAGE" --version > /dev/null || die "$IMAGE does not run its binary"
  echo "image $IMAGE: $(image_size "$IMAGE")"
}

# base + nftables: runs in a node's network namespace to cut links (never inside the node).
build_nemesis_image() {
  quiet_build -f "$ROOT/docker/nemesis/Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -t "$NEMESIS_IMAGE" "$ROOT/docker/nemesis"
  echo "image $NEMESIS_IMAGE: $(image_size "$NEMESIS_IMAGE")"
}

build_postgres_image() {
  quiet_build -f "$ROOT/docker/postgres/Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -t "$POSTGRES_IMAGE" "$ROOT"
  echo "image $POSTGRES_IMAGE: $(image_size "$POSTGRES_IMAGE")"
}

cmd_build() {
  cmd_base
  build_node_image
  build_nemesis_image
  [[ "${1:-}" == "--postgres" ]] && build_postgres_image
  return 0
}

# ---- cluster ---------------------------------------------------------------------------------

# The secret files compose mounts, and storage-nK.env (node k's storage settings) for MODE
# (sqlite: n1 hosts the SQLite file; postgres: every node uses the PostgreSQL service).
cmd_secrets() {
  local mode=sqlite f name
  case "${1:-}" in
    "") ;;
    --postgres) mode=postgres ;;
    *) die "secrets takes --postgres or nothing, got '$1'" ;;
  esac
  mkdir -p "$STATE"
  chmod 0700 "$STATE"
  # Mounted into containers whose processes run as other users: readable by all, inside a
  # directory only its owner can enter. Written under umask 077 all the same, so no file is
  # readable by others before the directory is closed.
  for f in cookie token pg_password; do
    [[ -s "$STATE/$f" ]] || (umask 077; od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$STATE/$f")
    chmod 0644 "$STATE/$f"
  done
  # The nodes' URL: a secret file, read through CUSTOMER_CLUSTER_DATABASE_URL_FILE (written in
  # either mode: compose mounts every secret it names).
  (umask 077; echo "postgres://customer_cluster:$(cat "$STATE/pg_password")@postgres:5432/customers" > "$STATE/database_url")
  chmod 0644 "$STATE/database_url"
  # curl reads this with -H @file: the token stays off curl's command line.
  (umask 077; echo "Authorization: Bearer $(cat "$STATE/token")" > "$STATE/auth-header")
  for name in "${NODES[@]}"; do
    (
      umask 077
      if [[ "$mode" == postgres ]]; then
        echo "CUSTOMER_CLUSTER_DATABASE_URL_FILE=/run/secrets/database_url"
      elif [[ "$name" == n1 ]]; then
        echo "CUSTOMER_CLUSTER_DB_PATH=customers.db"
      fi > "$STATE/storage-$name.env"
    )
  done
  echo "$mode" > "$STATE/mode"
}

write_env() {
  (
    umask 077
    {
      echo "export CUSTOMER_CLUSTER_NODE=$(http_url n1)"
      echo "export CUSTOMER_CLUSTER_TOKEN=$(cat "$STATE/token")"
    } > "$STATE/env"
  )
}

# Members node $1 reports on its published port, or 0 when it does not answer.
members_seen() {
  local url out
  url="$(http_url "$1")" || { echo 0; return 0; }
  out="$(curl -fsS -m 2 -H @"$STATE/auth-header" "$url/v1/cluster" 2> /dev/null)" \
    || { echo 0; return 0; }
  printf '%s' "$out" | grep -o '"cluster_addr"' | wc -l | tr -d ' '
}

wait_converged() {
  local want="$1" deadline=$((SECONDS + WAIT_S)) name
  for name in "${NODES[@]}"; do
    until [[ "$(members_seen "$name")" == "$want" ]]; do
      if [[ "$(state_of "$name")" != "running" ]]; then
        echo "$name is $(state_of "$name"); last log lines:" >&2
        docker logs --tail 20 "$(need_cid "$name")" >&2 || true
        return 1
      fi
      (( SECONDS < deadline )) || { echo "timed out waiting for $name to see $want members" >&2; return 1; }
      sleep 0.3
    done
  done
}

wait_healthy() {
  local id="$1" deadline=$((SECONDS + WAIT_S))
  until [[ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" == "healthy" ]]; do
    (( SECONDS < deadline )) || { docker logs --tail 20 "$id" >&2; die "container $id not healthy after ${WAIT_S}s"; }
    sleep 0.5
  done
}

# Whether the node image's binary has the PostgreSQL engine (--database-url) and takes the
# opt-in compose gives it for a server on the private network (--database-allow-plaintext).
image_has_postgres() {
  local help
  # Read it whole first: with pipefail, `grep -q` leaving early would fail the pipeline.
  help="$(docker run --rm "$IMAGE" node --help 2> /dev/null || true)"
  grep -q -- '--database-url' <<< "$help" && grep -q -- '--database-allow-plaintext' <<< "$help"
}

cmd_up() {
  local mode=sqlite
  case "${1:-}" in
    "") ;;
    --postgres) mode=postgres ;;
    *) die "up takes --postgres or nothing, got '$1'" ;;
  esac
  if [[ -n "$(cid n1)" && "$(cat "$STATE/mode" 2> /dev/null || echo sqlite)" != "$mode" ]]; then
    die "a $(cat "$STATE/mode") cluster exists; 'scripts/docker.sh down' first"
  fi
  if [[ "$mode" == postgres ]]; then set -- --postgres; else set --; fi
  cmd_secrets "$@"
  if ! image_exists "$IMAGE" || ! image_exists "$NEMESIS_IMAGE"; then cmd_base; fi
  image_exists "$IMAGE" || build_node_image
  image_exists "$NEMESIS_IMAGE" || build_nemesis_image
  : > "$CUTS"
  if [[ "$mode" == postgres ]]; then
    image_has_postgres || die "the customer-cluster in $IMAGE lacks --database-url or --database-allow-plaintext (an older build: 'scripts/docker.sh build')"
    image_exists "$POSTGRES_IMAGE" || { cmd_base; build_postgres_image; }
    COMPOSE_PROFILES=postgres compose up -d --no-build postgres
    echo "waiting for PostgreSQL..."
    wait_healthy "$(cid postgres)"
  fi
  compose up -d --no-build "${NODES[@]}"
  echo "waiting until every node sees ${#NODES[@]} members..."
  wait_converged "${#NODES[@]}"
  write_env
  echo
  node_status n1
  echo
  echo "HTTP:  $(for n in "${NODES[@]}"; do printf '%s ' "$(http_url "$n")"; done)"
  echo "Token: in ${STATE#"$PWD"/}/token (not printed: terminals are logged and shared)"
  echo "Use:   source ${STATE#"$PWD"/}/env   # sets CUSTOMER_CLUSTER_NODE and CUSTOMER_CLUSTER_TOKEN for the CLI"
}

cmd_down() {
  # compose reads every file compose.yaml names, even to remove things.
  [[ -f "$STATE/storage-n1.env" && -f "$STATE/database_url" ]] || cmd_secrets
  # Every profile, so the PostgreSQL container and its volume go too.
  COMPOSE_PROFILES=postgres compose down -v --remove-orphans 2>&1 | grep -v "^$" || true
  rm -f "$CUTS" "$STATE/env"
  echo "cluster removed (containers, network, volumes)"
}

# The cluster as node $1 sees it, from the CLI inside its container.
node_status() {
  docker exec "$(need_cid "$1")" bash -c \
    'CUSTOMER_CLUSTER_TOKEN="$(cat /run/secrets/api_token)" exec customer-cluster status --node http://127.0.0.1:8080 --timeout-ms 2000'
}

cmd_status() {
  local name asked="" health id
  for name in "${NODES[@]}" postgres; do
    id="$(cid "$name")"
    [[ -n "$id" ]] || continue
    health="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")"
    echo "$name: $(state_of "$name")${health:+, $health}$( [[ "$name" != postgres ]] && http_url "$name" > /dev/null 2>&1 && echo ", $(http_url "$name")")"
    [[ -z "$asked" && "$name" != postgres && "$(state_of "$name")" == running ]] && asked="$name"
  done
  echo "storage: $(cat "$STATE/mode" 2> /dev/null || echo none)   cuts: $(cuts_text)"
  [[ -n "$asked" ]] || { echo "no node is running"; return 0; }
  echo
  node_status "$asked"
}

cmd_signal() {
  local what="$1" name id
  name="$(node_name "${2:-}")"
  id="$(need_cid "$name")"
  case "$what" in
    kill) docker kill -s KILL "$id" > /dev/null ;;
    stop) docker stop -t 15 "$id" > /dev/null ;;
    pause) docker pause "$id" > /dev/null ;;
    unpause) docker unpause "$id" > /dev/null ;;
    start)
      docker start "$id" > /dev/null
      # A restarted container may have a new address: cut it again if cuts are in force.
      [[ -s "$CUTS" ]] && apply_cuts > /dev/null
      ;;
  esac
  echo "$what $name: $(state_of "$name")"
}

cmd_logs() {
  local name
  name="$(node_name "${1:-}")"
  if [[ "${2:-}" == "-f" ]]; then
    docker logs --tail 50 -f "$(need_cid "$name")" 2>&1
  else
    docker logs --tail 100 "$(need_cid "$name")" 2>&1
  fi
}

# ---- partitions ------------------------------------------------------------------------------

cuts_text() {
  [[ -s "$CUTS" ]] || { echo "none"; return 0; }
  awk '{printf "%s%s<->%s", (NR > 1 ? ", " : ""), $1, $2} END {print ""}' "$CUTS"
}

# Rewrites each running node's nemesis table from $CUTS: drop input from every node it is cut
# from (both ends do it, so a cut is symmetric). One nemesis container does every node, one
# nft transaction each, so all ends of a cut take effect within milliseconds of each other.
apply_cuts() {
  local name peer ips
  declare -A ip
  touch "$CUTS"
  for name in "${NODES[@]}"; do
    [[ "$(state_of "$name")" =~ ^(running|paused)$ ]] && ip[$name]="$(ip_of "$name")"
  done
  for name in "${NODES[@]}"; do
    [[ -n "${ip[$name]:-}" ]] || continue
    ips=""
    while read -r peer; do
      [[ -n "${ip[$peer]:-}" ]] && ips="${ips:+$ips, }${ip[$peer]}"
    done < <(awk -v k="$name" '$1 == k {print $2} $2 == k {print $1}' "$CUTS")
    echo "nsenter --target $(docker inspect -f '{{.State.Pid}}' "$(cid "$name")") --net nft -f - <<'NFT'"
    echo "add table inet $NFT_TABLE"
    echo "delete table inet $NFT_TABLE"
    if [[ -n "$ips" ]]; then
      echo "table inet $NFT_TABLE {"
      echo "  chain input {"
      echo "    type filter hook input priority -300; policy accept;"
      echo "    ip saddr { $ips } drop"
      echo "  }"
      echo "}"
    fi
    echo "NFT"
  done | docker run --rm -i --pid host --network none \
    --cap-add SYS_ADMIN --cap-add SYS_PTRACE --cap-add NET_ADMIN "$NEMESIS_IMAGE" bash -euo pipefail -s \
    || die "could not load the nftables cuts into the nodes' namespaces"
  echo "cuts: $(cuts_text)"
}

need_nemesis() {
  image_exists "$NEMESIS_IMAGE" || die "no $NEMESIS_IMAGE image; 'scripts/docker.sh build' first"
}

cmd_partition() {
  local x y side_a side_b
  need_nemesis
  [[ $# == 2 ]] || die "partition takes two sides, e.g. 'partition n2 n3' or 'partition n1,n2 n3'"
  # Names are checked (set -e stops on a bad one) before anything is cut.
  side_a="$(for x in ${1//,/ }; do node_name "$x"; done)"
  side_b="$(for y in ${2//,/ }; do node_name "$y"; done)"
  for x in $side_a; do
    for y in $side_b; do
      [[ "$x" != "$y" ]] || die "$x is on both sides"
    done
  done
  for x in $side_a; do
    for y in $side_b; do
      if [[ "$x" < "$y" ]]; then echo "$x $y"; else echo "$y $x"; fi
    done
  done >> "$CUTS"
  sort -u -o "$CUTS" "$CUTS"
  apply_cuts
}

cmd_isolate() {
  local name others
  name="$(node_name "${1:-}")"
  others="$(printf '%s\n' "${NODES[@]}" | grep -vx "$name" | paste -sd, -)"
  cmd_partition "$name" "$others"
}

cmd_heal() {
  need_nemesis
  : > "$CUTS"
  apply_cuts
}

main() {
  local cmd="${1:-}"
  shift || true
  command -v docker > /dev/null || die "docker not found"
  case "$cmd" in
    base) cmd_base ;;
    build) cmd_build "$@" ;;
    secrets) cmd_secrets "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    kill | stop | start | pause | unpause) cmd_signal "$cmd" "$@" ;;
    logs) cmd_logs "$@" ;;
    partition) cmd_partition "$@" ;;
    isolate) cmd_isolate "$@" ;;
    heal) cmd_heal ;;
    "" | -h | --help | help) sed -n '2,40p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$cmd' (try --help)" ;;
  esac
}

main "$@"
