package presets

import (
	"context"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
)

// Each step of a re-plan after running out of GPU memory, and each refusal, from the plan the
// failed attempt ran with.
func TestReplanAfterOutOfMemory(t *testing.T) {
	cat, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	const ga8 = "training_config:\n  TrainingArguments:\n    gradient_accumulation_steps: 8\n"
	const batch4 = "training_config:\n  TrainingArguments:\n    per_device_train_batch_size: 4\n"
	for _, tc := range []struct {
		name         string
		instanceType string
		config       string // the user's training_config.yaml, if any
		prev         func(p *events.Plan)
		failure      *events.TrainerFailure
		// want: the next plan's SKU, batch, accumulation and sequence; or, refused, words of the
		// advice.
		sku                 string
		batch, ga, seq      int
		changes, refusedFor []string
	}{
		{name: "half the batch, twice the accumulation", instanceType: "Standard_NC24ads_A100_v4",
			sku: "Standard_NC24ads_A100_v4", batch: 2, ga: 2, seq: 2048, changes: []string{"per_device_train_batch_size 4 → 2, gradient_accumulation_steps 1 → 2"}},
		{name: "the user's accumulation stays; the effective batch halves", instanceType: "Standard_NC24ads_A100_v4", config: ga8,
			sku: "Standard_NC24ads_A100_v4", batch: 2, ga: 8, seq: 2048, changes: []string{"gradient_accumulation_steps is set in tuning.config"}},
		{name: "batch 1: half the sequence", instanceType: "Standard_NC24ads_A100_v4", prev: func(p *events.Plan) { p.BatchSize = 1 },
			sku: "Standard_NC24ads_A100_v4", batch: 1, seq: 1024, changes: []string{"max_seq_length 2048 → 1024"}},
		{name: "the estimate off, seen and said", instanceType: "Standard_NC24ads_A100_v4",
			failure: &events.TrainerFailure{Message: "out of GPU memory", PeakGPUMemoryBytes: 79 << 30, GPUMemoryBytes: 80 << 30},
			sku:     "Standard_NC24ads_A100_v4", batch: 2, ga: 2, seq: 2048, changes: []string{"the run needed more than 80.0 GiB"}},
		{name: "nothing left to shrink, no SKU named: larger GPUs", prev: func(p *events.Plan) { p.BatchSize, p.SeqLen = 1, 256 },
			batch: 1, seq: 256, changes: []string{"instance type Standard_NC4as_T4_v3 → ", "new capacity"}},
		{name: "nothing left to shrink on the user's SKU", instanceType: "Standard_NC24ads_A100_v4", prev: func(p *events.Plan) { p.BatchSize, p.SeqLen = 1, 256 },
			refusedFor: []string{"resource.instanceType Standard_NC24ads_A100_v4 is the user's", "lower max_seq_length"}},
		{name: "the user's batch", instanceType: "Standard_NC24ads_A100_v4", config: batch4,
			refusedFor: []string{"per_device_train_batch_size 4 is set in tuning.config cfg", "raising gradient_accumulation_steps keeps the effective batch", "or set resource.instanceType to"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Planner{Catalog: cat}
			ws := &kaito.Workspace{Tuning: &kaito.TuningSpec{Method: "qlora", Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-128k-instruct"}}}}
			ws.Name, ws.Namespace = "ws", "default"
			ws.Resource.InstanceType = tc.instanceType
			if tc.config != "" {
				ws.Tuning.Config = "cfg"
				p.Configs = func(context.Context, string, string) (map[string]string, error) {
					return map[string]string{TrainingConfigKey: tc.config}, nil
				}
			}
			prev, err := p.Plan(context.Background(), ws)
			if err != nil {
				t.Fatal(err)
			}
			if tc.prev != nil {
				tc.prev(prev)
			}
			next, changes, err := p.Replan(context.Background(), ws, prev, tc.failure)
			if tc.refusedFor != nil {
				pe, ok := events.AsPermanent(err)
				if !ok || pe.Reason != events.ReasonGPUOutOfMemory {
					t.Fatalf("got %v, %v; want a permanent GPUOutOfMemory refusal", next, err)
				}
				for _, w := range tc.refusedFor {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("refusal %q\nlacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sku := tc.sku
			if sku == "" {
				sku = next.InstanceType // a larger SKU: which one is the catalog's to say, checked below
				if next.GPUMemoryGiB <= prev.GPUMemoryGiB {
					t.Errorf("moved to %s (%.0f GiB), no larger than %s", sku, next.GPUMemoryGiB, prev.InstanceType)
				}
			}
			if next.InstanceType != sku || next.BatchSize != tc.batch || next.GradientAccumulation != tc.ga || next.SeqLen != tc.seq {
				t.Errorf("next plan %s batch %d accumulation %d sequence %d; want %s %d %d %d", next.InstanceType, next.BatchSize, next.GradientAccumulation, next.SeqLen, sku, tc.batch, tc.ga, tc.seq)
			}
			all := strings.Join(changes, "; ")
			for _, w := range tc.changes {
				if !strings.Contains(all, w) {
					t.Errorf("changes %q\nlack %q", all, w)
				}
			}
		})
	}
}
