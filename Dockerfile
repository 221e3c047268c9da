# syntax=docker/dockerfile:1
#
# One image with both binaries, otel-tail-router and otel-tail-sampler; the Helm chart
# picks one with the container `command`.
#
#   docker build -t otel-tail-sampler:dev .
#
# Build arguments let a machine without registry access build it (CI does, with podman):
# RUNTIME_IMAGE names a local base with glibc and libstdc++ (CI makes one with
# debootstrap), and BINARIES=prebuilt takes `out/otel-tail-router` and
# `out/otel-tail-sampler` from the build context instead of compiling them (the context
# is then a directory holding just those). The defaults build from source on the standard
# bases.

ARG RUST_VERSION=1.95
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=builder

FROM ${BUILDER_IMAGE} AS builder
# RocksDB's Rust bindings are generated with libclang and built with a C++ compiler;
# jemalloc, the sampler's allocator, is built with its own configure and make.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev clang make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p otel-tail-router -p otel-tail-sampler \
    && mkdir -p /out \
    && cp target/release/otel-tail-router target/release/otel-tail-sampler /out/

# Binaries built elsewhere, from the build context's `out/`.
FROM scratch AS prebuilt
COPY out/otel-tail-router out/otel-tail-sampler /out/

FROM ${BINARIES} AS binaries

# glibc, libgcc and libstdc++ (RocksDB is C++), nothing else; runs as uid 65532.
FROM ${RUNTIME_IMAGE}
COPY --from=binaries /out/otel-tail-router /out/otel-tail-sampler /usr/local/bin/
USER 65532:65532
# OTLP gRPC, OTLP HTTP, forward (sampler), gossip (UDP), admin.
EXPOSE 4317 4318 4319 7946/udp 8888
# The standalone sampler by default; the chart sets the command per role.
ENTRYPOINT ["/usr/local/bin/otel-tail-sampler"]
