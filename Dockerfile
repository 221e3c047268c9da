# syntax=docker/dockerfile:1
#
# One image with both binaries, otel-tail-router and otel-tail-sampler; the Helm chart
# picks one with the container `command`.
#
#   docker build -t otel-tail-sampler:dev .
#
# Not built by CI here (no container engine on the CI machine): CI checks only that this
# file parses (helm/otel-tail-sampler/ci/check.sh).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
# RocksDB's Rust bindings are generated with libclang and built with a C++ compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev clang \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p otel-tail-router -p otel-tail-sampler \
    && mkdir -p /out \
    && cp target/release/otel-tail-router target/release/otel-tail-sampler /out/

# glibc, libgcc and libstdc++ (RocksDB is C++), nothing else; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/otel-tail-router /out/otel-tail-sampler /usr/local/bin/
USER 65532:65532
# OTLP gRPC, OTLP HTTP, forward (sampler), gossip (UDP), admin.
EXPOSE 4317 4318 4319 7946/udp 8888
# The standalone sampler by default; the chart sets the command per role.
ENTRYPOINT ["/usr/local/bin/otel-tail-sampler"]
