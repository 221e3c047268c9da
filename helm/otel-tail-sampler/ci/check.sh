#!/usr/bin/env bash
# Chart checks, no cluster needed: installs the pinned tools with `go install` (once, into
# a cache dir), then helm lint, helm template | kubeconform for the default values and
# every ci/*-values.yaml, the helm-unittest suites, and a check that the vendored
# Kubernetes schemas are what tests/schemagen generates.
#
# Usage: helm/otel-tail-sampler/ci/check.sh [--install-only]
#   --install-only   install the tools and exit (the Rust simulation test uses helm too)
# Prints the helm binary's path on the last line with --install-only.
set -euo pipefail

CHART_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GOBIN="${OTEL_TAIL_GO_BIN:-$HOME/.cache/otel-tail-sampler/go-bin}"
export GOBIN
# A go-installed helm reports an old Kubernetes version to templates; say which one
# to render for (Chart.yaml requires >= 1.30).
KUBE_VERSION=1.31.0

HELM_MODULE=helm.sh/helm/v3
HELM_VERSION=v3.22.0
UNITTEST_MODULE=github.com/helm-unittest/helm-unittest
# Later tags carry a `replace` directive that `go install pkg@version` refuses.
UNITTEST_VERSION=v1.0.1
# The checksum database has no entry for this tag, so the go command cannot verify it
# there; the module zip's hash is pinned here instead and checked after download.
UNITTEST_ZIPHASH='h1:Mqb7hxZ7TTzSEFi2T5BVPbdKDm4sHWEaWSDBO2SHGdg='
KUBECONFORM_MODULE=github.com/yannh/kubeconform
KUBECONFORM_VERSION=v0.7.0

log() { printf '[chart-check] %s\n' "$*" >&2; }

# The main module version recorded in a Go binary's build info ("" if absent).
binary_version() {
    [ -x "$1" ] || return 0
    go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}

# install NAME MODULE PACKAGE VERSION [ENV...]: go install unless GOBIN/NAME is that version.
install_tool() {
    local name=$1 module=$2 package=$3 version=$4
    shift 4
    if [ "$(binary_version "$GOBIN/$name")" = "$version" ]; then
        return 0
    fi
    log "installing $package@$version into $GOBIN"
    mkdir -p "$GOBIN"
    (cd "${TMPDIR:-/tmp}" && env "$@" go install "$package@$version")
    local got
    got="$(binary_version "$GOBIN/$name")"
    if [ "$got" != "$version" ]; then
        log "$name: expected module $module $version, installed binary reports '$got'"
        exit 1
    fi
}

install_tools() {
    command -v go >/dev/null || { log "the go command is needed to install helm, helm-unittest and kubeconform"; exit 1; }
    install_tool helm "$HELM_MODULE" "$HELM_MODULE/cmd/helm" "$HELM_VERSION"
    install_tool kubeconform "$KUBECONFORM_MODULE" "$KUBECONFORM_MODULE/cmd/kubeconform" "$KUBECONFORM_VERSION"
    if [ "$(binary_version "$GOBIN/helm-unittest")" != "$UNITTEST_VERSION" ]; then
        install_tool helm-unittest "$UNITTEST_MODULE" "$UNITTEST_MODULE/cmd/helm-unittest" "$UNITTEST_VERSION" \
            "GONOSUMDB=$UNITTEST_MODULE"
        local hash
        hash="$(go version -m "$GOBIN/helm-unittest" | awk '$1 == "mod" { print $4; exit }')"
        if [ "$hash" != "$UNITTEST_ZIPHASH" ]; then
            rm -f "$GOBIN/helm-unittest"
            log "helm-unittest $UNITTEST_VERSION module hash '$hash' does not match the pinned $UNITTEST_ZIPHASH"
            exit 1
        fi
    fi
}

install_tools
if [ "${1:-}" = "--install-only" ]; then
    echo "$GOBIN/helm"
    exit 0
fi

HELM="$GOBIN/helm"
cd "$CHART_DIR"

values_sets=("")
for f in ci/*-values.yaml; do
    values_sets+=("$f")
done

failures=0
run() {
    local what=$1
    shift
    if "$@"; then
        log "ok: $what"
    else
        log "FAILED: $what"
        failures=$((failures + 1))
    fi
}

# Without a cluster the chart cannot generate the gossip secret (it could not read it back
# on the next render), so every render here is given one first; values files override it.
SECRET_VALUES="$(mktemp)"
trap 'rm -f "$SECRET_VALUES"' EXIT
printf 'cluster:\n  secret: chart-check-gossip-secret-0123456789abcdef\n' > "$SECRET_VALUES"

render() {
    "$HELM" template check-release . --namespace observability --kube-version "$KUBE_VERSION" \
        --values "$SECRET_VALUES" ${1:+--values "$1"}
}

validate() {
    render "$1" | "$GOBIN/kubeconform" -strict -summary \
        -schema-location "$CHART_DIR/tests/schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" -
}

for values in "${values_sets[@]}"; do
    label="${values:-default values}"
    run "helm lint ($label)" "$HELM" lint . --strict --kube-version "$KUBE_VERSION" \
        --values "$SECRET_VALUES" ${values:+--values "$values"}
    run "helm template | kubeconform ($label)" validate "$values"
done

run "helm-unittest" "$GOBIN/helm-unittest" --strict --color=false .

schemas_current() {
    local fresh status=0
    fresh="$(mktemp -d)"
    (cd tests/schemagen && go vet . && go run . -out "$fresh") && diff -r -q "$fresh" tests/schemas || status=$?
    rm -rf "$fresh"
    return "$status"
}
run "vendored schemas match tests/schemagen" schemas_current

# The image recipe is parsed here (with the buildkit parser that the `dockerfile` Python
# package wraps) and its runtime stage checked; tests/container_image.rs builds and runs it.
DOCKERFILE_PARSER_VERSION=3.4.0
dockerfile_ok() {
    if ! python3 -c 'import dockerfile' 2>/dev/null; then
        python3 -m pip install -q --disable-pip-version-check "dockerfile==$DOCKERFILE_PARSER_VERSION" >&2
    fi
    python3 - "$CHART_DIR/../../Dockerfile" <<'PY'
import sys

import dockerfile

commands = dockerfile.parse_file(sys.argv[1])
stages = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
runtime = commands[stages[-1]:]
users = [c.value[0] for c in runtime if c.cmd == "USER"]
assert users and users[-1].split(":")[0] not in ("0", "root"), "the runtime stage runs as non-root"
copied = " ".join(" ".join(c.value) for c in runtime if c.cmd == "COPY")
for binary in ("otel-tail-router", "otel-tail-sampler"):
    assert binary in copied, f"the runtime stage gets {binary}"
print(f"Dockerfile: {len(commands)} instructions, {len(stages)} stages, runtime user {users[-1]}")
PY
}
run "Dockerfile parses (tests/container_image.rs builds and runs it)" dockerfile_ok

if [ "$failures" -ne 0 ]; then
    log "$failures chart check(s) failed"
    exit 1
fi
log "all chart checks passed"
