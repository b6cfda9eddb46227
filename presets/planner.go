package presets

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
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
	// Hub reads models that are not in the catalog (Kaito presets kept by name, Hugging Face
	// repository ids); nil refuses them.
	Hub ModelHub
	// Secrets reads presetOptions.modelAccessSecret for the Hub; nil reads none (public models).
	Secrets SecretSource
	// Quota reads the region's vCPU quota (the aks provider's); nil checks none. With it a SKU
	// without quota is passed over for the next that fits, or refused with the numbers.
	Quota Quota
}

// ModelHub reads a model's metadata from the Hugging Face Hub (*Hub).
type ModelHub interface {
	Model(ctx context.Context, repo, revision, token string) (*HubModel, error)
}

// SecretSource reads a Secret's data; a missing Secret is an error wrapping ErrSecretNotFound.
type SecretSource func(ctx context.Context, namespace, name string) (map[string][]byte, error)

// ErrSecretNotFound is what a SecretSource returns for a Secret that does not exist.
var ErrSecretNotFound = errors.New("Secret not found")

// model resolves the preset a workspace names at path: from the catalog, or read from the Hub
// with the workspace's token. Refusals are permanent and name the field; the Hub being down is not.
// Everything that can be refused without the Hub is refused first: a tuning of a preset Kaito
// does not tune, a gated model without its Secret.
func (p *Planner) model(ctx context.Context, ws *kaito.Workspace, path *field.Path, preset *kaito.PresetSpec, tuning bool) (*Model, error) {
	m, ref, err := p.Catalog.Resolve(preset.Name)
	if err != nil {
		return nil, events.Permanent(events.ReasonInvalidWorkspace, field.Invalid(path.Child("name"), preset.Name, err.Error()))
	}
	if tunes := (m != nil && m.Tuning) || (ref != nil && ref.Tuning); tuning && !tunes {
		return nil, events.Permanent(events.ReasonInvalidWorkspace, field.Invalid(path.Child("name"), preset.Name,
			fmt.Sprintf("cannot be tuned (as in Kaito); tunable presets: %s", strings.Join(p.Catalog.TunableNames(), ", "))))
	}
	gated := (m != nil && m.Gated) || (ref != nil && ref.Gated)
	if gated && preset.ModelAccessSecret == "" {
		return nil, events.Permanent(events.ReasonInvalidWorkspace, field.Required(path.Child("presetOptions", "modelAccessSecret"),
			fmt.Sprintf("%s is gated on Hugging Face: name a Secret whose %s key holds a token with access to it", preset.Name, ModelAccessSecretKey)))
	}
	if m != nil {
		// The trainer and vLLM read the gated model's Secret in their pods: check now that it is
		// there, where Secrets can be read, rather than after the GPU is bought.
		if gated && p.Secrets != nil {
			if _, err := p.token(ctx, ws, path, preset); err != nil {
				return nil, err
			}
		}
		return m, nil
	}
	if p.Hub == nil {
		return nil, events.Permanent(events.ReasonInvalidWorkspace, field.Invalid(path.Child("name"), preset.Name,
			"a model read from the Hugging Face Hub, which this planner cannot reach"))
	}
	token, err := p.token(ctx, ws, path, preset)
	if err != nil {
		return nil, err
	}
	hm, err := p.Hub.Model(ctx, ref.Repo, ref.Revision, token)
	if err != nil {
		if IsHubRefusal(err) {
			why := err.Error()
			var he *HubError
			if errors.As(err, &he) && (he.Status == 401 || he.Status == 403) {
				// Without a token the Hub also answers 401 for a repository that does not exist:
				// its own words say which.
				why = fmt.Sprintf("the Hugging Face Hub refused %s (HTTP %d: %s): a gated or private model needs presetOptions.modelAccessSecret "+
					"with a token that may read it, and a misspelt id does not exist", ref.Repo, he.Status, he.Body)
			}
			return nil, events.Permanent(events.ReasonInvalidWorkspace, field.Invalid(path.Child("name"), preset.Name, why))
		}
		return nil, fmt.Errorf("%s: read %s from the Hugging Face Hub: %w", path.Child("name"), ref.Repo, err)
	}
	m, err = ModelFromHub(ref, hm)
	if err != nil {
		return nil, events.Permanent(events.ReasonInvalidWorkspace, field.Invalid(path.Child("name"), preset.Name, err.Error()))
	}
	return m, nil
}

// token is the HF_TOKEN of the preset's modelAccessSecret, or "" when it names none. The value
// only ever goes into the Hub request's Authorization header.
func (p *Planner) token(ctx context.Context, ws *kaito.Workspace, path *field.Path, preset *kaito.PresetSpec) (string, error) {
	if preset.ModelAccessSecret == "" {
		return "", nil
	}
	f := path.Child("presetOptions", "modelAccessSecret")
	if p.Secrets == nil {
		return "", events.Permanent(events.ReasonInvalidWorkspace, field.Invalid(f, preset.ModelAccessSecret, "Secrets cannot be read here (no cluster)"))
	}
	ns := events.WorkspaceRef(ws).Namespace
	data, err := p.Secrets(ctx, ns, preset.ModelAccessSecret)
	if errors.Is(err, ErrSecretNotFound) {
		return "", events.Permanent(events.ReasonInvalidWorkspace, field.NotFound(f, ns+"/"+preset.ModelAccessSecret))
	}
	if err != nil {
		return "", fmt.Errorf("%s: read Secret %s/%s: %w", f, ns, preset.ModelAccessSecret, err)
	}
	t, ok := data[ModelAccessSecretKey]
	if !ok {
		return "", events.Permanent(events.ReasonInvalidWorkspace, field.Invalid(f, preset.ModelAccessSecret, "the Secret has no "+ModelAccessSecretKey+" key"))
	}
	return strings.TrimSpace(string(t)), nil
}

// Plan implements provision's planner.
func (p *Planner) Plan(ctx context.Context, ws *kaito.Workspace) (*events.Plan, error) {
	switch {
	case ws.Tuning != nil:
		return p.planTuning(ctx, ws)
	case ws.Inference != nil && ws.Inference.Preset != nil:
		return p.planInference(ctx, ws)
	}
	// A custom inference template: the user sized it; only the SKU is known.
	return &events.Plan{InstanceType: ws.InstanceType(), Reasons: []string{"inference.template: the pod template is used as given; no fit check"}}, nil
}

// UserTrainingConfig returns the training configuration of the ConfigMap ws names in
// tuning.config, or an empty one.
func (p *Planner) UserTrainingConfig(ctx context.Context, ws *kaito.Workspace) (TrainingConfig, error) {
	name := ws.Tuning.Config
	if name == "" {
		return TrainingConfig{}, nil
	}
	doc, err := configDocument(ctx, p.Configs, ws, "tuning.config", name, TrainingConfigKey)
	if err != nil {
		return nil, err
	}
	user, err := ParseTrainingConfig([]byte(doc))
	if err != nil {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.config %s: %v", name, err)
	}
	return user, nil
}

// ReadInferenceConfig reads and parses the ConfigMap inference.config names, with configs;
// refusals are permanent and name the field.
func ReadInferenceConfig(ctx context.Context, configs ConfigSource, ws *kaito.Workspace) (*InferenceConfig, error) {
	name := ws.Inference.Config
	doc, err := configDocument(ctx, configs, ws, "inference.config", name, InferenceConfigKey)
	if err != nil {
		return nil, err
	}
	c, err := ParseInferenceConfig(doc)
	if err != nil {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "inference.config %s: %v", name, err)
	}
	return c, nil
}

// configDocument is key of the ConfigMap the workspace's field (tuning.config, inference.config)
// names, in its namespace. A ConfigMap or key that is not there, or nothing to read it with, is a
// permanent refusal naming the field; the API server failing is not.
func configDocument(ctx context.Context, configs ConfigSource, ws *kaito.Workspace, fieldName, name, key string) (string, error) {
	if configs == nil {
		return "", events.Permanent(events.ReasonInvalidWorkspace, &PathError{Path: fieldName, Err: fmt.Errorf("ConfigMap %q cannot be read: %w",
			name, ErrNoConfigSource)})
	}
	ns := events.WorkspaceRef(ws).Namespace
	data, err := configs(ctx, ns, name)
	if errors.Is(err, ErrConfigMapNotFound) {
		section, f, _ := strings.Cut(fieldName, ".")
		return "", events.Permanent(events.ReasonInvalidWorkspace, field.NotFound(field.NewPath(section, f), ns+"/"+name))
	}
	if err != nil {
		return "", fmt.Errorf("%s: read ConfigMap %s/%s: %w", fieldName, ns, name, err)
	}
	doc, ok := data[key]
	if !ok {
		return "", events.Permanent(events.ReasonInvalidWorkspace, &PathError{Path: fieldName, Err: fmt.Errorf("ConfigMap %s/%s has no %s key", ns, name, key)})
	}
	return doc, nil
}

func (p *Planner) planTuning(ctx context.Context, ws *kaito.Workspace) (*events.Plan, error) {
	t := ws.Tuning
	m, err := p.model(ctx, ws, field.NewPath("tuning", "preset"), t.Preset, true)
	if err != nil {
		return nil, err
	}
	user, err := p.UserTrainingConfig(ctx, ws)
	if err != nil {
		return nil, err
	}
	// Only what the user set is fixed; kaitoflow's own defaults are the plan's to choose.
	return p.withQuota(ctx, ws, ws.InstanceType(), func(cat *Catalog) (*events.Plan, error) {
		return p.tuningPlan(ws, m, user, cat, ws.InstanceType(), user.Overrides(), 0)
	})
}

// tuningPlan plans a run of m on instanceType (the cheapest SKU of cat where it fits when empty)
// with the values in o fixed, and renders the training config: the user's over kaitoflow's
// defaults, with the plan's choices, and gradientAccumulation when it is not 0.
func (p *Planner) tuningPlan(ws *kaito.Workspace, m *Model, user TrainingConfig, cat *Catalog, instanceType string, o Overrides,
	gradientAccumulation int) (*events.Plan, error) {
	t := ws.Tuning
	cfg := Merge(DefaultTrainingConfig(t.Method), user)
	if errs := cfg.Validate(t.Method); len(errs) > 0 {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.config: %s", kaito.FieldErrors(errs))
	}
	tp, err := cat.PlanTuningFor(m, t.Method, instanceType, o)
	if err != nil {
		return nil, classify(err, "resource.instanceType")
	}
	applied := cfg.Apply(tp)
	if gradientAccumulation > 0 {
		applied["TrainingArguments"]["gradient_accumulation_steps"] = gradientAccumulation
	}
	// Kaito's example configs say local_files_only: true because its preset images carry the
	// weights; kaitoflow's trainer image carries none, so that setting would only make the run
	// fail. It is kept where the weights can already be there: a weights cache the workspace
	// names (pre-seeded for a cluster that cannot reach the Hub).
	if truthy(applied["ModelConfig"]["local_files_only"]) && ws.Annotations[kaito.AnnotationWeightsCache] == "" {
		applied["ModelConfig"]["local_files_only"] = false
		tp.Reasons = append(tp.Reasons, "ModelConfig.local_files_only: true ignored: the trainer image carries no weights and the workspace names "+
			"no weights cache ("+kaito.AnnotationWeightsCache+"), so the preset's pinned revision is downloaded")
	}
	rendered, err := applied.Render()
	if err != nil {
		return nil, err
	}
	// How the tuned adapter will be served on the same node, planned now: a model read from the
	// Hub is not in serve's catalog.
	var serving []string
	if ip, err := p.Catalog.PlanInferenceFor(m, tp.InstanceType, 1, max(8, tp.LoRARank)); err == nil {
		serving = ip.VLLMArgs()
	} else {
		tp.Reasons = append(tp.Reasons, fmt.Sprintf("serving the tuned adapter on %s will not fit: %v", tp.InstanceType, err))
	}
	ga, _ := intValue(applied["TrainingArguments"]["gradient_accumulation_steps"])
	return &events.Plan{
		Model: tp.HuggingFace, Revision: tp.Revision, RuntimeArgs: serving,
		InstanceType: tp.InstanceType, GPUs: tp.GPUs, GPUMemoryGiB: tp.GPUMemoryGiB, DType: tp.DType,
		EstimatedGiBPerGPU: tp.Estimate.PerGPUGiB, BatchSize: tp.BatchSize, GradientAccumulation: ga, SeqLen: tp.SeqLen,
		GradientCheckpointing: tp.GradientCheckpointing, LoRARank: tp.LoRARank, TrainingProcesses: tp.Processes, Reasons: tp.Reasons,
		TrainingConfig: string(rendered), DiskGiB: diskGiB(m), WeightsGiB: weightsGiB(m),
	}, nil
}

func (p *Planner) planInference(ctx context.Context, ws *kaito.Workspace) (*events.Plan, error) {
	in := ws.Inference
	m, err := p.model(ctx, ws, field.NewPath("inference", "preset"), in.Preset, false)
	if err != nil {
		return nil, err
	}
	// Adapters of unknown rank: plan for Kaito's default rank, vLLM's smallest maximum.
	plan, err := p.withQuota(ctx, ws, ws.InstanceType(), func(cat *Catalog) (*events.Plan, error) {
		ip, err := cat.PlanInferenceFor(m, ws.InstanceType(), len(in.Adapters), 8)
		if err != nil {
			return nil, classify(err, "resource.instanceType")
		}
		return &events.Plan{
			Model: ip.HuggingFace, Revision: ip.Revision,
			InstanceType: ip.InstanceType, GPUs: ip.GPUs, DType: ip.DType, EstimatedGiBPerGPU: ip.Estimate.PerGPUGiB,
			MaxModelLen: ip.MaxModelLen, Reasons: ip.Reasons, RuntimeArgs: ip.VLLMArgs(), DiskGiB: diskGiB(m), WeightsGiB: weightsGiB(m),
		}, nil
	})
	if err != nil {
		return nil, err
	}
	// inference.config is checked now, before any GPU is bought; serve applies it to vLLM's
	// arguments.
	if in.Config != "" {
		c, err := ReadInferenceConfig(ctx, p.Configs, ws)
		if err != nil {
			return nil, err
		}
		if len(c.Ignored) > 0 {
			plan.Reasons = append(plan.Reasons, fmt.Sprintf("inference.config: %s ignored: Kaito's own runtime settings, which vLLM has no flag for",
				strings.Join(c.Ignored, ", ")))
		}
	}
	return plan, nil
}

// PathError is a refusal of the workspace field at Path ("resource.instanceType"): the message
// reads "Path: Err", and an entrance that answers with field errors takes the field from Path.
type PathError struct {
	Path string
	Err  error
}

func (e *PathError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *PathError) Unwrap() error { return e.Err }

// classify makes the planner's refusals permanent: a request that does not fit will not fit on a
// retry, and an unknown SKU stays unknown.
func classify(err error, path string) error {
	var fe *FitError
	switch {
	case errors.As(err, &fe):
		return events.Permanent(events.ReasonInsufficientGPUMemory, err)
	case errors.Is(err, ErrUnknown):
		return events.Permanent(events.ReasonInvalidWorkspace, &PathError{Path: path, Err: err})
	}
	return events.Permanent(events.ReasonInvalidWorkspace, err)
}

// diskGiB sizes a node's OS disk: the 16-bit weights twice (the download and the loaded copy the
// image cache keeps) plus 64 GiB for images and logs, in steps of 64 GiB, at least 128.
func diskGiB(m *Model) int {
	need := 2*weightsGiB(m) + 64
	return max(128, int(math.Ceil(need/64))*64)
}

// weightsGiB is the model's weights in 16-bit (or as their files are, for a model read from the Hub).
func weightsGiB(m *Model) float64 { return float64(m.Parameters) * bytes16 / gib }
