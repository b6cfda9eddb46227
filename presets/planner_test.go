package presets

import (
	"context"
	"fmt"
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

// A replica's concurrency is sized by its KV cache: how many 2,048-token sequences fit beside the
// weights (0.9 of the GPU memory, less 2 GiB of runtime), worked by hand below, capped at vLLM's
// default of 256, and passed to vLLM as --max-num-seqs.
func TestMaxNumSeqsFromTheKVCache(t *testing.T) {
	c, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		preset, sku string
		want        int
	}{
		// 0.9×80 GiB − 7.1 GiB of weights − 2 GiB = 62.9 GiB; 384 KiB a token (32 layers × K,V ×
		// 3072 × 2 bytes): 171,711 tokens, 83 sequences of 2,048.
		{"phi-3-mini-128k-instruct", "Standard_NC24ads_A100_v4", 83},
		// A 16 GiB V100: 5.3 GiB of cache, 14,425 tokens, 7 sequences.
		{"phi-3-mini-4k-instruct", "Standard_NC6s_v3", 7},
		// Grouped-query attention (8 KV heads): 128 KiB a token, 450,907 tokens, 220 sequences.
		{"llama-3.1-8b-instruct", "Standard_NC24ads_A100_v4", 220},
	} {
		p, err := c.PlanInference(tc.preset, tc.sku, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Join(p.VLLMArgs(), " ")
		if p.MaxNumSeqs != tc.want || !strings.Contains(args, fmt.Sprintf("--max-num-seqs %d", tc.want)) {
			t.Errorf("%s on %s: %d sequences (%s), want %d", tc.preset, tc.sku, p.MaxNumSeqs, args, tc.want)
		}
	}
	for _, tc := range []struct{ kv, maxLen, want int }{
		{0, 4096, 1},            // nothing fits: still one at a time
		{10 << 20, 131072, 256}, // more cache than vLLM's default schedules
		{4000, 1000, 4},         // a short context: sequences of the whole context
	} {
		if got := maxNumSeqs(tc.kv, tc.maxLen); got != tc.want {
			t.Errorf("maxNumSeqs(%d, %d) = %d, want %d", tc.kv, tc.maxLen, got, tc.want)
		}
	}
}
