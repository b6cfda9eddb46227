package presets

import (
	"context"
	"errors"
	"fmt"
	"math"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kaitoflow/kaitoflow/events"
)

// ConfigSource reads a ConfigMap's data: Kaito's tuning.config and inference.config each name one
// in the workspace's namespace. In a cluster it is the API server's; in the embedded mode, the
// ConfigMaps submitted with the workspace. A ConfigMap that does not exist is ErrConfigMapNotFound.
type ConfigSource func(ctx context.Context, namespace, name string) (map[string]string, error)

// TrainingConfigKey is the key of a tuning.config ConfigMap that holds the training settings.
const TrainingConfigKey = "training_config.yaml"

// ErrNoConfigSource is returned when a workspace names a ConfigMap and nothing can read one.
var ErrNoConfigSource = errors.New("no ConfigMap source configured")

// ErrConfigMapNotFound is what a ConfigSource returns for a ConfigMap that does not exist.
var ErrConfigMapNotFound = errors.New("ConfigMap not found")

// Planner is the fit check provision runs on workspace.requested: the whole plan, or a permanent
// error saying why the request cannot work, before any GPU is bought.
type Planner struct {
	Catalog *Catalog
	// Configs reads tuning.config ConfigMaps; nil means none can be read.
	Configs ConfigSource
}

// Plan implements provision's planner.
func (p *Planner) Plan(ctx context.Context, ws *events.Workspace) (*events.Plan, error) {
	switch {
	case ws.Tuning != nil:
		return p.planTuning(ctx, ws)
	case ws.Inference != nil && ws.Inference.Preset != nil:
		return p.planInference(ws)
	}
	// A custom inference template: the user sized it; only the SKU is known.
	return &events.Plan{InstanceType: ws.InstanceType(), Reasons: []string{"inference.template: the pod template is used as given; no fit check"}}, nil
}

// UserTrainingConfig returns the training configuration of the ConfigMap ws names in
// tuning.config, or an empty one.
func (p *Planner) UserTrainingConfig(ctx context.Context, ws *events.Workspace) (TrainingConfig, error) {
	t := ws.Tuning
	if t.Config == "" {
		return TrainingConfig{}, nil
	}
	if p.Configs == nil {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.config: ConfigMap %q cannot be read: %v", t.Config, ErrNoConfigSource)
	}
	ns := ws.Namespace
	if ns == "" {
		ns = events.DefaultNamespace
	}
	data, err := p.Configs(ctx, ns, t.Config)
	if errors.Is(err, ErrConfigMapNotFound) {
		return nil, events.Permanent(events.ReasonInvalidWorkspace, field.NotFound(field.NewPath("tuning", "config"), ns+"/"+t.Config))
	}
	if err != nil {
		return nil, fmt.Errorf("tuning.config: read ConfigMap %s/%s: %w", ns, t.Config, err)
	}
	doc, ok := data[TrainingConfigKey]
	if !ok {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.config: ConfigMap %s/%s has no %s key", ns, t.Config, TrainingConfigKey)
	}
	user, err := ParseTrainingConfig([]byte(doc))
	if err != nil {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.config %s: %v", t.Config, err)
	}
	return user, nil
}

func (p *Planner) planTuning(ctx context.Context, ws *events.Workspace) (*events.Plan, error) {
	t := ws.Tuning
	if _, err := p.Catalog.Model(t.Preset.Name); err != nil {
		return nil, events.Permanent(events.ReasonInvalidWorkspace, field.Invalid(field.NewPath("tuning", "preset", "name"), t.Preset.Name, err.Error()))
	}
	user, err := p.UserTrainingConfig(ctx, ws)
	if err != nil {
		return nil, err
	}
	cfg := Merge(DefaultTrainingConfig(t.Method), user)
	if errs := cfg.Validate(t.Method); len(errs) > 0 {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.config: %s", events.FieldErrors(errs))
	}
	// Only what the user set is fixed; kaitoflow's own defaults are the plan's to choose.
	tp, err := p.Catalog.PlanTuning(t.Preset.Name, t.Method, ws.InstanceType(), user.Overrides())
	if err != nil {
		return nil, classify(err, "resource.instanceType")
	}
	applied := cfg.Apply(tp)
	// Kaito's example configs say local_files_only: true because its preset images carry the
	// weights; kaitoflow's trainer image carries none, so that setting would only make the run
	// fail. It is kept where the weights can already be there: a weights cache the workspace
	// names (pre-seeded for a cluster that cannot reach the Hub).
	if truthy(applied["ModelConfig"]["local_files_only"]) && ws.Annotations[events.AnnotationWeightsCache] == "" {
		applied["ModelConfig"]["local_files_only"] = false
		tp.Reasons = append(tp.Reasons, "ModelConfig.local_files_only: true ignored: the trainer image carries no weights and the workspace names no weights cache ("+events.AnnotationWeightsCache+"), so the preset's pinned revision is downloaded")
	}
	rendered, err := applied.Render()
	if err != nil {
		return nil, err
	}
	return &events.Plan{
		Model: tp.HuggingFace, Revision: tp.Revision,
		InstanceType: tp.InstanceType, GPUs: tp.GPUs, GPUMemoryGiB: tp.GPUMemoryGiB, DType: tp.DType,
		EstimatedGiBPerGPU: tp.Estimate.PerGPUGiB, BatchSize: tp.BatchSize, SeqLen: tp.SeqLen,
		GradientCheckpointing: tp.GradientCheckpointing, LoRARank: tp.LoRARank, TrainingProcesses: tp.Processes, Reasons: tp.Reasons,
		TrainingConfig: string(rendered), DiskGiB: p.diskGiB(t.Preset.Name),
	}, nil
}

func (p *Planner) planInference(ws *events.Workspace) (*events.Plan, error) {
	in := ws.Inference
	if _, err := p.Catalog.Model(in.Preset.Name); err != nil {
		return nil, events.Permanent(events.ReasonInvalidWorkspace, field.Invalid(field.NewPath("inference", "preset", "name"), in.Preset.Name, err.Error()))
	}
	// Adapters of unknown rank: plan for Kaito's default rank, vLLM's smallest maximum.
	ip, err := p.Catalog.PlanInference(in.Preset.Name, ws.InstanceType(), len(in.Adapters), 8)
	if err != nil {
		return nil, classify(err, "resource.instanceType")
	}
	return &events.Plan{
		Model: ip.HuggingFace, Revision: ip.Revision,
		InstanceType: ip.InstanceType, GPUs: ip.GPUs, DType: ip.DType, EstimatedGiBPerGPU: ip.Estimate.PerGPUGiB,
		MaxModelLen: ip.MaxModelLen, Reasons: ip.Reasons, RuntimeArgs: ip.VLLMArgs(), DiskGiB: p.diskGiB(in.Preset.Name),
	}, nil
}

// classify makes the planner's refusals permanent: a request that does not fit will not fit on a
// retry, and an unknown SKU stays unknown.
func classify(err error, path string) error {
	var fe *FitError
	switch {
	case errors.As(err, &fe):
		return events.Permanent(events.ReasonInsufficientGPUMemory, err)
	case errors.Is(err, ErrUnknown):
		return events.Permanentf(events.ReasonInvalidWorkspace, "%s: %v", path, err)
	}
	return events.Permanent(events.ReasonInvalidWorkspace, err)
}

// diskGiB sizes a node's OS disk: the 16-bit weights twice (the download and the loaded copy the
// image cache keeps) plus 64 GiB for images and logs, in steps of 64 GiB, at least 128.
func (p *Planner) diskGiB(preset string) int {
	m, err := p.Catalog.Model(preset)
	if err != nil {
		return 128
	}
	need := 2*float64(m.Parameters)*bytes16/gib + 64
	return max(128, int(math.Ceil(need/64))*64)
}
