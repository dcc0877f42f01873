# customer-cluster runtime image: one node per container.
#
# Two ways to get the binary into the same runtime stage:
#
#   docker build -t customer-cluster .
#       compiles from source in ${RUST_IMAGE} (stage `builder`), then copies the binary into
#       the runtime stage (`runtime`, the default target). This is what people elsewhere do.
#
#   scripts/docker.sh build
#       builds `--target prebuilt` with a small staging directory as the context: the binary
#       from `cargo build --release` on the host, plus docker/ and config/container.toml. For
#       machines where no Rust image can be pulled; the host must run Debian bookworm's glibc
#       (or older), the same as the base image.
#
# `prebuilt` comes before `builder` on purpose: the legacy (non-BuildKit) builder builds every
# stage up to the target, so `--target prebuilt` never touches ${RUST_IMAGE}. Its COPY names
# `customer-cluster*` with a wildcard next to a file every context has, so that a legacy source
# build (whose context has no such binary) passes that stage too; BuildKit skips it altogether.
#
# Runtime contract: runs as the unprivileged user `customer-cluster` (uid 10001); configuration
# from /etc/customer-cluster/node.toml (mount your own over it) and CUSTOMER_CLUSTER_* env vars;
# data (the SQLite file on the database node) under the volume /var/lib/customer-cluster; the
# binary is PID 1 and handles SIGTERM itself, so `docker stop` is a graceful leave; the
# HEALTHCHECK asks GET /health on the node's own HTTP port.

ARG BASE_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

FROM ${BASE_IMAGE} AS runtime-base
RUN groupadd --system --gid 10001 customer-cluster \
 && useradd --system --uid 10001 --gid customer-cluster --no-create-home \
      --home-dir /var/lib/customer-cluster --shell /usr/sbin/nologin customer-cluster \
 && mkdir -p /var/lib/customer-cluster /etc/customer-cluster \
 && chown customer-cluster:customer-cluster /var/lib/customer-cluster
COPY config/container.toml /etc/customer-cluster/node.toml
ENV CUSTOMER_CLUSTER_CONFIG=/etc/customer-cluster/node.toml
WORKDIR /var/lib/customer-cluster
VOLUME /var/lib/customer-cluster
# 8080: HTTP API; 4701: node-to-node (ractor_cluster) listener.
EXPOSE 8080 4701
USER customer-cluster
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/customer-cluster"]
CMD ["node"]

FROM runtime-base AS prebuilt
COPY docker/healthcheck customer-cluster* /usr/local/bin/

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin customer-cluster \
 && install -m 0755 target/release/customer-cluster /customer-cluster \
 && strip --strip-debug /customer-cluster

FROM runtime-base AS runtime
COPY docker/healthcheck /usr/local/bin/
COPY --from=builder /customer-cluster /usr/local/bin/customer-cluster
