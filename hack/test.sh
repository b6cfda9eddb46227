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
# The real ML stack, from the hashed locks (hack/ml-env.sh, cached like the above): the trainer's
# environment (torch, transformers, peft, bitsandbytes; CPU here) and vLLM's CPU build. The Go
# tests that run the real trainer (job-run, up's local drivers) and real vLLM find them here, and
# with the REQUIRE variables a missing one fails them instead of skipping.
KAITOFLOW_ML_PYTHON=$(hack/ml-env.sh)
KAITOFLOW_VLLM_PYTHON=$(hack/ml-env.sh vllm)
export KAITOFLOW_ML_PYTHON KAITOFLOW_VLLM_PYTHON KAITOFLOW_ML_REQUIRE=1 KAITOFLOW_VLLM_REQUIRE=1
go test "$@" ./...
if [ $# -eq 0 ]; then
  # The trainer's own tests: first with python3 alone (no ML packages: the pure parts run, the real
  # runs must skip and say so), then in the ML environment, where the real runs must run.
  (cd presets/trainer && env -u KAITOFLOW_ML_REQUIRE python3 -m unittest discover -s tests -t .)
  (cd presets/trainer && "$KAITOFLOW_ML_PYTHON" -m unittest discover -s tests -t .)
fi
