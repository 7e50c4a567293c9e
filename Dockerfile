# syntax=docker/dockerfile:1
#
# Rampart's image: a Rust builder stage, then distroless/cc (glibc, libgcc, CA certificates,
# no shell) running as the non-root user 65532. About 25 MB.
#
#   docker build -t rampart:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 -v "$PWD/config:/etc/rampart:ro" rampart:0.1.0
#
# The entrypoint is the binary, so every subcommand works: `rampart:0.1.0 demo-upstream ...`,
# `rampart:0.1.0 check -c /etc/rampart/rampart.yaml`.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
# The binary is a profile-guided build (benches/pgo/build.sh; docs/PERFORMANCE.md): 4-17 %
# less CPU per proxied request than the plain release build in our runs. It trains on a load
# it runs itself, with Python, curl and openssl, and merges its profiles with rustup's
# llvm-tools.
# `--build-arg PGO=0` builds the plain release binary instead (faster to build).
ARG PGO=1
RUN if [ "$PGO" = 1 ]; then \
      apt-get update && apt-get install -y --no-install-recommends python3 curl openssl \
      && rm -rf /var/lib/apt/lists/* && rustup component add llvm-tools; \
    fi
WORKDIR /src
COPY . .
# The caches keep the registry and the target dir between builds; the binary is copied out of
# the cached target dir because cache mounts are not part of the image, and stripped on the
# way (13 MB instead of 65 MB: the release profile keeps line tables for profiling).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
      bash benches/pgo/build.sh --locked && bin=target/pgo/use/release/rampart; \
    else \
      cargo build --release --locked --bin rampart && bin=target/release/rampart; \
    fi \
 && install -s -D -m 0755 "$bin" /out/rampart \
 && mkdir -p /out/state

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="rampart" \
      org.opencontainers.image.description="Sidecar reverse proxy for safe rollouts" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/rampart /usr/local/bin/rampart
# state_dir, owned by the runtime user: a named volume mounted here starts with this owner.
COPY --from=builder --chown=65532:65532 /out/state /var/lib/rampart
USER 65532:65532
# data plane, metrics (/metrics /healthz /readyz); the admin API stays on loopback.
EXPOSE 8080 9090
ENV RAMPART_CONFIG=/etc/rampart/rampart.yaml
ENTRYPOINT ["/usr/local/bin/rampart"]
CMD ["run"]
