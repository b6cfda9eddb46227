package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

func TestPlanCommand(t *testing.T) {
	seed := "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"
	out, _, err := cli(t, "http://unused", "plan", "-f", seed, "--show-config")
	if err != nil {
		t.Fatalf("plan: %v\n%s", err, out)
	}
	for _, want := range []string{"qlora phi-3-mini-128k-instruct on Standard_NC6s_v3", "float16", "no bf16", "GiB per GPU of 16 GiB", "bnb_4bit_compute_dtype: float16"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q:\n%s", want, out)
		}
	}
	doc, _ := os.ReadFile(seed)
	big := filepath.Join(t.TempDir(), "big.yaml")
	_ = os.WriteFile(big, []byte(strings.NewReplacer("phi-3-mini-128k-instruct", "phi-4", "method: qlora", "method: lora").Replace(string(doc))), 0o644)
	out, _, err = cli(t, "http://unused", "plan", "-f", big)
	var ex exitError
	if !errors.As(err, &ex) || !strings.Contains(out, "InsufficientGPUMemory: phi-4 needs ~") {
		t.Errorf("a request that cannot fit: %v\n%s", err, out)
	}
	// -o json: each workspace's plan or refusal, for scripts; the exit code as without.
	out, _, err = cli(t, "http://unused", "plan", "-f", seed, "-f", big, "-o", "json")
	var results []planResult
	if !errors.As(err, &ex) || json.Unmarshal([]byte(out), &results) != nil || len(results) != 2 ||
		results[0].Plan == nil || results[0].Plan.InstanceType != "Standard_NC6s_v3" || results[1].Plan != nil ||
		!strings.Contains(results[1].Refused, "InsufficientGPUMemory") {
		t.Errorf("plan -o json: %v\n%s", err, out)
	}
	out, _, err = cli(t, "http://unused", "presets", "list", "-o", "yaml")
	if err != nil || !strings.Contains(out, "phi-3-mini-128k-instruct") {
		t.Errorf("presets list -o yaml: %v\n%s", err, out)
	}
	out, _, err = cli(t, "http://unused", "presets", "show", "mistral-7b-instruct")
	if err != nil || !strings.Contains(out, "mistralai/Mistral-7B-Instruct-v0.3") || !strings.Contains(out, "Standard_ND96isr_H200_v5") {
		t.Errorf("presets show: %v\n%s", err, out)
	}
	// -o json: the preset and, on every SKU, each plan or why there is none; the same answers as
	// the table's.
	out, _, err = cli(t, "http://unused", "presets", "show", "phi-3-mini-128k-instruct", "-o", "json")
	var shown presetShown
	if err != nil || json.Unmarshal([]byte(out), &shown) != nil || shown.Model == nil || shown.Model.Name != "phi-3-mini-128k-instruct" {
		t.Fatalf("presets show -o json: %v\n%s", err, out)
	}
	byName := map[string]skuFit{}
	for _, f := range shown.Fits {
		byName[f.SKU.Name] = f
		if (f.QLoRA.Plan == nil) == (f.QLoRA.Refused == "") || (f.Serve.Plan == nil) == (f.Serve.Refused == "") {
			t.Errorf("%s: want a plan or a refusal, not both or neither: %+v", f.SKU.Name, f)
		}
	}
	// The seed's SKU tunes phi-3 with qlora, as the seed's workspace does.
	if f := byName["Standard_NC6s_v3"]; f.QLoRA.Plan == nil || f.QLoRA.Plan.InstanceType != "Standard_NC6s_v3" {
		t.Errorf("Standard_NC6s_v3: %+v", f.QLoRA)
	}
	if len(shown.Fits) < 5 {
		t.Errorf("%d SKUs, want the catalog's", len(shown.Fits))
	}
	if _, _, err := cli(t, "http://unused", "presets", "show", "phi-3-mini-128k-instruct", "-o", "table"); err == nil {
		t.Error("-o table was accepted")
	}
}

// plan and presets show on a Hugging Face id and on a Kaito preset kept by name: read from the
// stand-in Hub, and with $HF_TOKEN for a gated one.
func TestPlanHuggingFaceModels(t *testing.T) {
	hub := testenv.NewHub(t)
	out, _, err := cli(t, "http://unused", "presets", "show", "Qwen/Qwen3-0.6B", "--hub-url", hub.URL)
	if err != nil || !strings.Contains(out, "Qwen/Qwen3-0.6B @ "+testenv.QwenSHA) || !strings.Contains(out, "28 layers") {
		t.Errorf("presets show an id: %v\n%s", err, out)
	}
	manifest := filepath.Join(t.TempDir(), "llama.yaml")
	doc, _ := os.ReadFile("../../examples/v1beta1/inference_llama_3.1_8b_instruct.yaml")
	_ = os.WriteFile(manifest, []byte(strings.Replace(string(doc), "llama-3.1-8b-instruct\n", "llama-3.3-70b-instruct\n", 1)), 0o644)
	t.Setenv("HF_TOKEN", "")
	out, _, err = cli(t, "http://unused", "plan", "-f", manifest, "--hub-url", hub.URL)
	if err == nil || !strings.Contains(out, "HTTP 401") {
		t.Errorf("a gated model without a token: %v\n%s", err, out)
	}
	t.Setenv("HF_TOKEN", hub.Token)
	out, _, err = cli(t, "http://unused", "plan", "-f", manifest, "--hub-url", hub.URL)
	if err != nil || !strings.Contains(out, "llama-3.3-70b-instruct") {
		t.Errorf("a gated model with $HF_TOKEN: %v\n%s", err, out)
	}
}
