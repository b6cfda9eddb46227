package presets

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
)

func catalog(t *testing.T) *Catalog {
	t.Helper()
	c, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCatalogHasWhatKaitoUsersAskFor(t *testing.T) {
	c := catalog(t)
	for _, name := range []string{
		"phi-3-mini-4k-instruct", "phi-3-mini-128k-instruct", "phi-3-medium-4k-instruct", "phi-3-medium-128k-instruct",
		"phi-3.5-mini-instruct", "phi-4", "phi-4-mini-instruct", "mistral-7b-instruct-v0.3", "mistral-7b-instruct",
		"qwen2.5-coder-7b-instruct", "qwen2.5-coder-32b-instruct", "llama-3.1-8b-instruct", "falcon-7b-instruct",
	} {
		m, err := c.Model(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if len(m.Revision) != 40 || !strings.Contains(m.HuggingFace, "/") || m.License == "" {
			t.Errorf("%s: incomplete entry %+v", name, m)
		}
	}
	for _, name := range []string{
		"Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3", "Standard_NC4as_T4_v3", "Standard_NC8as_T4_v3",
		"Standard_NC16as_T4_v3", "Standard_NC64as_T4_v3", "Standard_NV36ads_A10_v5", "Standard_NC24ads_A100_v4",
		"Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4", "Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4",
		"Standard_NC40ads_H100_v5", "Standard_NC80adis_H100_v5", "Standard_ND96isr_H100_v5", "Standard_ND96isr_H200_v5",
	} {
		if _, err := c.SKU(name); err != nil {
			t.Error(err)
		}
	}
	if _, err := c.Model("gpt-5"); !errors.Is(err, ErrUnknown) || !strings.Contains(err.Error(), "phi-4") {
		t.Errorf("unknown preset: %v", err)
	}
	if s, _ := c.SKU("NC6s_v3"); s == nil || s.BF16() {
		t.Errorf("V100 must not have bf16: %+v", s)
	}
	if s, _ := c.SKU("Standard_NC24ads_A100_v4"); !s.BF16() {
		t.Error("A100 has bf16")
	}
}

func TestParseRefusesMisspeltFields(t *testing.T) {
	const misspelt = "paramters" //nolint:misspell // the misspelling is the input under test
	_, err := Parse([]byte("models:\n- name: x\n  "+misspelt+": 1\n"), []byte("skus: []\n"))
	if err == nil || !strings.Contains(err.Error(), misspelt) {
		t.Fatalf("got %v", err)
	}
}

// Published figures the estimator must reproduce, each with its source and tolerance.
func TestEstimatorAgainstPublishedFigures(t *testing.T) {
	c := catalog(t)
	all7 := []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

	// LLaMA-65B's config (Touvron et al., 2023, Table 2): 80 layers, width 8192, 64 heads.
	llama65 := &Model{Name: "llama-65b", Parameters: 65_285_660_672, MaxContext: 2048,
		Architecture: Architecture{Family: "llama", Layers: 80, HiddenSize: 8192, IntermediateSize: 22016, Heads: 64, KVHeads: 64, Vocab: 32000}}
	llama2_7 := &Model{Name: "llama-2-7b", Parameters: 6_738_415_616, MaxContext: 4096,
		Architecture: Architecture{Family: "llama", Layers: 32, HiddenSize: 4096, IntermediateSize: 11008, Heads: 32, KVHeads: 32, Vocab: 32000}}

	t.Run("QLoRA paper: 65B fine-tunes on one 48 GB GPU", func(t *testing.T) {
		// QLoRA §1/§4: r=64 on all linear layers, batch 1, gradient checkpointing; the 4-bit weights
		// alone are ~32 GiB, so the estimate must sit between 40 GiB and a 48 GB card (47.99 GiB).
		e, err := EstimateTraining(TrainingInput{Model: llama65, Method: "qlora", LoRARank: 64, LoRATargets: all7, BatchSize: 1, SeqLen: 512, GradientCheckpointing: true})
		if err != nil {
			t.Fatal(err)
		}
		if e.PerGPUGiB < 40 || e.PerGPUGiB > 47.99 {
			t.Errorf("65B QLoRA estimate %.2f GiB, want 40..48 (%+v)", e.PerGPUGiB, e)
		}
		// and in 16-bit LoRA it is far beyond any single GPU (the paper's >780 GB is full fine-tuning).
		l, _ := EstimateTraining(TrainingInput{Model: llama65, Method: "lora", LoRARank: 64, LoRATargets: all7, BatchSize: 1, SeqLen: 512, GradientCheckpointing: true})
		if l.PerGPUGiB < 120 {
			t.Errorf("65B 16-bit LoRA estimate %.1f GiB, want > 120 (130 GB of weights)", l.PerGPUGiB)
		}
	})
	t.Run("7B QLoRA fits a 16 GB card at short context", func(t *testing.T) {
		m, _ := c.Model("mistral-7b-instruct-v0.3")
		e, err := EstimateTraining(TrainingInput{Model: m, Method: "qlora", LoRARank: 8, BatchSize: 1, SeqLen: 512, GradientCheckpointing: true, FlashAttention: true})
		if err != nil {
			t.Fatal(err)
		}
		if e.PerGPUGiB > 15.2 || e.PerGPUGiB < 4.5 {
			t.Errorf("7B QLoRA estimate %.2f GiB, want 4.5..15.2", e.PerGPUGiB)
		}
	})
	t.Run("PEFT trainable parameters", func(t *testing.T) {
		// PEFT's print_trainable_parameters for Llama-2-7B with r=8 on q_proj,v_proj reports
		// 4,194,304; for Phi-3-mini with r=16 on all linear layers 25,165,824.
		if n, _ := llama2_7.Architecture.LoRAParams([]string{"q_proj", "v_proj"}, 8); n != 4_194_304 {
			t.Errorf("llama-2-7b r=8 q,v: %d", n)
		}
		m, _ := c.Model("phi-3-mini-4k-instruct")
		if n, _ := m.Architecture.LoRAParams(m.LoRATargets, 16); n != 25_165_824 {
			t.Errorf("phi-3-mini r=16: %d", n)
		}
	})
	t.Run("Llama-3.1-8B: 16.06 GB of bf16 weights, 16 GiB of KV cache at 128k", func(t *testing.T) {
		m, _ := c.Model("llama-3.1-8b-instruct")
		e := EstimateInference(InferenceInput{Model: m, ContextTokens: 131072})
		if got, want := e.WeightsGiB*gib/1e9, 16.06; math.Abs(got-want)/want > 0.01 {
			t.Errorf("weights %.2f GB, want %.2f ±1%%", got, want)
		}
		if e.KVCacheGiB != 16 {
			t.Errorf("KV cache %.2f GiB, want 16", e.KVCacheGiB)
		}
	})
	t.Run("NF4 with double quantization is 4.127 bits per weight", func(t *testing.T) {
		if math.Abs(nf4DQBits-4.127) > 0.001 {
			t.Errorf("%.4f", nf4DQBits)
		}
	})
}

func TestEstimateGrowsWithTheKnobs(t *testing.T) {
	m, _ := catalog(t).Model("phi-3-mini-128k-instruct")
	base := TrainingInput{Model: m, Method: "qlora", LoRARank: 8, BatchSize: 1, SeqLen: 1024, GradientCheckpointing: true, FlashAttention: true}
	b0, _ := EstimateTraining(base)
	for name, mut := range map[string]func(*TrainingInput){
		"lora instead of qlora": func(in *TrainingInput) { in.Method = "lora" },
		"higher rank":           func(in *TrainingInput) { in.LoRARank = 64 },
		"bigger batch":          func(in *TrainingInput) { in.BatchSize = 4 },
		"longer sequence":       func(in *TrainingInput) { in.SeqLen = 4096 },
		"no checkpointing":      func(in *TrainingInput) { in.GradientCheckpointing = false },
		"no fused attention":    func(in *TrainingInput) { in.FlashAttention = false; in.GradientCheckpointing = false },
	} {
		in := base
		mut(&in)
		e, err := EstimateTraining(in)
		if err != nil {
			t.Fatal(err)
		}
		if e.PerGPUGiB <= b0.PerGPUGiB {
			t.Errorf("%s: %.2f GiB, not more than the base %.2f", name, e.PerGPUGiB, b0.PerGPUGiB)
		}
	}
}

func TestPlanEveryPresetOnASetOfSKUs(t *testing.T) {
	c := catalog(t)
	skus := []string{"Standard_NC6s_v3", "Standard_NC4as_T4_v3", "Standard_NV36ads_A10_v5", "Standard_NC24ads_A100_v4", "Standard_NC96ads_A100_v4", "Standard_ND96isr_H200_v5"}
	for _, m := range c.Models {
		if !m.Tuning {
			if _, err := c.PlanTuning(m.Name, "qlora", "", Overrides{}); !errors.Is(err, ErrNotTunable) {
				t.Errorf("%s is not tunable in Kaito; planned: %v", m.Name, err)
			}
		}
		for _, method := range []string{"lora", "qlora"} {
			if !m.Tuning {
				break
			}
			for _, sku := range skus {
				t.Run(fmt.Sprintf("%s/%s/%s", m.Name, method, sku), func(t *testing.T) {
					s, _ := c.SKU(sku)
					p, err := c.PlanTuning(m.Name, method, sku, Overrides{})
					if err != nil {
						var fe *FitError
						if !errors.As(err, &fe) {
							t.Fatalf("not a fit error: %v", err)
						}
						if fe.NeedsGiB <= s.MemoryGiB*headroom || fe.InstanceType != sku || !strings.Contains(fe.Error(), "GiB per GPU") {
							t.Errorf("fit error with wrong numbers: %v", fe)
						}
						return
					}
					if p.Estimate.PerGPUGiB > s.MemoryGiB*headroom {
						t.Errorf("plan claims a fit at %.1f GiB on %.0f GiB", p.Estimate.PerGPUGiB, s.MemoryGiB)
					}
					if want := map[bool]string{true: "bfloat16", false: "float16"}[s.BF16()]; p.DType != want {
						t.Errorf("dtype %s on %s", p.DType, s.GPU)
					}
					if p.SeqLen > m.MaxContext {
						t.Errorf("sequence %d beyond the model's %d", p.SeqLen, m.MaxContext)
					}
				})
			}
		}
		// Every preset can be served somewhere, and a tunable one tuned with qlora somewhere.
		if _, err := c.PlanInference(m.Name, "", 1, 8); err != nil {
			t.Errorf("%s: no SKU serves it: %v", m.Name, err)
		}
		if _, err := c.PlanTuning(m.Name, "qlora", "", Overrides{}); m.Tuning && err != nil {
			t.Errorf("%s: no SKU tunes it: %v", m.Name, err)
		}
	}
}

func TestPlanSeedOnV100(t *testing.T) {
	p, err := catalog(t).PlanTuning("phi-3-mini-128k-instruct", "qlora", "Standard_NC6s_v3", Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if p.DType != "float16" || p.BatchSize != 4 || p.SeqLen != 2048 || !p.GradientCheckpointing {
		t.Errorf("plan %+v", p)
	}
	if !slices.ContainsFunc(p.Reasons, func(r string) bool { return strings.Contains(r, "no bf16") }) {
		t.Errorf("reasons do not explain fp16: %v", p.Reasons)
	}
}

func TestPlanRefusesWithNumbers(t *testing.T) {
	_, err := catalog(t).PlanTuning("phi-4", "lora", "Standard_NC6s_v3", Overrides{})
	var fe *FitError
	if !errors.As(err, &fe) {
		t.Fatalf("got %v", err)
	}
	if msg := fe.Error(); !strings.Contains(msg, "phi-4 needs ~") || !strings.Contains(msg, "Standard_NC6s_v3 has 16 GiB") || fe.NeedsGiB < 27 {
		t.Errorf("message %q", msg)
	}
}

func TestPlanShrinksDefaultsButNeverUserValues(t *testing.T) {
	c := catalog(t)
	// phi-4 qlora on a 16 GB T4 does not fit at batch 4 × 2048; a smaller default does.
	p, err := c.PlanTuning("phi-4", "qlora", "Standard_NC4as_T4_v3", Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if p.BatchSize*p.SeqLen >= 4*2048 || !slices.ContainsFunc(p.Reasons, func(r string) bool { return strings.Contains(r, "shrunk") }) {
		t.Errorf("expected shrunk defaults: %+v", p)
	}
	big := 8
	if _, err := c.PlanTuning("phi-4", "qlora", "Standard_NC4as_T4_v3", Overrides{BatchSize: &big, SeqLen: &[]int{4096}[0]}); !IsFitError(err) {
		t.Errorf("user values must not be shrunk: %v", err)
	}
}

func TestPlanPicksCheapestThatFits(t *testing.T) {
	c := catalog(t)
	p, err := c.PlanTuning("phi-3-mini-128k-instruct", "qlora", "", Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if p.InstanceType != "Standard_NC4as_T4_v3" {
		t.Errorf("chose %s", p.InstanceType)
	}
	p, err = c.PlanTuning("qwen2.5-coder-32b-instruct", "lora", "", Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := c.SKU(p.InstanceType)
	for _, cheaper := range c.SKUsByPrice() {
		if cheaper.PricePerHour >= s.PricePerHour {
			break
		}
		if _, err := c.PlanTuning("qwen2.5-coder-32b-instruct", "lora", cheaper.Name, Overrides{}); err == nil {
			t.Errorf("%s fits and is cheaper than the chosen %s", cheaper.Name, s.Name)
		}
	}
}

func TestPlanInference(t *testing.T) {
	c := catalog(t)
	// Kaito serves phi-3-mini-128k on NC6s_v3, but not its whole context: the KV cache of 128k
	// tokens is ~48 GiB.
	p, err := c.PlanInference("phi-3-mini-128k-instruct", "Standard_NC6s_v3", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if p.DType != "float16" || p.MaxModelLen >= 131072 || p.MaxModelLen < 8192 {
		t.Errorf("V100 plan %+v", p)
	}
	if p.Estimate.PerGPUGiB > 16*gpuMemoryUtilization+0.01 {
		t.Errorf("does not fit: %+v", p.Estimate)
	}
	p, err = c.PlanInference("llama-3.1-8b-instruct", "Standard_NC24ads_A100_v4", 2, 12)
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(p.VLLMArgs(), " ")
	for _, want := range []string{"--dtype bfloat16", "--max-model-len 131072", "--enable-lora", "--max-lora-rank 16", "--max-loras 3", "--revision 0e9e39f"} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	// 8B in 16-bit is 15 GiB of weights: with vLLM's 90% of a 16 GB V100 there is no room left.
	if _, err := c.PlanInference("llama-3.1-8b-instruct", "Standard_NC6s_v3", 0, 0); !IsFitError(err) {
		t.Errorf("8B in 16-bit on one V100: %v", err)
	}
}

// On a node with several GPUs, a run trains data parallel (a process per GPU, each with the whole
// model) only when the whole model fits one GPU; otherwise one process spreads its layers over them,
// which is what the estimate then assumes.
func TestPlanTrainingProcesses(t *testing.T) {
	for _, tc := range []struct {
		preset, method, sku string
		want                int
	}{
		{"phi-3-mini-128k-instruct", "qlora", "Standard_NC6s_v3", 1},          // one GPU
		{"phi-3-mini-128k-instruct", "qlora", "Standard_NC96ads_A100_v4", 4},  // fits one A100 easily
		{"qwen2.5-coder-32b-instruct", "lora", "Standard_NC96ads_A100_v4", 1}, // 64 GB of 16-bit weights: not on one 80 GB GPU with the rest
		{"phi-4", "lora", "Standard_NC24s_v3", 1},                             // 28 GB of 16-bit weights on 16 GB V100s
	} {
		t.Run(tc.preset+"/"+tc.method+"/"+tc.sku, func(t *testing.T) {
			p, err := catalog(t).PlanTuning(tc.preset, tc.method, tc.sku, Overrides{})
			if err != nil {
				t.Fatal(err)
			}
			if p.Processes != tc.want {
				t.Errorf("%d processes, want %d (per GPU %.1f of %.0f GiB): %v", p.Processes, tc.want, p.Estimate.PerGPUGiB, p.GPUMemoryGiB, p.Reasons)
			}
			if p.Estimate.PerGPUGiB > p.GPUMemoryGiB*headroom {
				t.Errorf("the plan's estimate %.1f GiB does not fit its GPU", p.Estimate.PerGPUGiB)
			}
		})
	}
}
