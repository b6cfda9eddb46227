package presets

import (
	"context"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
)

// Kaito's example ConfigMap says local_files_only: true (its preset images carry the weights).
// Applied as it is, the weights are still downloaded, and the plan says why; a workspace that names
// a weights cache (which may be pre-seeded) keeps the setting.
func TestKaitoLocalFilesOnlyWithoutWeightsInTheImage(t *testing.T) {
	doc, err := os.ReadFile("../examples/fine-tuning/kaito_workspace_tuning_phi_3_config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := kaito.SplitYAML(doc)
	if err != nil || len(docs) != 2 {
		t.Fatalf("%d documents, %v", len(docs), err)
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(docs[0], &cm); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cm.Data[TrainingConfigKey], "local_files_only: true") {
		t.Fatal("the example no longer has Kaito's local_files_only: true")
	}
	for _, tc := range []struct {
		name      string
		cache     string
		wantLocal bool
	}{
		{"no weights cache", "", false},
		{"a weights cache", "model-weights", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws, err := kaito.DecodeWorkspace(docs[1])
			if err != nil {
				t.Fatal(err)
			}
			ws.Namespace = "default"
			if tc.cache != "" {
				ws.Annotations = map[string]string{kaito.AnnotationWeightsCache: tc.cache}
			}
			p := &Planner{Catalog: catalog(t), Configs: func(context.Context, string, string) (map[string]string, error) { return cm.Data, nil }}
			plan, err := p.Plan(context.Background(), ws)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := ParseTrainingConfig([]byte(plan.TrainingConfig))
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg["ModelConfig"]["local_files_only"]; got != tc.wantLocal {
				t.Errorf("local_files_only %v, want %v", got, tc.wantLocal)
			}
			said := strings.Contains(strings.Join(plan.Reasons, "\n"), "local_files_only: true ignored")
			if said == tc.wantLocal {
				t.Errorf("reasons %q", plan.Reasons)
			}
		})
	}
}

// inference.config is read when the plan is made: Kaito's template passes, naming the settings
// only Kaito's runtime reads; a broken one fails before any GPU is bought.
func TestPlanChecksInferenceConfig(t *testing.T) {
	configs := map[string]string{
		"kaito-template": "kv_cache_cpu_memory_utilization: 0.5\nvllm:\n  cpu-offload-gb: 0\n",
		"broken":         "vllm:\n  lora-modules: [a]\n",
	}
	p := &Planner{Catalog: catalog(t), Configs: func(_ context.Context, _, name string) (map[string]string, error) {
		if doc, ok := configs[name]; ok {
			return map[string]string{InferenceConfigKey: doc}, nil
		}
		return nil, ErrConfigMapNotFound
	}}
	ws := func(config string) *kaito.Workspace {
		w := &kaito.Workspace{Inference: &kaito.InferenceSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-4-mini-instruct"}}, Config: config}}
		w.Name, w.Namespace = "ws", "default"
		return w
	}
	plan, err := p.Plan(context.Background(), ws("kaito-template"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(plan.Reasons, "\n"), "inference.config: kv_cache_cpu_memory_utilization ignored") {
		t.Errorf("reasons %q", plan.Reasons)
	}
	for name, want := range map[string]string{"broken": "vllm.lora-modules", "missing": `inference.config: Not found: "default/missing"`} {
		_, err := p.Plan(context.Background(), ws(name))
		if _, permanent := events.AsPermanent(err); !permanent || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want a permanent error with %q, got %v", name, want, err)
		}
	}
}
