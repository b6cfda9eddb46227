#!/usr/bin/env bash
# The README's test command: every test, the ones against a real kube-apiserver and etcd
# included, and the release built with ko. The first run builds the Kubernetes parts and ko from
# the Go module proxy (cached outside the repository, see hack/envtest.sh and hack/ko.sh); later
# runs start in seconds. Arguments go to `go test` (hack/test.sh -run TestCLI -v).
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBUILDER_ASSETS=$(hack/envtest.sh)
export KUBEBUILDER_ASSETS
# A missing API server fails the run instead of skipping its tests.
export KAITOFLOW_REQUIRE_ENVTEST=1
# ko, for the release test (deploy/release_test.go): built once from tools/ko, cached like the above.
KAITOFLOW_KO=$(hack/ko.sh)
export KAITOFLOW_KO KAITOFLOW_REQUIRE_KO=1
go test "$@" ./...
if [ $# -eq 0 ]; then
  # The trainer's own tests: python3's unittest, no ML packages needed.
  (cd presets/trainer && python3 -m unittest discover -s tests -t .)
fi
