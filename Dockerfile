# syntax=docker/dockerfile:1
# One Dockerfile for every Paygate image. Pick the service with --target:
#
#   docker build --target api                 -t paygate/api .
#   docker build --target payment-processor   -t paygate/payment-processor .
#   docker build --target callback-processor  -t paygate/callback-processor .
#   docker build --target callback-dispatcher -t paygate/callback-dispatcher .
#   docker build --target gateway-sim         -t paygate/gateway-sim .
#
# All five share the builder stages: the dependency layer (cargo-chef) is rebuilt only
# when Cargo.toml or Cargo.lock change, and one `cargo build` makes every binary, so
# building the five targets compiles the workspace once.

# The toolchain Paygate is tested with; the builder and the runtime share Debian's
# release so the binaries find the same glibc.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
# librdkafka is built from source by rdkafka-sys (a C/C++ toolchain, make, cmake,
# zlib, and OpenSSL's headers for TLS and SASL to the brokers); the event schemas are
# compiled with protoc. Build-only image: versions follow
# the Debian release pinned above.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config protobuf-compiler zlib1g-dev libssl-dev python3 perl \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --version 0.1.78 --locked \
    && rm -rf "$CARGO_HOME/registry"
WORKDIR /src

# The recipe: the workspace's manifests and lock file, reduced to what decides the
# dependency build.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The cached layer: every dependency of every service, release profile.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked \
        --bin paygate-api \
        --bin paygate-payment-processor \
        --bin paygate-callback-processor \
        --bin paygate-callback-dispatcher \
        --bin paygate-gateway-sim \
    && mkdir -p /out \
    && cp target/release/paygate-api target/release/paygate-payment-processor \
        target/release/paygate-callback-processor target/release/paygate-callback-dispatcher \
        target/release/paygate-gateway-sim /out/

# What every service image is: Debian slim (glibc, libgcc, zlib for librdkafka) plus
# OpenSSL's library (librdkafka's TLS to the brokers) and the CA roots, no shell tools
# added, a numeric non-root user so Kubernetes can check runAsNonRoot. Services log
# JSON to stdout and keep nothing on disk, so the root filesystem can be mounted
# read-only.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV PAYGATE__LOG__FORMAT=json
USER 10001:10001
WORKDIR /

FROM runtime AS api
COPY --from=builder /out/paygate-api /usr/local/bin/paygate-api
# Inside a container the service listens on every interface.
ENV PAYGATE__API__LISTEN=0.0.0.0:8080
ENV PAYGATE__API__METRICS_LISTEN=0.0.0.0:9180
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/paygate-api"]
CMD ["serve"]

FROM runtime AS payment-processor
COPY --from=builder /out/paygate-payment-processor /usr/local/bin/paygate-payment-processor
ENV PAYGATE__PAYMENT_PROCESSOR__LISTEN=0.0.0.0:8081
ENV PAYGATE__PAYMENT_PROCESSOR__METRICS_LISTEN=0.0.0.0:9181
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/paygate-payment-processor"]

FROM runtime AS callback-processor
COPY --from=builder /out/paygate-callback-processor /usr/local/bin/paygate-callback-processor
ENV PAYGATE__CALLBACK_PROCESSOR__LISTEN=0.0.0.0:8082
ENV PAYGATE__CALLBACK_PROCESSOR__METRICS_LISTEN=0.0.0.0:9182
EXPOSE 8082
ENTRYPOINT ["/usr/local/bin/paygate-callback-processor"]

FROM runtime AS callback-dispatcher
COPY --from=builder /out/paygate-callback-dispatcher /usr/local/bin/paygate-callback-dispatcher
ENV PAYGATE__CALLBACK_DISPATCHER__LISTEN=0.0.0.0:8083
ENV PAYGATE__CALLBACK_DISPATCHER__METRICS_LISTEN=0.0.0.0:9183
EXPOSE 8083
ENTRYPOINT ["/usr/local/bin/paygate-callback-dispatcher"]

FROM runtime AS gateway-sim
COPY --from=builder /out/paygate-gateway-sim /usr/local/bin/paygate-gateway-sim
ENV PAYGATE_SIM_LISTEN=0.0.0.0:8090
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/paygate-gateway-sim"]
