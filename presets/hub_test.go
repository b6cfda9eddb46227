package presets_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/presets"
)

// hubPlanner plans with the built-in catalog and the stand-in Hub; the Secret hf-token in default
// holds the stand-in's token.
func hubPlanner(t *testing.T, h *testenv.Hub) *presets.Planner {
	t.Helper()
	cat, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	return &presets.Planner{Catalog: cat, Hub: &presets.Hub{BaseURL: h.URL},
		Secrets: func(_ context.Context, ns, name string) (map[string][]byte, error) {
			if ns == "default" && name == "hf-token" {
				return map[string][]byte{presets.ModelAccessSecretKey: []byte(h.Token + "\n")}, nil
			}
			return nil, presets.ErrSecretNotFound
		}}
}

func inferenceWorkspace(preset, secret string) *kaito.Workspace {
	ws := &kaito.Workspace{Inference: &kaito.InferenceSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: preset},
		PresetOptions: kaito.PresetOptions{ModelAccessSecret: secret}}}}
	ws.Name, ws.Namespace = "ws", "default"
	return ws
}

// A Hugging Face id as the preset (Kaito since v0.9): planned from the model's own config.json and
// file sizes, pinned to the commit the Hub resolved, served by that id and commit.
func TestPlanHuggingFaceModel(t *testing.T) {
	h := testenv.NewHub(t)
	p := hubPlanner(t, h)
	ws := inferenceWorkspace("Qwen/Qwen3-0.6B", "")
	ws.Resource.InstanceType = "Standard_NC6s_v3"
	plan, err := p.Plan(context.Background(), ws)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Model != "Qwen/Qwen3-0.6B" || plan.Revision != testenv.QwenSHA {
		t.Errorf("model %s@%s, want Qwen/Qwen3-0.6B@%s", plan.Model, plan.Revision, testenv.QwenSHA)
	}
	if got := plan.WeightsGiB; got < 1.39 || got > 1.41 {
		t.Errorf("weights %.2f GiB, want the safetensors' 1.40 GiB", got)
	}
	args := strings.Join(plan.RuntimeArgs, " ")
	if !strings.HasPrefix(args, "Qwen/Qwen3-0.6B --revision "+testenv.QwenSHA+" ") {
		t.Errorf("vLLM args %s", args)
	}
	// 28 layers × 8 KV heads × head_dim 128 (not 1024/16) × K and V × 2 bytes = 112 KiB a token:
	// 16 GiB less weights and overhead hold the model's whole 40960-token context.
	if plan.MaxModelLen != 40960 {
		t.Errorf("max model len %d (reasons %v)", plan.MaxModelLen, plan.Reasons)
	}

	// The same id at a revision: the Hub is asked for that revision.
	h.Calls()
	if _, err := p.Plan(context.Background(), inferenceWorkspace("Qwen/Qwen3-0.6B@v1.0", "")); err != nil {
		t.Fatal(err)
	}
	if calls := h.Calls(); len(calls) == 0 || calls[0] != "/api/models/Qwen/Qwen3-0.6B/revision/v1.0" {
		t.Errorf("hub calls %v", calls)
	}
}

// Kaito's presets kept by name resolve to Kaito's model and revision, read from the Hub; tuning is
// allowed exactly where Kaito allows it; gated ones need the token, which reaches the Hub.
func TestPlanKaitoHubPresets(t *testing.T) {
	h := testenv.NewHub(t)
	p := hubPlanner(t, h)
	ctx := context.Background()

	// mistral-7b (Kaito tunes it): a QLoRA plan from config.json.
	tuning := &kaito.Workspace{Tuning: &kaito.TuningSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "mistral-7b"}}, Method: "qlora",
		Input: &kaito.DataSource{URLs: []string{"https://example.com/d.parquet"}}, Output: &kaito.DataDestination{Image: "example.azurecr.io/a:1"}}}
	tuning.Name, tuning.Namespace = "t", "default"
	tuning.Resource.InstanceType = "Standard_NC24ads_A100_v4"
	plan, err := p.Plan(ctx, tuning)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Model != "mistralai/Mistral-7B-v0.3" || plan.Revision != testenv.MistralSHA || plan.TrainingConfig == "" {
		t.Errorf("plan %+v", plan)
	}
	if !strings.Contains(plan.TrainingConfig, "q_proj") {
		t.Errorf("LoRA targets of a llama-family model not in the training config:\n%s", plan.TrainingConfig)
	}
	// The weights vLLM loads (the transformers shards), not them and Mistral's consolidated copy.
	if plan.WeightsGiB < 13.4 || plan.WeightsGiB > 13.6 {
		t.Errorf("weights %.2f GiB, want the shards' 13.5", plan.WeightsGiB)
	}
	// Serving the tuned adapter is planned too: serve has no catalog entry for a Hub model.
	if len(plan.RuntimeArgs) == 0 || plan.RuntimeArgs[0] != "mistralai/Mistral-7B-v0.3" || !slices.Contains(plan.RuntimeArgs, "--enable-lora") {
		t.Errorf("serving args %v", plan.RuntimeArgs)
	}

	// Gemma 3: a multimodal config whose text_config needs transformers' defaults; its original/
	// weights are not counted.
	gemma, err := p.Plan(ctx, inferenceWorkspace("gemma-3-4b-instruct", ""))
	if err != nil {
		t.Fatal(err)
	}
	if gemma.Model != "google/gemma-3-4b-it" || gemma.WeightsGiB < 7.9 || gemma.WeightsGiB > 8.1 || gemma.MaxModelLen < 2048 {
		t.Errorf("gemma plan %s, %.2f GiB, max model len %d", gemma.Model, gemma.WeightsGiB, gemma.MaxModelLen)
	}

	for _, tc := range []struct {
		name      string
		ws        *kaito.Workspace
		permanent bool
		want      string
	}{
		{"gated without a secret", inferenceWorkspace("llama-3.3-70b-instruct", ""), true, "presetOptions.modelAccessSecret: Required"},
		{"a secret that does not exist", inferenceWorkspace("llama-3.3-70b-instruct", "nope"), true, `presetOptions.modelAccessSecret: Not found: "default/nope"`},
		{"a Kaito preset by its id: Kaito's gating", inferenceWorkspace("meta-llama/Llama-3.3-70B-Instruct", ""), true, "presetOptions.modelAccessSecret: Required"},
		{"an id the Hub refuses without a token", inferenceWorkspace("meta-llama/Llama-3.3-70B-Instruct@main", ""), true, "HTTP 401: Access to model meta-llama/Llama-3.3-70B-Instruct is restricted"},
		{"no such repository", inferenceWorkspace("nobody/nothing", ""), true, "HTTP 404"},
		{"an architecture the estimator cannot size", inferenceWorkspace("deepseek-v3-0324", ""), true, `DeepseekV3ForCausalLM (model_type "deepseek_v3")`},
		{"not a name and not an id", inferenceWorkspace("gpt-5", ""), true, "owner/name[@revision]"},
		{"a preset Kaito does not tune", func() *kaito.Workspace {
			ws := *tuning
			ws.Tuning = &kaito.TuningSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "mistral-7b-instruct"}}, Method: "lora", Input: tuning.Tuning.Input, Output: tuning.Tuning.Output}
			return &ws
		}(), true, "tunable presets: phi-3-mini-4k-instruct"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Plan(ctx, tc.ws)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error with %q, got %v", tc.want, err)
			}
			if _, got := events.AsPermanent(err); got != tc.permanent {
				t.Errorf("permanent %v, want %v: %v", got, tc.permanent, err)
			}
		})
	}

	// With the token: the gated model is planned, and the token went to the Hub.
	plan, err = p.Plan(ctx, inferenceWorkspace("llama-3.3-70b-instruct", "hf-token"))
	if err != nil {
		t.Fatal(err)
	}
	if plan.Model != "meta-llama/Llama-3.3-70B-Instruct" || plan.Revision != testenv.Llama70SHA || plan.GPUs < 2 {
		t.Errorf("plan %s@%s on %d GPUs", plan.Model, plan.Revision, plan.GPUs)
	}

	// The Hub down is not the workspace's fault: asked again later.
	h.SetDown(true)
	// A refusal that needs no Hub is made without it.
	hfTuning := *tuning
	hfTuning.Tuning = &kaito.TuningSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "Qwen/Qwen3-0.6B"}}, Method: "lora", Input: tuning.Tuning.Input, Output: tuning.Tuning.Output}
	if _, err := p.Plan(ctx, &hfTuning); err == nil || !strings.Contains(err.Error(), "cannot be tuned") {
		t.Errorf("tuning a Hugging Face id with the Hub down: %v", err)
	}
	_, err = p.Plan(ctx, inferenceWorkspace("Qwen/Qwen3-0.6B", ""))
	if _, permanent := events.AsPermanent(err); err == nil || permanent {
		t.Errorf("hub down: want a transient error, got %v", err)
	}
}

func TestParseHubID(t *testing.T) {
	for _, tc := range []struct {
		in        string
		repo, rev string
		ok        bool
	}{
		{"Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B", "", true},
		{"microsoft/Phi-4-mini-instruct@c0fb9e74abda11b496b7907a9c6c9009a7a0488f", "microsoft/Phi-4-mini-instruct", "c0fb9e74abda11b496b7907a9c6c9009a7a0488f", true},
		{"org/name@refs/pr/1", "org/name", "refs/pr/1", true},
		{"phi-3-mini-4k-instruct", "", "", false},
		{"a/b/c", "", "", false},
		{"../etc", "", "", false},
		{"org/name@../../x", "", "", false},
		{"org/na me", "", "", false},
	} {
		repo, rev, ok := presets.ParseHubID(tc.in)
		if repo != tc.repo || rev != tc.rev || ok != tc.ok {
			t.Errorf("%q: %q %q %v", tc.in, repo, rev, ok)
		}
	}
}

// Every name Kaito v0.12 accepts as a preset resolves: to a catalog model or to Kaito's Hugging
// Face model and revision.
func TestEveryKaitoPresetNameResolves(t *testing.T) {
	c, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	kaito := []string{"llama-3.1-8b-instruct", "llama-3.3-70b-instruct", "deepseek-r1-0528", "deepseek-v3-0324", "mistral-7b", "mistral-7b-instruct",
		"ministral-3-3b-instruct", "ministral-3-8b-instruct", "ministral-3-14b-instruct", "mistral-large-3-675b-instruct",
		"phi-3-mini-4k-instruct", "phi-3-mini-128k-instruct", "phi-3-medium-4k-instruct", "phi-3-medium-128k-instruct", "phi-3.5-mini-instruct",
		"phi-4-mini-instruct", "phi-4", "qwen2.5-coder-7b-instruct", "qwen2.5-coder-32b-instruct", "deepseek-r1-distill-qwen-14b",
		"deepseek-r1-distill-llama-8b", "gemma-3-4b-instruct", "gemma-3-27b-instruct", "gpt-oss-20b", "gpt-oss-120b"}
	tunable := []string{"mistral-7b", "phi-3-mini-4k-instruct", "phi-3-mini-128k-instruct", "phi-3-medium-4k-instruct", "phi-3-medium-128k-instruct",
		"phi-3.5-mini-instruct", "phi-4-mini-instruct", "phi-4", "qwen2.5-coder-7b-instruct", "qwen2.5-coder-32b-instruct"}
	for _, name := range kaito {
		m, ref, err := c.Resolve(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		tunes := (m != nil && m.Tuning) || (ref != nil && ref.Tuning)
		if tunes != slices.Contains(tunable, name) {
			t.Errorf("%s: tuning %v, Kaito's %v", name, tunes, slices.Contains(tunable, name))
		}
	}
	// A catalog model named by its Hugging Face id is the catalog's, not read again.
	if m, ref, err := c.Resolve("microsoft/Phi-3-mini-4k-instruct"); err != nil || m == nil || ref != nil {
		t.Errorf("catalog model by id: %v %v %v", m, ref, err)
	}
	if _, _, err := c.Resolve("not-a-preset"); !errors.Is(err, presets.ErrUnknown) {
		t.Errorf("unknown name: %v", err)
	}
}
