#!/usr/bin/env bash
# The README's test command: every test, the ones against a real kube-apiserver and etcd
# included. The first run builds those two binaries from the Go module proxy (cached outside the
# repository, see hack/envtest.sh); later runs start in seconds. Arguments go to `go test`
# (hack/test.sh -run TestCLI -v).
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBUILDER_ASSETS=$(hack/envtest.sh)
export KUBEBUILDER_ASSETS
# A missing API server fails the run instead of skipping its tests.
export KAITOFLOW_REQUIRE_ENVTEST=1
go test "$@" ./...
if [ $# -eq 0 ]; then
  # The trainer's own tests: python3's unittest, no ML packages needed.
  (cd presets/trainer && python3 -m unittest discover -s tests -t .)
fi
