package presets

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
)

// Both the trainer and the model server download a preset's weights from the Hugging Face Hub:
// these are what their pods share for it.

// ModelAccessSecretKey is the key of presetOptions.modelAccessSecret that holds the token (Kaito's).
const ModelAccessSecretKey = "HF_TOKEN"

// ModelAccessEnv is the token of presetOptions.modelAccessSecret as huggingface_hub reads it, and
// the Secret's name (namespace/name) for the trainer's message when the Hub refuses it. Nothing
// without a Secret: public models need no token.
func ModelAccessEnv(namespace, secret string) []corev1.EnvVar {
	if secret == "" {
		return nil
	}
	return []corev1.EnvVar{
		{Name: "HF_TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: ModelAccessSecretKey}}},
		{Name: "KAITOFLOW_MODEL_ACCESS_SECRET", Value: namespace + "/" + secret},
	}
}

// WeightsCache is the volume a pod downloads the base model into: the workspace's
// kaitoflow.io/weights-cache claim, else the configured claim, else an emptyDir on the node's disk
// that lives as long as the pod. A claim is what lets a retried run, the next generation and a
// woken inference pod skip the download.
func WeightsCache(ws kaito.Workspace, configured string) corev1.VolumeSource {
	claim := configured
	if c := ws.Annotations[kaito.AnnotationWeightsCache]; c != "" {
		claim = c
	}
	if claim == "" {
		return corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
	}
	return corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}
}
