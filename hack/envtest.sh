#!/usr/bin/env bash
# Builds the Kubernetes parts the envtest and box tests run against, from the Go module proxy,
# once: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok. The binaries are
# cached outside the repository, keyed by the tools modules' go.mod and go.sum, so a later run (or
# CI on the same machine) reuses them. Prints the directory to use as KUBEBUILDER_ASSETS.
#   export KUBEBUILDER_ASSETS=$(hack/envtest.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# The key lists the same files, in the same order, as testenv.Assets.
mods=(tools/kube-apiserver tools/etcd tools/kwok)
key=$(for m in "${mods[@]}"; do cat "$root/$m/go.mod" "$root/$m/go.sum"; done | sha256sum | cut -c1-16)
cache=${KAITOFLOW_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaitoflow/envtest}
dir=$cache/$key
bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
complete=1
for b in "${bins[@]}"; do [ -x "$dir/$b" ] || complete=0; done
if [ "$complete" = 1 ]; then
  echo "$dir"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building ${bins[*]} (first run only; ~30 min on 2 cores) into $dir" >&2
build() { # module dir, output name, package
  (cd "$root/$1" && GOFLAGS=-mod=mod go build -trimpath -o "$tmp/$2" "$3") >&2
}
build tools/etcd etcd go.etcd.io/etcd/server/v3
build tools/kube-apiserver kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build tools/kube-apiserver kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build tools/kube-apiserver kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build tools/kwok kwok sigs.k8s.io/kwok/cmd/kwok
mkdir -p "$dir"
mv "${bins[@]/#/$tmp/}" "$dir/"
echo "$dir"
