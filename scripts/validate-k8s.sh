#!/usr/bin/env bash
# Validates Kubernetes manifests against the API schemas of one pinned
# Kubernetes version, strictly: an unknown or misspelled field is an error,
# and so is an object whose kind/apiVersion has no schema (the validator
# only warns about those).
#
#   scripts/validate-k8s.sh                 every manifest under deploy/k8s/
#   scripts/validate-k8s.sh FILE|DIR ...    those instead
#   scripts/validate-k8s.sh --install-only  install the validator, validate nothing
#
# The validator is kubernetes-validate from PyPI, which ships the schemas
# of every Kubernetes version it knows: it runs without network once
# installed. It is installed with pip when missing or of another version.
# Exits non-zero on any failure, printing the validator's output.
set -euo pipefail

VALIDATOR_VERSION=1.37.0   # kubernetes-validate on PyPI
K8S_VERSION=1.32.0         # the API schemas checked against
PYTHON=${PYTHON:-python3}

root=$(cd "$(dirname "$0")/.." && pwd)

installed_version() {
    "$PYTHON" -m kubernetes_validate --version 2>/dev/null || true
}

if [ "$(installed_version)" != "$VALIDATOR_VERSION" ]; then
    echo "installing kubernetes-validate==$VALIDATOR_VERSION" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$VALIDATOR_VERSION" >&2
    if [ "$(installed_version)" != "$VALIDATOR_VERSION" ]; then
        echo "validate-k8s: kubernetes-validate $VALIDATOR_VERSION did not install" >&2
        exit 2
    fi
fi

if [ "${1:-}" = "--install-only" ]; then
    exit 0
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    cd "$root"
    targets=(deploy/k8s)
fi
files=()
for t in "${targets[@]}"; do
    if [ -d "$t" ]; then
        while IFS= read -r f; do files+=("$f"); done < <(find "$t" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
    elif [ -f "$t" ]; then
        files+=("$t")
    else
        echo "validate-k8s: no such file or directory: $t" >&2
        exit 2
    fi
done
if [ ${#files[@]} -eq 0 ]; then
    echo "validate-k8s: no manifests in ${targets[*]}" >&2
    exit 2
fi

echo "kubernetes-validate $VALIDATOR_VERSION, Kubernetes $K8S_VERSION schemas, strict"
failed=0
for f in "${files[@]}"; do
    rc=0
    out=$("$PYTHON" -m kubernetes_validate --strict --kubernetes-version "$K8S_VERSION" "$f" 2>&1) || rc=$?
    echo "$out"
    # A kind or apiVersion without a schema is only a WARN line; a file of
    # no objects passes in silence: both are failures here.
    if [ "$rc" -ne 0 ] || grep -q '^WARN' <<<"$out" || ! grep -q ' passed for resource ' <<<"$out"; then
        echo "FAILED $f" >&2
        failed=1
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "validate-k8s: some manifests are invalid" >&2
    exit 1
fi
echo "validate-k8s: ${#files[@]} files valid"
