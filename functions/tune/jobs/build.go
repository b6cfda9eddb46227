// Package jobs runs tuning as Kubernetes Jobs: Build turns a run into a batch/v1 Job and its
// ConfigMap (pure, golden-tested); Trainer creates them and reads their state; Watch turns Job and
// Pod changes into kaitoflow.job.changed.
package jobs

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Labels and annotations on the Job, its Pod and its ConfigMap.
const (
	LabelWorkspace  = events.LabelWorkspace
	LabelNamespace  = events.LabelNamespace
	LabelGeneration = events.LabelGeneration
	LabelJob        = events.LabelJob
	// LabelAttempt numbers the Jobs of one generation from 1 (no label: the first).
	LabelAttempt     = "kaitoflow.io/attempt"
	AnnotationRun    = "kaitoflow.io/run"
	AnnotationAcked  = events.AnnotationAcked
	AnnotationTuning = "kaitoflow.io/tuning-deadline"
	// AnnotationProgress on the Pod is where job-run reports training progress (JSON of
	// events.TuningProgressData); the Pod watch carries it to tune.
	AnnotationProgress = "kaitoflow.io/progress"
)

// TrainerServiceAccount runs tuning pods; it may patch its own Pod (progress) and nothing else.
const TrainerServiceAccount = "kaitoflow-trainer"

// Exit codes of the trainer (presets/trainer) the Job must not retry, and the reasons a failed
// run reports for them: bad configuration, bad data, out of GPU memory with these settings, and
// weights the Hugging Face Hub refused (a transient download failure exits 1, which is retried).
// They are the trainer contract's (presets.Contract), which the trainer reads too.
var exitReasons = presets.Contract().PermanentExits()

// ReasonModelDownloadFailed: the base model's weights could not be downloaded; the message has the
// HTTP status and, for 401 and 403, the Secret the token came from.
var ReasonModelDownloadFailed = presets.Contract().Reasons.Model

// permanentExitCodes are exitReasons' codes, in order.
func permanentExitCodes() []int32 {
	return slices.Sorted(maps.Keys(exitReasons))
}

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
	// TrainerImage runs the trainer (presets/trainer); WrapperImage is job-run's (cmd/job-run),
	// whose binary the init container copies in to wrap the trainer (no sidecar: the Job ends
	// when the trainer does). Both are required: hack/release.sh builds them into the user's
	// registry, and there is no public default.
	TrainerImage string
	WrapperImage string
	// ActiveDeadline bounds a run (a workspace annotation kaitoflow.io/tuning-deadline overrides it).
	ActiveDeadline time.Duration
	// TTLAfterFinished keeps a finished Job (and its logs) this long.
	TTLAfterFinished time.Duration
	// ShmSize is the memory-backed /dev/shm PyTorch's data loader workers share.
	ShmSize resource.Quantity
	// WeightsCache is a PersistentVolumeClaim (in each workspace's namespace) that keeps the
	// downloaded base models, so a retried run and the next generation skip the download; a
	// workspace's kaitoflow.io/weights-cache annotation overrides it. Without one the cache is an
	// emptyDir on the node's disk, which lives as long as the pod.
	WeightsCache string
	// AllowHosts are the private dataset hosts or CIDRs the pipeline admits (--allow-host): the
	// pod's job-run fetches under the same policy provision checked the URLs with.
	AllowHosts []string
}

// DefaultOptions are the defaults of Options.
func DefaultOptions() Options {
	return Options{
		ActiveDeadline: 12 * time.Hour, TTLAfterFinished: 24 * time.Hour, ShmSize: resource.MustParse("8Gi"),
	}
}

// Build returns the Job and the ConfigMap (training_config.yaml) of a run. It is a pure function of
// the run and the options, composed of named steps — where the data comes from, where the adapter
// goes, the scratch volumes, the commands, pull secrets, scheduling, security and failure policy —
// each golden-tested on its own branch.
func Build(job tune.Job, o Options) (*batchv1.Job, *corev1.ConfigMap, error) {
	t := job.Workspace.Tuning
	if t == nil || t.Input == nil || t.Output == nil || job.Plan == nil {
		return nil, nil, fmt.Errorf("job %s: no tuning input, output or plan", job.Name)
	}
	if o.TrainerImage == "" || o.WrapperImage == "" {
		return nil, nil, fmt.Errorf("job %s: the trainer image and job-run's image must both be configured (--trainer-image, --wrapper-image)", job.Name)
	}
	run, err := json.Marshal(job)
	if err != nil {
		return nil, nil, err
	}
	deadline, err := activeDeadline(job.Workspace, o)
	if err != nil {
		return nil, nil, err
	}
	labels := map[string]string{
		LabelWorkspace: job.Ref.Name, LabelNamespace: job.Ref.Namespace,
		LabelGeneration: strconv.FormatInt(job.Ref.Generation, 10), LabelJob: job.Name,
		LabelAttempt: strconv.Itoa(job.AttemptOf()),
	}
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: job.Name, Namespace: job.Ref.Namespace, Labels: labels},
		Data:       map[string]string{presets.TrainingConfigKey: job.Plan.TrainingConfig},
	}

	p := podFor(job, o)
	podSecurity, containerSecurity := security()
	backoff, ttl, active := int32(1), int32(o.TTLAfterFinished.Seconds()), int64(deadline.Seconds())
	k8sJob := &batchv1.Job{
		TypeMeta: metav1.TypeMeta{APIVersion: "batch/v1", Kind: "Job"},
		ObjectMeta: metav1.ObjectMeta{Name: job.Name, Namespace: job.Ref.Namespace, Labels: labels,
			Annotations: map[string]string{AnnotationRun: string(run)}},
		Spec: batchv1.JobSpec{
			BackoffLimit:            &backoff,
			ActiveDeadlineSeconds:   &active,
			TTLSecondsAfterFinished: &ttl,
			PodFailurePolicy:        failurePolicy(),
			Template: corev1.PodTemplateSpec{
				// Karpenter must not consolidate or drift a node from under a training run: an
				// interrupted run starts again from its last checkpoint at best.
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{"karpenter.sh/do-not-disrupt": "true"}},
				Spec: corev1.PodSpec{
					RestartPolicy:      corev1.RestartPolicyNever,
					ServiceAccountName: TrainerServiceAccount,
					ImagePullSecrets:   pullSecrets(t),
					SecurityContext:    podSecurity,
					Affinity:           onNodes(job.Nodes),
					Tolerations:        gpuTolerations(),
					InitContainers: []corev1.Container{{
						Name: "kaitoflow", Image: o.WrapperImage, Command: []string{presets.JobRunEntrypoint, "install-self", binDir + "/job-run"},
						VolumeMounts:    []corev1.VolumeMount{{Name: "kaitoflow", MountPath: binDir}},
						SecurityContext: containerSecurity,
					}},
					Containers: []corev1.Container{trainerContainerFor(job, o, p, containerSecurity)},
					Volumes:    p.volumes,
				},
			},
		},
	}
	return k8sJob, cm, nil
}

// podFor lays out the run's pod: job-run's arguments, where the data comes from and the adapter
// goes, the scratch volumes.
func podFor(job tune.Job, o Options) podParts {
	t := job.Workspace.Tuning
	var p podParts
	p.args = []string{binDir + "/job-run", "--data", dataDir, "--results", resultsDir, "--checkpoint-tag", job.CheckpointTag()}
	for _, h := range o.AllowHosts {
		p.args = append(p.args, "--allow-host", h)
	}
	p.inputs(t.Input)
	p.outputs(t.Output)
	if job.Compare != nil {
		// Pulled with the output's credentials: a workspace's generations share a repository.
		p.args = append(p.args, "--compare-image", job.Compare.Reference)
	}
	for _, u := range job.Workspace.EvalDataURLs() {
		p.args = append(p.args, "--eval-url", u)
	}
	p.scratch(job.Name, o.ShmSize, presets.WeightsCache(job.Workspace, o.WeightsCache))
	return p
}

// trainerContainerFor is the trainer's container: job-run wrapping the trainer's command, with the
// run's GPUs.
func trainerContainerFor(job tune.Job, o Options, p podParts, sec *corev1.SecurityContext) corev1.Container {
	trainer := tune.TrainerCommand(job, "python", job.Plan.Model, job.Plan.Revision, configDir+"/"+presets.TrainingConfigKey, dataDir)
	gpus := resource.MustParse(strconv.Itoa(max(job.Plan.GPUs, 1)))
	return corev1.Container{
		Name: trainerContainer, Image: o.TrainerImage, Command: append(append(p.args, "--"), trainer...),
		Env: append([]corev1.EnvVar{
			{Name: "HF_HOME", Value: cacheDir + "/huggingface"}, {Name: "PYTHONUNBUFFERED", Value: "1"},
			// job-run reports progress on its own Pod.
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		}, presets.ModelAccessEnv(job.Ref.Namespace, job.Workspace.ModelAccessSecret())...),
		Resources: corev1.ResourceRequirements{
			Limits:   corev1.ResourceList{"nvidia.com/gpu": gpus},
			Requests: corev1.ResourceList{"nvidia.com/gpu": gpus},
		},
		VolumeMounts:             p.mounts,
		SecurityContext:          sec,
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// trainerContainer is the container whose exit codes the failure policy reads.
const trainerContainer = "trainer"

// activeDeadline is how long a run may take: the options' bound, or the workspace's
// kaitoflow.io/tuning-deadline annotation.
func activeDeadline(ws kaito.Workspace, o Options) (time.Duration, error) {
	v := ws.Annotations[AnnotationTuning]
	if v == "" {
		return o.ActiveDeadline, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, events.Permanentf(events.ReasonInvalidWorkspace, "metadata.annotations[%s]: %q is not a duration", AnnotationTuning, v)
	}
	return d, nil
}

// podParts collects what the steps add to the trainer's pod: job-run's arguments, the volumes and
// the trainer container's mounts.
type podParts struct {
	args    []string
	volumes []corev1.Volume
	mounts  []corev1.VolumeMount
}

// volume adds a volume and, when path is set, its mount in the trainer container.
func (p *podParts) volume(name string, src corev1.VolumeSource, path string, readOnly bool) {
	p.volumes = append(p.volumes, corev1.Volume{Name: name, VolumeSource: src})
	if path != "" {
		p.mounts = append(p.mounts, corev1.VolumeMount{Name: name, MountPath: path, ReadOnly: readOnly})
	}
}

func emptyDir() corev1.VolumeSource {
	return corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
}

// inputs: the workspace's volume mounted read-only as the data directory, or an empty one that
// job-run fills from the URLs or the data image before the trainer starts.
func (p *podParts) inputs(in *kaito.DataSource) {
	if in.Volume != nil {
		p.volume("data", *in.Volume, dataDir, true)
		return
	}
	p.volume("data", emptyDir(), dataDir, false)
	for _, u := range in.URLs {
		p.args = append(p.args, "--input-url", u)
	}
	if in.Image != "" {
		p.args = append(p.args, "--input-image", in.Image)
	}
}

// outputs: the workspace's volume as the results directory (the adapter stays there and nothing
// is pushed), or an empty one whose adapter job-run pushes to the output image with the push
// secret's credentials (without one, the node's or the workload identity's).
func (p *podParts) outputs(out *kaito.DataDestination) {
	if out.Volume != nil {
		p.volume("results", *out.Volume, resultsDir, false)
		return
	}
	p.volume("results", emptyDir(), resultsDir, false)
	p.args = append(p.args, "--output-image", out.Image)
	if out.ImagePushSecret != "" {
		p.volume("push-secret", corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: out.ImagePushSecret}}, secretDir, true)
		p.args = append(p.args, "--push-secret", secretDir+"/"+corev1.DockerConfigJsonKey)
	}
}

// scratch: kaitoflow's own binary (the init container copies it in), the run's ConfigMap, a
// memory-backed /dev/shm for PyTorch's data loader workers, and the Hugging Face cache.
func (p *podParts) scratch(configMap string, shm resource.Quantity, cache corev1.VolumeSource) {
	p.volume("kaitoflow", emptyDir(), binDir, true)
	cm := &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: configMap}}
	p.volume("config", corev1.VolumeSource{ConfigMap: cm}, configDir, true)
	p.volume("shm", corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &shm}}, "/dev/shm", false)
	p.volume("cache", cache, cacheDir, false)
}

// pullSecrets are the preset's and the data image's pull secrets, each once, in order.
func pullSecrets(t *kaito.TuningSpec) []corev1.LocalObjectReference {
	var names []string
	if t.Preset != nil {
		names = append(names, t.Preset.ImagePullSecrets...)
	}
	names = append(names, t.Input.ImagePullSecrets...)
	var out []corev1.LocalObjectReference
	seen := map[string]bool{}
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			out = append(out, corev1.LocalObjectReference{Name: n})
		}
	}
	return out
}

// onNodes pins the pod to the nodes provision made ready for the run.
func onNodes(nodes []string) *corev1.Affinity {
	return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: nodes}}}}}}}
}

// gpuTolerations are the taints AKS and Karpenter put on GPU and spot nodes.
func gpuTolerations() []corev1.Toleration {
	return []corev1.Toleration{
		{Key: "sku", Operator: corev1.TolerationOpEqual, Value: "gpu", Effect: corev1.TaintEffectNoSchedule},
		{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
		{Key: "kubernetes.azure.com/scalesetpriority", Operator: corev1.TolerationOpEqual, Value: "spot", Effect: corev1.TaintEffectNoSchedule},
	}
}

// security runs everything as a non-root user with no privileges: what PodSecurity's restricted
// profile admits.
func security() (*corev1.PodSecurityContext, *corev1.SecurityContext) {
	nonRoot, uid, no := true, int64(1000), false
	// RuntimeDefault seccomp is the one field restricted adds to non-root and no privileges; the
	// box's PodSecurity admission refused the pods without it.
	return &corev1.PodSecurityContext{RunAsNonRoot: &nonRoot, RunAsUser: &uid, FSGroup: &uid,
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
		&corev1.SecurityContext{
			RunAsNonRoot: &nonRoot, RunAsUser: &uid, AllowPrivilegeEscalation: &no,
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		}
}

// failurePolicy fails the Job at once on the trainer's permanent exit codes, and on a pod taken
// away with its node (spot eviction, a deleted VM, a drain): the pod is pinned to the nodes
// provision made ready, so a replacement could never be scheduled and the Job would hang — the
// attempt ends instead, and tune reports it as NodeLost.
func failurePolicy() *batchv1.PodFailurePolicy {
	name := trainerContainer
	return &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{
		{Action: batchv1.PodFailurePolicyActionFailJob, OnExitCodes: &batchv1.PodFailurePolicyOnExitCodesRequirement{
			ContainerName: &name, Operator: batchv1.PodFailurePolicyOnExitCodesOpIn, Values: permanentExitCodes()}},
		{Action: batchv1.PodFailurePolicyActionFailJob, OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{
			{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue}}},
	}}
}
