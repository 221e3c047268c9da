#!/usr/bin/env bash
# Makes the container runtime base CI builds the Dockerfile on, since no registry is
# reachable: a minimal Debian bookworm (glibc, libstdc++, CA certificates) made with
# debootstrap and imported into podman as localhost/ots-base:bookworm. Does nothing when
# that image exists. Prints the image name.
set -euo pipefail
IMAGE=localhost/ots-base:bookworm
if ! podman image exists "$IMAGE"; then
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=libstdc++6,ca-certificates \
        bookworm "$root" http://deb.debian.org/debian >&2
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import - "$IMAGE" >&2
fi
echo "$IMAGE"
