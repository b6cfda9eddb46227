#!/usr/bin/env bash
# Builds and publishes a kaitoflow release into your registry, and writes release.yaml:
#   KO_DOCKER_REPO=myregistry.azurecr.io/kaitoflow hack/release.sh [version]
#   kubectl apply -f release.yaml
#
#  1. kaitoflow's image, with ko (.ko.yaml): every function, the controller, the ingress adapters,
#     and job-run, chat-proxy and pull-adapter for the workload pods; linux/amd64 and linux/arm64.
#  2. The trainer's image, from presets/trainer with docker buildx (linux/amd64: CUDA).
#  3. release.yaml: deploy/knative built with kustomize, KAITOFLOW_TRAINER_IMAGE set to the
#     trainer's digest, and every ko:// reference resolved by ko to kaitoflow's digest.
# Knative Serving's feature flags (deploy/knative/serving-features) are applied on their own.
#
# Needs docker with buildx, kubectl (for kustomize) and credentials for the registry
# (az acr login --name <registry>). ko is built from tools/ko (hack/ko.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
: "${KO_DOCKER_REPO:?set KO_DOCKER_REPO to the repository to publish to, e.g. myregistry.azurecr.io/kaitoflow}"
export KO_DOCKER_REPO
version=${1:-$(git -C "$root" describe --tags --always --dirty)}
# Stamped into the binary by .ko.yaml's ldflags: `kaitoflow version` names the release.
export KAITOFLOW_VERSION=$version
out=${RELEASE_OUT:-$root/release.yaml}
ko=$("$root/hack/ko.sh")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "--- trainer image" >&2
trainer=$KO_DOCKER_REPO/kaitoflow-trainer
docker buildx build --platform linux/amd64 --tag "$trainer:$version" --push \
  --metadata-file "$tmp/trainer.json" "$root/presets/trainer" >&2
digest=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["containerimage.digest"])' "$tmp/trainer.json")
trainer_ref=$trainer@$digest

echo "--- kaitoflow image and release.yaml" >&2
# An overlay beside the base: kustomize takes resources by relative path.
overlay=$(mktemp -d "$root/deploy/.release.XXXXXX")
trap 'rm -rf "$tmp" "$overlay"' EXIT
cat >"$overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../knative
patches:
- patch: |-
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: kaitoflow-config
      namespace: kaitoflow
    data:
      KAITOFLOW_TRAINER_IMAGE: $trainer_ref
YAML
kubectl kustomize "$overlay" |
  (cd "$root" && "$ko" resolve --base-import-paths --tags "$version" --image-label "org.opencontainers.image.version=$version" -f -) >"$out"
if grep -q 'ko://' "$out"; then
  echo "release.yaml still has ko:// references" >&2
  exit 1
fi
if ! grep -q "KAITOFLOW_TRAINER_IMAGE: $trainer_ref" "$out"; then
  echo "release.yaml does not name the trainer image $trainer_ref" >&2
  exit 1
fi
echo "wrote $out (kaitoflow $version; trainer $trainer_ref)" >&2
