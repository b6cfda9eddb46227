package kaito

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The API versions and kind are Kaito's: a manifest written for Kaito is a kaitoflow request as it
// is. Kaito serves both versions with the same top-level shape and no conversion webhook (v1beta1
// adds fields and is the storage version); kaitoflow reads either into one Workspace and writes
// v1beta1.
const (
	Group              = "kaito.sh"
	APIVersionV1Alpha1 = Group + "/v1alpha1"
	APIVersionV1Beta1  = Group + "/v1beta1"
	// APIVersion is the version kaitoflow writes where a request names none: Kaito's storage version.
	APIVersion = APIVersionV1Beta1
	Kind       = "Workspace"
)

// APIVersions are the Workspace versions kaitoflow accepts, oldest first.
func APIVersions() []string { return []string{APIVersionV1Alpha1, APIVersionV1Beta1} }

// Workspace mirrors Kaito's Workspace (kaito.sh/v1alpha1 and v1beta1) field for field, with the
// same JSON spelling, so that `kubectl apply -f` manifests and kaitoflow requests are the same
// document. Unlike most CRDs, Kaito puts resource/tuning/inference at the top level, not under spec.
type Workspace struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Resource  ResourceSpec    `json:"resource,omitempty"`
	Inference *InferenceSpec  `json:"inference,omitempty"`
	Tuning    *TuningSpec     `json:"tuning,omitempty"`
	Status    WorkspaceStatus `json:"status,omitempty"`
}

// ResourceSpec describes the GPU nodes a workspace runs on.
type ResourceSpec struct {
	Count          *int                  `json:"count,omitempty"`
	InstanceType   string                `json:"instanceType,omitempty"`
	LabelSelector  *metav1.LabelSelector `json:"labelSelector"`
	PreferredNodes []string              `json:"preferredNodes,omitempty"`
	// Partition (v1beta1) asks for a GPU partition (MIG profile or accelerator share) instead of
	// whole GPUs; kaitoflow refuses it, naming the field.
	Partition *PartitionSpec `json:"partition,omitempty"`
}

// PartitionSpec is Kaito v1beta1's GPU partitioning request.
type PartitionSpec struct {
	Mode    string `json:"mode,omitempty"`
	Profile string `json:"profile,omitempty"`
	Count   *int   `json:"count,omitempty"`
}

// PresetSpec names a model preset and, optionally, a private image for it.
type PresetSpec struct {
	PresetMeta    `json:",inline"`
	PresetOptions `json:"presetOptions,omitempty"`
}

// PresetMeta is the preset name and how its image is reached.
type PresetMeta struct {
	Name       string `json:"name"`
	AccessMode string `json:"accessMode,omitempty"`
}

// PresetOptions points a private preset at its image, and names the Secret whose HF_TOKEN key
// downloads a gated or private model's weights (Kaito's modelAccessSecret).
type PresetOptions struct {
	Image             string   `json:"image,omitempty"`
	ImagePullSecrets  []string `json:"imagePullSecrets,omitempty"`
	ModelAccessSecret string   `json:"modelAccessSecret,omitempty"`
}

// InferenceSpec serves a preset (optionally with adapters) or a user pod template.
type InferenceSpec struct {
	Preset   *PresetSpec             `json:"preset,omitempty"`
	Template *corev1.PodTemplateSpec `json:"template,omitempty"`
	Config   string                  `json:"config,omitempty"`
	Adapters []AdapterSpec           `json:"adapters,omitempty"`
}

// AdapterSpec is one LoRA adapter applied at inference time.
type AdapterSpec struct {
	Source   *DataSource `json:"source,omitempty"`
	Strength *string     `json:"strength,omitempty"`
}

// DataSource is where tuning data (or an adapter) comes from: exactly one of URLs, Volume, Image.
type DataSource struct {
	Name             string               `json:"name,omitempty"`
	URLs             []string             `json:"urls,omitempty"`
	Volume           *corev1.VolumeSource `json:"volumeSource,omitempty"`
	Image            string               `json:"image,omitempty"`
	ImagePullSecrets []string             `json:"imagePullSecrets,omitempty"`
}

// DataDestination is where the adapter goes: exactly one of Volume, Image.
type DataDestination struct {
	Volume          *corev1.VolumeSource `json:"volumeSource,omitempty"`
	Image           string               `json:"image,omitempty"`
	ImagePushSecret string               `json:"imagePushSecret,omitempty"`
}

// Tuning methods Kaito supports.
const (
	MethodLoRA  = "lora"
	MethodQLoRA = "qlora"
)

// TuningSpec describes a fine-tuning run.
type TuningSpec struct {
	Preset *PresetSpec      `json:"preset,omitempty"`
	Method string           `json:"method,omitempty"`
	Config string           `json:"config,omitempty"`
	Input  *DataSource      `json:"input"`
	Output *DataDestination `json:"output"`
}

// WorkspaceStatus is Kaito's status block (workerNodes, conditions) and, on a Workspace custom
// resource, what kaitoflow's controller writes back from the status store: the generation it
// describes, the phase, the endpoint, the adapter image and a failure's reason. Manifests carrying a
// status (kubectl get -o yaml) still decode.
type WorkspaceStatus struct {
	WorkerNodes []string           `json:"workerNodes,omitempty"`
	Conditions  []metav1.Condition `json:"conditions,omitempty"`
	// State and TargetNodeCount are v1beta1's: Pending, Running, Succeeded, Ready, NotReady or
	// Failed, and the nodes the workspace runs on. Performance (v1beta1, benchmark results kaitoflow
	// does not produce) is kept as it was read.
	State              string          `json:"state,omitempty"`
	TargetNodeCount    int32           `json:"targetNodeCount,omitempty"`
	Performance        json.RawMessage `json:"performance,omitempty"`
	ObservedGeneration int64           `json:"observedGeneration,omitempty"`
	Phase              string          `json:"phase,omitempty"`
	Endpoint           string          `json:"endpoint,omitempty"`
	Image              string          `json:"image,omitempty"`
	// Adapters are the model names the endpoint serves the workspace's adapters by.
	Adapters []string `json:"adapters,omitempty"`
	Failure  string   `json:"failure,omitempty"`
	// EventsRecorded counts the pipeline events the controller has recorded as Kubernetes Events
	// on the object (kubectl describe's timeline).
	EventsRecorded int `json:"eventsRecorded,omitempty"`
	// ServingGeneration is the generation whose adapter answers when it is not the latest (after
	// a rollback); Replicas the replicas that served it when last reported.
	ServingGeneration int64 `json:"servingGeneration,omitempty"`
	Replicas          int   `json:"replicas,omitempty"`
	// RollbackHandled is the last kaitoflow.io/rollback annotation value the controller acted on.
	RollbackHandled string `json:"rollbackHandled,omitempty"`
	// Attempts are the generation's tuning attempts when there was more than one; GPU the GPU
	// time the workspace has held.
	Attempts []TuningAttempt `json:"attempts,omitempty"`
	GPU      *GPUTime        `json:"gpu,omitempty"`
	// History is every generation's adapter (or failure), LiveGeneration the one serving, Held
	// why the promotion policy keeps this generation's adapter from serving.
	History        []AdapterRecord `json:"history,omitempty"`
	LiveGeneration int64           `json:"liveGeneration,omitempty"`
	// LiveCheckpoint is the step of the checkpoint of LiveGeneration that serves, 0 when its
	// final adapter does.
	LiveCheckpoint int    `json:"liveCheckpoint,omitempty"`
	Held           string `json:"held,omitempty"`
}

// AdapterRecord is one generation's adapter in a workspace's history: its image, what it was trained on, how it scored,
// what the promotion policy decided; or why the generation failed.
type AdapterRecord struct {
	Generation int64     `json:"generation"`
	Image      string    `json:"image,omitempty"`
	Digest     string    `json:"digest,omitempty"`
	Pushed     time.Time `json:"pushed,omitzero"`
	// Datasets are the digests of the dataset files it was trained on.
	Datasets []string `json:"datasets,omitempty"`
	// Scores are its eval losses (events.MetricEvalLoss and the others) on its held-out rows.
	Scores map[string]float64 `json:"scores,omitempty"`
	// Held says why the promotion policy did not serve it; Failed why the generation failed.
	Held   string `json:"held,omitempty"`
	Failed string `json:"failed,omitempty"`
	// Canary says the share and window of its canary (a canary policy); Live is what users saw of
	// it and of the adapter serving beside it, once the canary was judged.
	Canary string      `json:"canary,omitempty"`
	Live   *CanaryLive `json:"live,omitempty"`
	// Checkpoints are the run's servable checkpoints, oldest first (`kaitoflow promote NAME
	// --checkpoint STEP` serves one).
	Checkpoints []AdapterCheckpoint `json:"checkpoints,omitempty"`
	// Loss is the run's training loss curve, as reported while it ran.
	Loss []float64 `json:"loss,omitempty"`
}

// AdapterCheckpoint is a servable checkpoint of a generation's run: its training step, its image by
// digest (an adapter image of its own, never pruned by kaitoflow) and its eval_loss on the held-out
// rows when the run had some.
type AdapterCheckpoint struct {
	Step     int      `json:"step"`
	Image    string   `json:"image"`
	EvalLoss *float64 `json:"evalLoss,omitempty"`
}

// CanaryLive is what chat-proxy measured of a canary's two adapters, over the same window and the
// same kind of requests: the one serving (Stable) and the candidate (Canary).
type CanaryLive struct {
	Stable CanaryArm `json:"stable"`
	Canary CanaryArm `json:"canary"`
}

// CanaryArm is what chat-proxy measured of one adapter's answers: sums, so that replicas' numbers
// add up (Add) and the means are taken once, over all of them.
type CanaryArm struct {
	// Requests answered, of them Errors (a 5xx, a 404 for its adapter, or no answer from the
	// model server) and Answered (a 2xx).
	Requests int64 `json:"requests"`
	Errors   int64 `json:"errors"`
	Answered int64 `json:"answered"`
	// FirstTokenSeconds is the time to the answer's first byte, summed over the Answered requests
	// (for an answer not streamed, the whole answer's time).
	FirstTokenSeconds float64 `json:"firstTokenSeconds"`
	// Tokens are the completion tokens of answers that reported them (usage, or one per streamed
	// chunk), and TokenSeconds those answers' times, so Tokens/TokenSeconds is tokens per second.
	Tokens       int64   `json:"tokens"`
	TokenSeconds float64 `json:"tokenSeconds"`
	// Up and Down are users' feedback on its answers (chat-proxy's POST /feedback).
	Up   int64 `json:"up"`
	Down int64 `json:"down"`
}

// Add is the two arms' numbers together (two replicas').
func (a CanaryArm) Add(b CanaryArm) CanaryArm {
	return CanaryArm{Requests: a.Requests + b.Requests, Errors: a.Errors + b.Errors, Answered: a.Answered + b.Answered,
		FirstTokenSeconds: a.FirstTokenSeconds + b.FirstTokenSeconds,
		Tokens:            a.Tokens + b.Tokens, TokenSeconds: a.TokenSeconds + b.TokenSeconds, Up: a.Up + b.Up, Down: a.Down + b.Down}
}

// ErrorRate is the share of requests that failed (0 without requests).
func (a CanaryArm) ErrorRate() float64 { return ratio(float64(a.Errors), float64(a.Requests)) }

// FirstToken is the mean time to first token over the answered requests.
func (a CanaryArm) FirstToken() time.Duration {
	return time.Duration(ratio(a.FirstTokenSeconds, float64(a.Answered)) * float64(time.Second))
}

// TokensPerSecond is the completion tokens per second of generation (0 when none were counted).
func (a CanaryArm) TokensPerSecond() float64 { return ratio(float64(a.Tokens), a.TokenSeconds) }

// Approval is the share of feedback that was up, and how much feedback there was.
func (a CanaryArm) Approval() (float64, int64) {
	return ratio(float64(a.Up), float64(a.Up+a.Down)), a.Up + a.Down
}

func ratio(n, d float64) float64 {
	if d <= 0 {
		return 0
	}
	return n / d
}

// TuningAttempt is one tuning attempt of a generation, in the status.
type TuningAttempt struct {
	Attempt      int    `json:"attempt"`
	InstanceType string `json:"instanceType,omitempty"`
	BatchSize    int    `json:"batchSize,omitempty"`
	SeqLen       int    `json:"seqLen,omitempty"`
	// Outcome is Succeeded, or the reason the attempt failed; Message says more, and Changes
	// what the next attempt changed (or that it resumed from a checkpoint).
	Outcome string   `json:"outcome,omitempty"`
	Message string   `json:"message,omitempty"`
	Changes []string `json:"changes,omitempty"`
	// GPUSeconds is what the attempt held: GPUs × its run time.
	GPUSeconds float64 `json:"gpuSeconds,omitempty"`
}

// GPUTime is GPU time held, in GPU-seconds: tuning, per attempt summed (the trainer's run time ×
// its GPUs); serving, the serving capacity's GPUs × how long it was held (an upper bound where
// the pool scales to zero under it).
type GPUTime struct {
	TuningSeconds  float64 `json:"tuningSeconds"`
	ServingSeconds float64 `json:"servingSeconds"`
}

// Minutes is the total in GPU-minutes.
func (g *GPUTime) Minutes() float64 {
	if g == nil {
		return 0
	}
	return (g.TuningSeconds + g.ServingSeconds) / 60
}

// AnnotationRollback on a Workspace resource asks for a rollback: "N" serves generation N's
// pushed adapter again, "0" the one before the generation serving, "N:STEP" generation N's
// checkpoint at STEP; anything after an "@" only makes a request differ from the last one
// ("2@1733040000"), so the same generation can be asked for again. The controller acts on each
// value once.
const AnnotationRollback = "kaitoflow.io/rollback"

// ParseRollback reads an AnnotationRollback value: the generation asked for (0: the previous) and
// the step of its checkpoint (0: its final adapter).
func ParseRollback(v string) (int64, int, error) {
	n, _, _ := strings.Cut(v, "@")
	g, step, hasStep := strings.Cut(strings.TrimSpace(n), ":")
	gen, err := strconv.ParseInt(g, 10, 64)
	checkpoint := 0
	if err == nil && hasStep {
		checkpoint, err = strconv.Atoi(step)
		if err == nil && (checkpoint < 1 || gen < 1) {
			err = errors.New("a checkpoint's step and generation are positive")
		}
	}
	if err != nil || gen < 0 {
		return 0, 0, fmt.Errorf("%s %q: want a generation number (N, or N:STEP for its checkpoint at STEP), optionally followed by @ and anything",
			AnnotationRollback, v)
	}
	return gen, checkpoint, nil
}

// InstanceType returns the requested SKU, or "" when the fit check is to choose one (the cheapest
// that fits; Kaito instead defaults to Standard_NC12s_v3 whether the model fits it or not).
func (w *Workspace) InstanceType() string { return w.Resource.InstanceType }

// NodeCount returns resource.count, defaulting to 1 as Kaito does.
func (w *Workspace) NodeCount() int {
	if w.Resource.Count == nil {
		return 1
	}
	return *w.Resource.Count
}

// PresetName returns the model preset the workspace tunes or serves, or "".
func (w *Workspace) PresetName() string {
	switch {
	case w.Tuning != nil && w.Tuning.Preset != nil:
		return w.Tuning.Preset.Name
	case w.Inference != nil && w.Inference.Preset != nil:
		return w.Inference.Preset.Name
	}
	return ""
}

// ModelAccessSecret returns the Secret of the preset the workspace tunes or serves (tuning's
// first), or "".
func (w *Workspace) ModelAccessSecret() string {
	switch {
	case w.Tuning != nil && w.Tuning.Preset != nil:
		return w.Tuning.Preset.ModelAccessSecret
	case w.Inference != nil && w.Inference.Preset != nil:
		return w.Inference.Preset.ModelAccessSecret
	}
	return ""
}

// AnnotationWeightsCache names a PersistentVolumeClaim in the workspace's namespace that keeps the
// base model's downloaded weights for the tuning Job and the inference pods, overriding the
// functions' configured one.
const AnnotationWeightsCache = "kaitoflow.io/weights-cache"

// AnnotationEvalData names the rows a tuning run's task scores (the generated answers' ROUGE-L
// and exact match, which `if-better:rougeL` compares) are taken on, in place of its held-out rows:
// up to MaxEvalDataURLs comma-separated http(s) URLs of JSONL or parquet files in any row format
// tuning.input reads, the row's response being the expected answer. The tuning Job fetches them as
// it fetches tuning.input.urls, under the same address policy (kaitoflow's own, outside Kaito's
// spec).
const AnnotationEvalData = "kaitoflow.io/eval-data"

// MaxEvalDataURLs bounds AnnotationEvalData's URLs.
const MaxEvalDataURLs = 8

// EvalDataURLs are AnnotationEvalData's URLs, none when it is absent.
func (w *Workspace) EvalDataURLs() []string {
	var urls []string
	for _, u := range strings.Split(w.Annotations[AnnotationEvalData], ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}

// AnnotationAdapterPullSecret names a pull-only registry Secret (a scoped ACR token's, say) in the
// workspace's namespace that the serving pods pull the tuned adapter with. The push secret is
// never used for that: it would sit in the request-facing container with the right to overwrite
// the adapter. Without one, an Azure Container Registry is read with the serving pod's workload
// identity (AcrPull) and any other registry anonymously.
const AnnotationAdapterPullSecret = "kaitoflow.io/adapter-pull-secret"

// AnnotationServingPool names the serving pool a workspace's adapters are served in: workspaces of
// one namespace that serve the same base model with the same plan share one inference service
// (one GPU), each answering by its own model name. AnnotationServingPoolSize is how many adapters
// the pool holds at once (vLLM's --max-loras, one more for a swap); every member must say the same.
const (
	AnnotationServingPool     = "kaitoflow.io/serving-pool"
	AnnotationServingPoolSize = "kaitoflow.io/serving-pool-size"
	// DefaultServingPoolSize is a pool's size when no member names one.
	DefaultServingPoolSize = 4
)

// ServingPool is the workspace's serving pool and its size, "" when it is served alone.
func (w *Workspace) ServingPool() (string, int) {
	pool := w.Annotations[AnnotationServingPool]
	size, err := strconv.Atoi(w.Annotations[AnnotationServingPoolSize])
	if err != nil || size < 1 {
		size = DefaultServingPoolSize
	}
	return pool, size
}

// DefaultNamespace is the namespace of a manifest that names none.
const DefaultNamespace = "default"

// DescribeVolume names a volume source for people: its kind and, where it has one, the object it
// refers to ("persistentVolumeClaim adapters").
func DescribeVolume(v *corev1.VolumeSource) string {
	switch {
	case v == nil:
		return "no volume"
	case v.PersistentVolumeClaim != nil:
		return "persistentVolumeClaim " + v.PersistentVolumeClaim.ClaimName
	case v.AzureFile != nil:
		return "azureFile " + v.AzureFile.ShareName
	case v.CSI != nil:
		return "csi " + v.CSI.Driver
	case v.HostPath != nil:
		return "hostPath " + v.HostPath.Path
	case v.NFS != nil:
		return "nfs " + v.NFS.Server + ":" + v.NFS.Path
	case v.ConfigMap != nil:
		return "configMap " + v.ConfigMap.Name
	case v.Secret != nil:
		return "secret " + v.Secret.SecretName
	case v.EmptyDir != nil:
		return "emptyDir"
	}
	return "volume"
}
