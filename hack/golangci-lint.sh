#!/usr/bin/env bash
# Builds golangci-lint (pinned by tools/golangci-lint) from the Go module proxy, once, cached
# outside the repository keyed by tools/golangci-lint's go.mod and go.sum, and prints the binary's path.
#   GOLANGCI_LINT=$(hack/golangci-lint.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
key=$(cat "$root/tools/golangci-lint/go.mod" "$root/tools/golangci-lint/go.sum" | sha256sum | cut -c1-16)
cache=${KAITOFLOW_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaitoflow/golangci-lint}
bin=$cache/$key/golangci-lint
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building golangci-lint into $cache/$key (first run only; a few minutes on 2 cores)" >&2
(cd "$root/tools/golangci-lint" && GOFLAGS=-mod=mod go build -trimpath -o "$tmp/golangci-lint" github.com/golangci/golangci-lint/v2/cmd/golangci-lint) >&2
mkdir -p "$cache/$key"
mv "$tmp/golangci-lint" "$bin"
echo "$bin"
