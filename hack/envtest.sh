#!/usr/bin/env bash
# Builds the kube-apiserver and etcd the envtest-based tests run against, from the Go module proxy,
# once: the binaries are cached outside the repository, keyed by the tools modules' go.sum, so a
# later run (or CI on the same machine) reuses them. Prints the directory to use as
# KUBEBUILDER_ASSETS.
#   export KUBEBUILDER_ASSETS=$(hack/envtest.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
key=$(cat "$root"/tools/kube-apiserver/go.mod "$root"/tools/kube-apiserver/go.sum "$root"/tools/etcd/go.mod "$root"/tools/etcd/go.sum | sha256sum | cut -c1-16)
cache=${KAITOFLOW_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaitoflow/envtest}
dir=$cache/$key
if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/etcd" ]; then
  echo "$dir"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building etcd and kube-apiserver for envtest (first run only; ~15 min on 2 cores) into $dir" >&2
(cd "$root/tools/etcd" && GOFLAGS=-mod=mod go build -trimpath -o "$tmp/etcd" go.etcd.io/etcd/server/v3) >&2
(cd "$root/tools/kube-apiserver" && GOFLAGS=-mod=mod go build -trimpath -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver) >&2
mkdir -p "$dir"
mv "$tmp/etcd" "$tmp/kube-apiserver" "$dir/"
echo "$dir"
