#!/usr/bin/env bash
# Builds ko (github.com/google/ko, pinned by tools/ko) from the Go module proxy, once, cached
# outside the repository keyed by tools/ko's go.mod and go.sum, and prints the binary's path.
#   KO=$(hack/ko.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
key=$(cat "$root/tools/ko/go.mod" "$root/tools/ko/go.sum" | sha256sum | cut -c1-16)
cache=${KAITOFLOW_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaitoflow/ko}
bin=$cache/$key/ko
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building ko into $cache/$key (first run only; a few minutes on 2 cores)" >&2
(cd "$root/tools/ko" && GOFLAGS=-mod=mod go build -trimpath -o "$tmp/ko" github.com/google/ko) >&2
mkdir -p "$cache/$key"
mv "$tmp/ko" "$bin"
echo "$bin"
