// Package events is kaitoflow's contract: the CloudEvent types the functions exchange, their payloads,
// how event ids are derived, how a Kaito Workspace manifest is decoded and validated, and how events
// travel as NATS messages. It imports nothing else of the project.
package events

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	corev1 "k8s.io/api/core/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
)

// Event types. The NATS subject of an event is its type.
const (
	WorkspaceRequested = "kaitoflow.workspace.requested"
	NodeReady          = "kaitoflow.node.ready"
	TuningStarted      = "kaitoflow.tuning.started"
	TuningProgress     = "kaitoflow.tuning.progress"
	// TuningRetrying says a tuning attempt failed in a way the pipeline recovers from (out of GPU
	// memory, its node lost) and names the next attempt, its plan and whether it resumes.
	TuningRetrying  = "kaitoflow.tuning.retrying"
	TuningCompleted = "kaitoflow.tuning.completed"
	ImagePushed     = "kaitoflow.image.pushed"
	// AdapterStored replaces ImagePushed when tuning.output is a volume: the Job wrote the
	// adapter there and nothing is pushed.
	AdapterStored    = "kaitoflow.adapter.stored"
	InferenceReady   = "kaitoflow.inference.ready"
	WorkspaceFailed  = "kaitoflow.workspace.failed"
	WorkspaceDeleted = "kaitoflow.workspace.deleted"
	// CapacityReleased says a workspace's GPU capacity is given back: after tuning, after a
	// failure, and always after a deletion (so a finalizer can wait for it).
	CapacityReleased = "kaitoflow.capacity.released"
	// AdapterSelected asks serve to serve an earlier generation's adapter (a rollback), loaded
	// live into the running replicas; inference.ready follows once they serve it.
	AdapterSelected = "kaitoflow.adapter.selected"
	// AdapterPromoted and AdapterHeld say what the workspace's promotion policy decided for a
	// generation's pushed adapter: served in place of the one serving, or kept and not served.
	AdapterPromoted = "kaitoflow.adapter.promoted"
	AdapterHeld     = "kaitoflow.adapter.held"
	// AdapterCanary says a generation's adapter passed the offline gate of a canary policy and
	// now answers a share of the requests next to the one serving, until the window's end, when
	// adapter.promoted or adapter.held says what the live numbers decided.
	AdapterCanary = "kaitoflow.adapter.canary"
)

// Types lists every event type about a workspace, in pipeline order.
var Types = []string{
	WorkspaceRequested, NodeReady, TuningStarted, TuningProgress, TuningRetrying, TuningCompleted,
	ImagePushed, AdapterStored, InferenceReady, WorkspaceFailed, WorkspaceDeleted, CapacityReleased,
	AdapterSelected, AdapterPromoted, AdapterHeld, AdapterCanary,
}

// Signals are events about the world rather than one workspace's progress: they make functions
// look again. NodeChanged comes from a watch on Nodes (an in-process informer in the embedded
// mode, an ApiServerSource in Knative); Tick comes every TickInterval (a ticker, or a PingSource),
// for what can fail silently: an ARM operation, capacity that never becomes ready.
const (
	NodeChanged = "kaitoflow.node.changed"
	// JobChanged comes from a watch on tuning Jobs and their Pods (or the sim trainer's clock).
	JobChanged = "kaitoflow.job.changed"
	// ServiceChanged comes from a watch on inference Services (Knative Services in a cluster).
	ServiceChanged = "kaitoflow.service.changed"
	Tick           = "kaitoflow.tick"
)

// Signals lists the signal types.
var Signals = []string{NodeChanged, JobChanged, ServiceChanged, Tick}

// Subject prefixes on the bus.
const (
	SubjectPrefix = "kaitoflow."
	// DeadLetterPrefix + the original subject's tail (kaitoflow.dlq.node.ready) holds events that
	// could not be handled, with the reason in DeadLetter* headers.
	DeadLetterPrefix = "kaitoflow.dlq."
)

// Labels kaitoflow puts on what it creates for a workspace (nodes, Jobs, Pods, Services), so
// watches and selectors find a workspace's objects.
const (
	LabelWorkspace  = "kaitoflow.io/workspace"
	LabelNamespace  = "kaitoflow.io/namespace"
	LabelGeneration = "kaitoflow.io/generation"
	// AnnotationAcked marks an object whose outcome is stored, so periodic checks skip it.
	AnnotationAcked = "kaitoflow.io/acknowledged"
)

// Extension attribute names.
const (
	ExtGeneration  = "workspacegeneration"
	ExtTraceParent = "traceparent"
	ExtTraceState  = "tracestate"
)

// KnownType reports whether t is one of the contract's event or signal types.
func KnownType(t string) bool {
	return slices.Contains(Types, t) || slices.Contains(Signals, t)
}

// Ref identifies one generation of a workspace.
type Ref struct {
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	Generation int64  `json:"generation"`
}

// Subject is the CloudEvents subject of every event about the workspace.
func (r Ref) Subject() string { return r.Namespace + "/" + r.Name }

func (r Ref) String() string { return fmt.Sprintf("%s/%s@%d", r.Namespace, r.Name, r.Generation) }

// ID derives an event id from the workspace generation and the step that emits it. Redelivered
// inputs therefore produce the same output ids, which JetStream deduplicates (Nats-Msg-Id).
func (r Ref) ID(step string) string {
	sum := sha256.Sum256([]byte(r.Namespace + "\x00" + r.Name + "\x00" + strconv.FormatInt(r.Generation, 10) + "\x00" + step))
	return hex.EncodeToString(sum[:16])
}

// WorkspaceRef returns a workspace's identity as events carry it.
func WorkspaceRef(w *kaito.Workspace) Ref {
	ns := w.Namespace
	if ns == "" {
		ns = kaito.DefaultNamespace
	}
	return Ref{Namespace: ns, Name: w.Name, Generation: w.Generation}
}

// RefOf reads the workspace reference of an event from its subject and generation extension.
func RefOf(e cloudevents.Event) (Ref, error) {
	ns, name, ok := strings.Cut(e.Subject(), "/")
	if !ok || ns == "" || name == "" {
		return Ref{}, fmt.Errorf("subject %q: want namespace/name", e.Subject())
	}
	var gen int64
	if v, ok := e.Extensions()[ExtGeneration]; ok {
		n, err := toInt64(v)
		if err != nil {
			return Ref{}, fmt.Errorf("extension %s: %w", ExtGeneration, err)
		}
		gen = n
	}
	return Ref{Namespace: ns, Name: name, Generation: gen}, nil
}

func toInt64(v any) (int64, error) {
	switch t := v.(type) {
	case int32:
		return int64(t), nil
	case int64:
		return t, nil
	case int:
		return int64(t), nil
	case string:
		return strconv.ParseInt(t, 10, 64)
	default:
		return 0, fmt.Errorf("unexpected %T", v)
	}
}

// New builds the event of type typ about ref with payload data. The id is derived from ref and
// step (use the type unless a step emits the same type twice), so re-running a step re-emits the
// same event. When cause is given, its trace context is carried over.
func New(source, typ, step string, ref Ref, data any, cause *cloudevents.Event) (cloudevents.Event, error) {
	e := cloudevents.NewEvent()
	e.SetID(ref.ID(step))
	e.SetSource(source)
	e.SetType(typ)
	e.SetSubject(ref.Subject())
	e.SetTime(time.Now().UTC())
	// The generation goes out as a string: CloudEvents integers are 32-bit, generations are not.
	e.SetExtension(ExtGeneration, strconv.FormatInt(ref.Generation, 10))
	if cause != nil {
		for _, k := range []string{ExtTraceParent, ExtTraceState} {
			if v, ok := cause.Extensions()[k]; ok {
				e.SetExtension(k, v)
			}
		}
	}
	if err := e.SetData(cloudevents.ApplicationJSON, data); err != nil {
		return cloudevents.Event{}, fmt.Errorf("encode %s data: %w", typ, err)
	}
	return e, nil
}

// Data decodes an event's JSON payload into v. A payload that does not decode is a permanent error:
// redelivering it cannot help.
func Data(e cloudevents.Event, v any) error {
	if err := json.Unmarshal(e.Data(), v); err != nil {
		return Permanent(ReasonBadEvent, fmt.Errorf("decode %s data: %w", e.Type(), err))
	}
	return nil
}

// NodeReadyData is the payload of kaitoflow.node.ready: capacity exists for the workspace.
type NodeReadyData struct {
	Workspace    kaito.Workspace `json:"workspace"`
	Provider     string          `json:"provider"`
	InstanceType string          `json:"instanceType"`
	Nodes        []string        `json:"nodes"`
	// NodeInfo describes each node's GPUs.
	NodeInfo []Node `json:"nodeInfo,omitempty"`
	// Plan is what was checked before the capacity was bought; later steps run exactly it.
	Plan *Plan `json:"plan,omitempty"`
	// Attempt is the tuning attempt the capacity is for: 0 or 1 for the first, then the
	// attempt a kaitoflow.tuning.retrying named. Resume says that attempt continues from the
	// generation's newest checkpoint.
	Attempt int  `json:"attempt,omitempty"`
	Resume  bool `json:"resume,omitempty"`
}

// Plan is what the fit check decided for a workspace: the SKU, the precision and the run's shape,
// the memory it expects, and why.
type Plan struct {
	// Model is the Hugging Face id of the preset, at Revision.
	Model              string  `json:"model,omitempty"`
	Revision           string  `json:"revision,omitempty"`
	InstanceType       string  `json:"instanceType"`
	GPUs               int     `json:"gpus"`
	GPUMemoryGiB       float64 `json:"gpuMemoryGiB"`
	DType              string  `json:"dtype"`
	EstimatedGiBPerGPU float64 `json:"estimatedGiBPerGPU"`
	BatchSize          int     `json:"batchSize,omitempty"`
	// GradientAccumulation is the steps whose gradients make one update (0 means the training
	// config's own, or 1); a retry that halves BatchSize doubles it to keep the effective batch.
	GradientAccumulation  int  `json:"gradientAccumulation,omitempty"`
	SeqLen                int  `json:"seqLen,omitempty"`
	GradientCheckpointing bool `json:"gradientCheckpointing,omitempty"`
	LoRARank              int  `json:"loraRank,omitempty"`
	// TrainingProcesses is how many processes a tuning run trains in: one per GPU (data
	// parallel) when the whole model fits one GPU, else one over all of them (0 means one).
	TrainingProcesses int `json:"trainingProcesses,omitempty"`
	MaxModelLen       int `json:"maxModelLen,omitempty"`
	// DiskGiB is the OS disk a node needs for the model's image and weights; WeightsGiB the
	// weights themselves (what a model server downloads and loads before it answers).
	DiskGiB    int      `json:"diskGiB,omitempty"`
	WeightsGiB float64  `json:"weightsGiB,omitempty"`
	Reasons    []string `json:"reasons,omitempty"`
	// TrainingConfig is the rendered training_config.yaml the tuning Job mounts.
	TrainingConfig string `json:"trainingConfig,omitempty"`
	// RuntimeArgs are the inference server's arguments.
	RuntimeArgs []string `json:"runtimeArgs,omitempty"`
}

// Node is a GPU node a workspace runs on.
type Node struct {
	Name         string  `json:"name"`
	GPU          string  `json:"gpu,omitempty"`
	GPUs         int64   `json:"gpus"`
	GPUMemoryGiB float64 `json:"gpuMemoryGiB,omitempty"`
}

// NodeChangedData is the payload of kaitoflow.node.changed: a node labelled for a workspace
// changed. The event's subject is the workspace's.
type NodeChangedData struct {
	Node string `json:"node"`
}

// JobChangedData is the payload of kaitoflow.job.changed: a tuning Job (or its Pod) of the
// workspace named by the subject changed.
type JobChangedData struct {
	Job string `json:"job"`
}

// ServiceChangedData is the payload of kaitoflow.service.changed: the inference Service of the
// workspace named by the subject changed.
type ServiceChangedData struct {
	Service string `json:"service"`
}

// TickData is the payload of kaitoflow.tick.
type TickData struct {
	At time.Time `json:"at"`
}

// TuningStartedData is the payload of kaitoflow.tuning.started.
type TuningStartedData struct {
	Workspace kaito.Workspace `json:"workspace"`
	Nodes     []string        `json:"nodes"`
	Job       string          `json:"job"`
	Trainer   string          `json:"trainer"`
	Plan      *Plan           `json:"plan,omitempty"`
	// Node is where the trainer runs, Started when it started.
	Node    string    `json:"node,omitempty"`
	Started time.Time `json:"started,omitempty"`
	// Attempt is which attempt of the generation this is (0 or 1: the first).
	Attempt int `json:"attempt,omitempty"`
}

// TuningProgressData is the payload of kaitoflow.tuning.progress, sent at a bounded rate while
// the trainer runs.
type TuningProgressData struct {
	Job             string  `json:"job"`
	Step            int     `json:"step"`
	MaxSteps        int     `json:"maxSteps,omitempty"`
	Loss            float64 `json:"loss,omitempty"`
	TokensPerSecond float64 `json:"tokensPerSecond,omitempty"`
	ETASeconds      float64 `json:"etaSeconds,omitempty"`
	// Attempt is the attempt reporting (0 or 1: the first); CheckpointStep the step of the
	// newest checkpoint uploaded so far, which a next attempt would resume from.
	Attempt        int `json:"attempt,omitempty"`
	CheckpointStep int `json:"checkpointStep,omitempty"`
}

// Percent is how far the run is, or -1 when the total is unknown.
func (p TuningProgressData) Percent() float64 {
	if p.MaxSteps <= 0 {
		return -1
	}
	return 100 * float64(p.Step) / float64(p.MaxSteps)
}

// AdapterFile is one file of a trained adapter.
type AdapterFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Digest string `json:"digest"`
}

// TuningCompletedData is the payload of kaitoflow.tuning.completed: the adapter exists at Location
// (a directory, or the output repository when Layer is set: the Job already uploaded it there).
type TuningCompletedData struct {
	Workspace kaito.Workspace    `json:"workspace"`
	Nodes     []string           `json:"nodes"`
	Job       string             `json:"job"`
	Location  string             `json:"location"`
	Files     []AdapterFile      `json:"files"`
	Layer     *Blob              `json:"layer,omitempty"`
	Metrics   map[string]float64 `json:"metrics,omitempty"`
	// Datasets are the digests of the dataset files the run read, in input order.
	Datasets []string `json:"datasets,omitempty"`
	// Plan is the run's plan, passed on so serving knows the adapter's rank and the SKU.
	Plan *Plan `json:"plan,omitempty"`
	// Finished is when the run ended. The same whichever delivery of the outcome carries it, unlike
	// the event's own time, so an image built from it is the same image.
	Finished time.Time `json:"finished,omitzero"`
	// Attempt is the attempt that succeeded (0 or 1: the first); GPUSeconds what it held
	// (GPUs × its run time; earlier attempts' are in their kaitoflow.tuning.retrying).
	Attempt    int     `json:"attempt,omitempty"`
	GPUSeconds float64 `json:"gpuSeconds,omitempty"`
	// Compared is the adapter the run scored beside its own (MetricServingEvalLoss), nil when
	// none was serving.
	Compared *ComparedAdapter `json:"compared,omitempty"`
}

// TuningRetryingData is the payload of kaitoflow.tuning.retrying: attempt Attempt-1 failed for
// Reason, and attempt Attempt runs with Plan.
type TuningRetryingData struct {
	Workspace kaito.Workspace `json:"workspace"`
	// Attempt is the next attempt (2, 3, …); MaxAttempts bounds them.
	Attempt     int    `json:"attempt"`
	MaxAttempts int    `json:"maxAttempts"`
	Reason      string `json:"reason"`
	Message     string `json:"message"`
	// Failure is what the trainer reported of the failed attempt, when it could.
	Failure *TrainerFailure `json:"failure,omitempty"`
	// Plan is the next attempt's; Changes says how it differs from the failed one's.
	Plan    *Plan    `json:"plan"`
	Changes []string `json:"changes,omitempty"`
	// Resume says the next attempt continues from the generation's newest checkpoint
	// (CheckpointStep, as far as tune saw), with the same plan.
	Resume         bool `json:"resume,omitempty"`
	CheckpointStep int  `json:"checkpointStep,omitempty"`
	// GPUSeconds is what the failed attempt held (GPUs × its run time).
	GPUSeconds float64 `json:"gpuSeconds,omitempty"`
}

// TrainerFailure is the trainer's own account of a failed run (its termination message, as JSON):
// where it was and, for running out of GPU memory, what it held.
type TrainerFailure struct {
	Reason    string `json:"reason"`
	Message   string `json:"message"`
	Step      int    `json:"step,omitempty"`
	BatchSize int    `json:"batchSize,omitempty"`
	SeqLen    int    `json:"seqLen,omitempty"`
	// PeakGPUMemoryBytes is the most the process had allocated; GPUMemoryBytes the device's.
	PeakGPUMemoryBytes int64 `json:"peakGPUMemoryBytes,omitempty"`
	GPUMemoryBytes     int64 `json:"gpuMemoryBytes,omitempty"`
}

// Blob is a registry blob: the adapter's image layer.
type Blob struct {
	Digest    string `json:"digest"`
	DiffID    string `json:"diffID"`
	Size      int64  `json:"size"`
	MediaType string `json:"mediaType"`
}

// AdapterStoredData is the payload of kaitoflow.adapter.stored: the volume (as the workspace's
// tuning.output.volumeSource names it) whose root holds the adapter's files.
type AdapterStoredData struct {
	Workspace kaito.Workspace      `json:"workspace"`
	Nodes     []string             `json:"nodes"`
	Volume    *corev1.VolumeSource `json:"volumeSource"`
	Files     []AdapterFile        `json:"files"`
	Metrics   map[string]float64   `json:"metrics,omitempty"`
	Datasets  []string             `json:"datasets,omitempty"`
	// Plan is the tuning run's plan (see TuningCompletedData.Plan).
	Plan *Plan `json:"plan,omitempty"`
}

// ImagePushedData is the payload of kaitoflow.image.pushed: the adapter image, by digest.
type ImagePushedData struct {
	Workspace kaito.Workspace `json:"workspace"`
	Nodes     []string        `json:"nodes"`
	Image     string          `json:"image"`
	Reference string          `json:"reference"`
	Digest    string          `json:"digest"`
	Tag       string          `json:"tag,omitempty"`
	Size      int64           `json:"size"`
	MediaType string          `json:"mediaType"`
	// Provenance is the training record attached to the image (an OCI referrer), by digest.
	Provenance string `json:"provenance,omitempty"`
	// Plan is the tuning run's plan (see TuningCompletedData.Plan).
	Plan *Plan `json:"plan,omitempty"`
	// Metrics, Datasets and Compared are the run's (see TuningCompletedData): what the promotion
	// policy decides on.
	Metrics  map[string]float64 `json:"metrics,omitempty"`
	Datasets []string           `json:"datasets,omitempty"`
	Compared *ComparedAdapter   `json:"compared,omitempty"`
	// Checkpoints are the run's checkpoints, each published as a servable adapter image.
	Checkpoints []kaito.AdapterCheckpoint `json:"checkpoints,omitempty"`
}

// InferenceReadyData is the payload of kaitoflow.inference.ready: the chat endpoint answers.
type InferenceReadyData struct {
	Ref     Ref    `json:"ref"`
	Service string `json:"service"`
	URL     string `json:"url"`
	// Revision is the serving revision (a Knative Revision's name) that answers.
	Revision string   `json:"revision,omitempty"`
	Adapters []string `json:"adapters,omitempty"`
	Driver   string   `json:"driver"`
	// ServingGeneration is the generation whose adapter answers, when not Ref's (after a
	// rollback); Replicas the replicas running and serving it (0: scaled to zero).
	ServingGeneration int64 `json:"servingGeneration,omitempty"`
	// ServingCheckpoint is the step of that generation's checkpoint that answers, 0 for its
	// final adapter.
	ServingCheckpoint int `json:"servingCheckpoint,omitempty"`
	Replicas          int `json:"replicas,omitempty"`
	// AdapterSet is the version of the adapter set the replicas serve.
	AdapterSet int64 `json:"adapterSet,omitempty"`
}

// AdapterSelectedData is the payload of kaitoflow.adapter.selected: serve generation
// Generation's adapter (Reference) for the workspace at Ref, whose manifest is Workspace.
type AdapterSelectedData struct {
	Ref        Ref             `json:"ref"`
	Workspace  kaito.Workspace `json:"workspace"`
	Generation int64           `json:"generation"`
	Reference  string          `json:"reference"`
	// Checkpoint is the step of the generation's checkpoint to serve (Reference is its image), 0
	// for the generation's final adapter.
	Checkpoint int `json:"checkpoint,omitempty"`
	// Reason says who asked: "rollback", "promote".
	Reason string `json:"reason,omitempty"`
}

// WorkspaceFailedData is the payload of kaitoflow.workspace.failed.
type WorkspaceFailedData struct {
	Ref        Ref    `json:"ref"`
	Function   string `json:"function"`
	EventType  string `json:"eventType"`
	EventID    string `json:"eventID"`
	Reason     string `json:"reason"`
	Message    string `json:"message"`
	Deliveries uint64 `json:"deliveries,omitempty"`
}

// WorkspaceDeletedData is the payload of kaitoflow.workspace.deleted.
type WorkspaceDeletedData struct {
	Ref Ref `json:"ref"`
}

// CapacityReleasedData is the payload of kaitoflow.capacity.released.
type CapacityReleasedData struct {
	Ref Ref `json:"ref"`
	// Purpose is what the capacity was for (tuning, serving); empty when there was none to release.
	Purpose      string `json:"purpose,omitempty"`
	InstanceType string `json:"instanceType,omitempty"`
	// HeldSeconds is how long the capacity was held, from the request (for serving capacity
	// handed over by tuning, from the handover); GPUSeconds that times its nodes' GPUs.
	HeldSeconds float64 `json:"heldSeconds,omitempty"`
	GPUSeconds  float64 `json:"gpuSeconds,omitempty"`
	// Because is the event type that caused the release.
	Because string `json:"because"`
}

// Must returns e, or panics with err. For tests and benchmarks building known-good events.
func Must(e cloudevents.Event, err error) cloudevents.Event {
	if err != nil {
		panic(err)
	}
	return e
}
