#!/usr/bin/env bash
# Validate deploy/k8s/ with kubeconform (strict: unknown fields and duplicate keys fail) against the schemas
# committed under deploy/k8s/schemas/ — no network needed once kubeconform is in the cache.
# kubeconform is built once through the Go module proxy into ~/.cache/keel/bin (outside the clone).
#   scripts/k8s-validate.sh                 validate the manifests
#   scripts/k8s-validate.sh --print-binary  install if missing, print the binary's path, validate nothing
#   scripts/k8s-validate.sh FILE...         validate other files with the same schemas
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECONFORM_VERSION=v0.8.0
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/keel"
BINARY="$CACHE/bin/kubeconform-$KUBECONFORM_VERSION"
SCHEMAS="$PWD/deploy/k8s/schemas"

if [ ! -x "$BINARY" ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "kubeconform is not cached and Go is missing: install golang-go (Debian) or Go, then re-run" >&2
    exit 2
  fi
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  echo "building kubeconform $KUBECONFORM_VERSION through the Go module proxy" >&2
  GOBIN="$build" GOFLAGS=-buildvcs=false go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  mkdir -p "$CACHE/bin"
  mv "$build/kubeconform" "$BINARY"
fi

if [ "${1:-}" = "--print-binary" ]; then
  echo "$BINARY"
  exit 0
fi

if [ $# -gt 0 ]; then
  files=("$@")
else
  # kustomization.yaml is kustomize's input, not a resource; the schemas are data.
  mapfile -t files < <(find deploy/k8s -name '*.yaml' -not -name kustomization.yaml -not -path '*/schemas/*' | sort)
fi

exec "$BINARY" -strict -summary -output text \
  -schema-location "$SCHEMAS/core/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  -schema-location "$SCHEMAS/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
  "${files[@]}"
