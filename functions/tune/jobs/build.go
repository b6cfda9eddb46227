// Package jobs runs tuning as Kubernetes Jobs: Build turns a run into a batch/v1 Job and its
// ConfigMap (pure, golden-tested); Trainer creates them and reads their state; Watch turns Job and
// Pod changes into kaitoflow.job.changed.
package jobs

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Labels and annotations on the Job, its Pod and its ConfigMap.
const (
	LabelWorkspace   = events.LabelWorkspace
	LabelNamespace   = events.LabelNamespace
	LabelGeneration  = events.LabelGeneration
	LabelJob         = events.LabelJob
	AnnotationRun    = "kaitoflow.io/run"
	AnnotationAcked  = events.AnnotationAcked
	AnnotationTuning = "kaitoflow.io/tuning-deadline"
	// AnnotationProgress on the Pod is where job-run reports training progress (JSON of
	// events.TuningProgressData); the Pod watch carries it to tune.
	AnnotationProgress = "kaitoflow.io/progress"
)

// TrainerServiceAccount runs tuning pods; it may patch its own Pod (progress) and nothing else.
const TrainerServiceAccount = "kaitoflow-trainer"

// Exit codes of the trainer (presets/trainer) the Job must not retry: bad configuration, bad
// data, out of GPU memory with these settings.
var permanentExitCodes = []int32{2, 3, 4}

// Container paths.
const (
	binDir     = "/kaitoflow"
	configDir  = "/mnt/config"
	dataDir    = "/mnt/data"
	resultsDir = "/mnt/results"
	secretDir  = "/mnt/push-secret"
	cacheDir   = "/mnt/cache"
)

// Options are the cluster-wide settings of tuning Jobs.
type Options struct {
	// TrainerImage runs the trainer; WrapperImage is kaitoflow's own image, whose binary the init
	// container copies in to wrap the trainer (no sidecar: the Job ends when the trainer does).
	TrainerImage string
	WrapperImage string
	// ActiveDeadline bounds a run (a workspace annotation kaitoflow.io/tuning-deadline overrides it).
	ActiveDeadline time.Duration
	// TTLAfterFinished keeps a finished Job (and its logs) this long.
	TTLAfterFinished time.Duration
	// ShmSize is the memory-backed /dev/shm PyTorch's data loader workers share.
	ShmSize resource.Quantity
}

// DefaultOptions are the defaults of Options.
func DefaultOptions() Options {
	return Options{
		TrainerImage: presets.TrainerImage, WrapperImage: "ghcr.io/kaitoflow/kaitoflow:0.1.0",
		ActiveDeadline: 12 * time.Hour, TTLAfterFinished: 24 * time.Hour, ShmSize: resource.MustParse("8Gi"),
	}
}

// Build returns the Job and the ConfigMap (training_config.yaml) of a run. It is a pure function of
// the run and the options.
func Build(job tune.Job, o Options) (*batchv1.Job, *corev1.ConfigMap, error) {
	t := job.Workspace.Tuning
	if t == nil || t.Input == nil || t.Output == nil || job.Plan == nil {
		return nil, nil, fmt.Errorf("job %s: no tuning input, output or plan", job.Name)
	}
	run, err := json.Marshal(job)
	if err != nil {
		return nil, nil, err
	}
	deadline := o.ActiveDeadline
	if v := job.Workspace.Annotations[AnnotationTuning]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, nil, events.Permanentf(events.ReasonInvalidWorkspace, "metadata.annotations[%s]: %q is not a duration", AnnotationTuning, v)
		}
		deadline = d
	}
	labels := map[string]string{
		LabelWorkspace: job.Ref.Name, LabelNamespace: job.Ref.Namespace,
		LabelGeneration: strconv.FormatInt(job.Ref.Generation, 10), LabelJob: job.Name,
	}
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: job.Name, Namespace: job.Ref.Namespace, Labels: labels},
		Data:       map[string]string{"training_config.yaml": job.Plan.TrainingConfig},
	}

	wrapper := []string{binDir + "/kaitoflow", "job-run", "--data", dataDir, "--results", resultsDir}
	var volumes []corev1.Volume
	mounts := []corev1.VolumeMount{
		{Name: "kaitoflow", MountPath: binDir, ReadOnly: true},
		{Name: "config", MountPath: configDir, ReadOnly: true},
		{Name: "shm", MountPath: "/dev/shm"},
		{Name: "cache", MountPath: cacheDir},
	}
	if in := t.Input; in.Volume != nil {
		volumes = append(volumes, corev1.Volume{Name: "data", VolumeSource: *in.Volume})
		mounts = append(mounts, corev1.VolumeMount{Name: "data", MountPath: dataDir, ReadOnly: true})
	} else {
		volumes = append(volumes, corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
		mounts = append(mounts, corev1.VolumeMount{Name: "data", MountPath: dataDir})
		for _, u := range in.URLs {
			wrapper = append(wrapper, "--input-url", u)
		}
		if in.Image != "" {
			wrapper = append(wrapper, "--input-image", in.Image)
		}
	}
	if out := t.Output; out.Volume != nil {
		volumes = append(volumes, corev1.Volume{Name: "results", VolumeSource: *out.Volume})
	} else {
		volumes = append(volumes,
			corev1.Volume{Name: "results", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			corev1.Volume{Name: "push-secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: out.ImagePushSecret}}})
		mounts = append(mounts, corev1.VolumeMount{Name: "push-secret", MountPath: secretDir, ReadOnly: true})
		wrapper = append(wrapper, "--output-image", out.Image, "--push-secret", secretDir+"/.dockerconfigjson")
	}
	mounts = append(mounts, corev1.VolumeMount{Name: "results", MountPath: resultsDir})
	shm := o.ShmSize
	volumes = append(volumes,
		corev1.Volume{Name: "kaitoflow", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		corev1.Volume{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: job.Name}}}},
		corev1.Volume{Name: "shm", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &shm}}},
		corev1.Volume{Name: "cache", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	)
	trainer := []string{"python", "-m", "kaitoflow_trainer.train", "--method", t.Method, "--model", job.Plan.Model,
		"--revision", job.Plan.Revision, "--config", configDir + "/training_config.yaml", "--input-dir", dataDir}
	command := append(append(wrapper, "--"), trainer...)

	var pullSecrets []corev1.LocalObjectReference
	seen := map[string]bool{}
	var fromPreset []string
	if t.Preset != nil {
		fromPreset = t.Preset.ImagePullSecrets
	}
	for _, s := range append(append([]string{}, fromPreset...), t.Input.ImagePullSecrets...) {
		if !seen[s] {
			seen[s] = true
			pullSecrets = append(pullSecrets, corev1.LocalObjectReference{Name: s})
		}
	}
	gpus := resource.MustParse(strconv.Itoa(max(job.Plan.GPUs, 1)))
	nonRoot, uid, no := true, int64(1000), false
	secure := &corev1.SecurityContext{
		RunAsNonRoot: &nonRoot, RunAsUser: &uid, AllowPrivilegeEscalation: &no,
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
	backoff, ttl, active := int32(1), int32(o.TTLAfterFinished.Seconds()), int64(deadline.Seconds())
	trainerName := "trainer"
	k8sJob := &batchv1.Job{
		TypeMeta: metav1.TypeMeta{APIVersion: "batch/v1", Kind: "Job"},
		ObjectMeta: metav1.ObjectMeta{Name: job.Name, Namespace: job.Ref.Namespace, Labels: labels,
			Annotations: map[string]string{AnnotationRun: string(run)}},
		Spec: batchv1.JobSpec{
			BackoffLimit:            &backoff,
			ActiveDeadlineSeconds:   &active,
			TTLSecondsAfterFinished: &ttl,
			PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{
				{Action: batchv1.PodFailurePolicyActionFailJob, OnExitCodes: &batchv1.PodFailurePolicyOnExitCodesRequirement{
					ContainerName: &trainerName, Operator: batchv1.PodFailurePolicyOnExitCodesOpIn, Values: permanentExitCodes}},
				// A node taken away (spot eviction, drain) is not the trainer's fault.
				{Action: batchv1.PodFailurePolicyActionIgnore, OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{
					{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue}}},
			}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					RestartPolicy:      corev1.RestartPolicyNever,
					ServiceAccountName: TrainerServiceAccount,
					ImagePullSecrets:   pullSecrets,
					SecurityContext:    &corev1.PodSecurityContext{RunAsNonRoot: &nonRoot, RunAsUser: &uid, FSGroup: &uid},
					Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
						NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
							{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: job.Nodes}}}}}}},
					Tolerations: []corev1.Toleration{
						{Key: "sku", Operator: corev1.TolerationOpEqual, Value: "gpu", Effect: corev1.TaintEffectNoSchedule},
						{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
						{Key: "kubernetes.azure.com/scalesetpriority", Operator: corev1.TolerationOpEqual, Value: "spot", Effect: corev1.TaintEffectNoSchedule},
					},
					InitContainers: []corev1.Container{{
						Name: "kaitoflow", Image: o.WrapperImage, Command: []string{"/ko-app/kaitoflow", "install-self", binDir + "/kaitoflow"},
						VolumeMounts:    []corev1.VolumeMount{{Name: "kaitoflow", MountPath: binDir}},
						SecurityContext: secure,
					}},
					Containers: []corev1.Container{{
						Name: trainerName, Image: o.TrainerImage, Command: command,
						Env: []corev1.EnvVar{
							{Name: "HF_HOME", Value: cacheDir + "/huggingface"}, {Name: "PYTHONUNBUFFERED", Value: "1"},
							// job-run reports progress on its own Pod.
							{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
							{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
						},
						Resources: corev1.ResourceRequirements{
							Limits:   corev1.ResourceList{"nvidia.com/gpu": gpus},
							Requests: corev1.ResourceList{"nvidia.com/gpu": gpus},
						},
						VolumeMounts:             mounts,
						SecurityContext:          secure,
						TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
					}},
					Volumes: volumes,
				},
			},
		},
	}
	return k8sJob, cm, nil
}
