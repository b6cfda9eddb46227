#!/usr/bin/env bash
# Builds and publishes a kaitoflow release into your registry, and writes its release files:
#   KO_DOCKER_REPO=myregistry.azurecr.io/kaitoflow hack/release.sh [version]
#   kaitoflow install -f release.yaml      (or kubectl apply --server-side -f release.yaml)
#
#  1. kaitoflow's images, with ko (.ko.yaml), one per deployable under KO_DOCKER_REPO: each
#     function's (provision, tune, publish, serve, status, signals, deadletter), job-run's and
#     chat-proxy's for the workload pods, and the CLI's (kaitoflow: the controller and the ingress
#     adapters); linux/amd64 and linux/arm64.
#  2. The trainer's image, from presets/trainer with docker buildx (linux/amd64: CUDA).
#  3. The release files (release.yaml, release-kaitoflow-group.yaml, release-servicebus.yaml,
#     release-webhook.yaml; RELEASE_OUT_DIR, default the repository root): deploy/knative and its
#     parts built with kustomize, KAITOFLOW_TRAINER_IMAGE set to the trainer's digest, and every
#     ko:// reference resolved by ko to its image's digest.
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
out_dir=${RELEASE_OUT_DIR:-$root}
ko=$("$root/hack/ko.sh")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "--- trainer image" >&2
trainer=$KO_DOCKER_REPO/kaitoflow-trainer
docker buildx build --platform linux/amd64 --tag "$trainer:$version" --push \
  --metadata-file "$tmp/trainer.json" "$root/presets/trainer" >&2
digest=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["containerimage.digest"])' "$tmp/trainer.json")
trainer_ref=$trainer@$digest

echo "--- kaitoflow's images and the release files" >&2
# One overlay per release file, beside the base: kustomize takes resources by relative path.
#   release.yaml                  the core: kaito.sh's CRDs, as Kaito's manifests name them
#   release-kaitoflow-group.yaml  the core under kaitoflow.io, to install beside Kaito
#   release-servicebus.yaml       optional: the Service Bus bridge
#   release-webhook.yaml          optional: the dataset-upload webhook
overlays=$(mktemp -d "$root/deploy/.release.XXXXXX")
trap 'rm -rf "$tmp" "$overlays"' EXIT
config_patch="patches:
- patch: |-
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: kaitoflow-config
      namespace: kaitoflow
    data:
      KAITOFLOW_TRAINER_IMAGE: $trainer_ref"
overlay() { # name resources components
  mkdir -p "$overlays/$1"
  {
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../../%s\n' "$2"
    if [ -n "$3" ]; then printf 'components:\n- ../../%s\n' "$3"; fi
    if [ "$2" = knative ]; then printf '%s\n' "$config_patch"; fi
  } >"$overlays/$1/kustomization.yaml"
}
overlay release knative ""
overlay release-kaitoflow-group knative knative/kaitoflow-group
overlay release-servicebus knative/servicebus ""
overlay release-webhook knative/webhook ""
for name in release release-kaitoflow-group release-servicebus release-webhook; do
  file=$out_dir/$name.yaml
  kubectl kustomize "$overlays/$name" |
    (cd "$root" && "$ko" resolve --base-import-paths --tags "$version" --image-label "org.opencontainers.image.version=$version" -f -) >"$file"
  if grep -q 'ko://' "$file"; then
    echo "$file still has ko:// references" >&2
    exit 1
  fi
  case $name in release | release-kaitoflow-group)
    if ! grep -q "KAITOFLOW_TRAINER_IMAGE: $trainer_ref" "$file"; then
      echo "$file does not name the trainer image $trainer_ref" >&2
      exit 1
    fi
    ;;
  esac
  echo "wrote $file" >&2
done
echo "kaitoflow $version; trainer $trainer_ref. Install: kaitoflow install -f $out_dir/release.yaml" >&2
