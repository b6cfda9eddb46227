package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	out, _, err = cli(t, "http://unused", "presets", "show", "mistral-7b-instruct")
	if err != nil || !strings.Contains(out, "mistralai/Mistral-7B-Instruct-v0.3") || !strings.Contains(out, "Standard_ND96isr_H200_v5") {
		t.Errorf("presets show: %v\n%s", err, out)
	}
}
