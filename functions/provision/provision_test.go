package provision_test

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/functions/provision"
	provisionsim "github.com/kaitoflow/kaitoflow/functions/provision/sim"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/presets"
)

func seed(t *testing.T) *kaito.Workspace {
	t.Helper()
	doc, err := os.ReadFile("../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := kaito.DecodeWorkspace(doc)
	if err != nil {
		t.Fatal(err)
	}
	return ws
}

func TestHandle(t *testing.T) {
	cat, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		mutate     func(*kaito.Workspace)
		wantReason string
		wantMsg    string
	}{
		{name: "seed", mutate: func(*kaito.Workspace) {}},
		{name: "two inference nodes", mutate: func(w *kaito.Workspace) {
			n := 2
			w.Resource.Count = &n
			w.Inference, w.Tuning = &kaito.InferenceSpec{Preset: w.Tuning.Preset}, nil
		}},
		{name: "two tuning nodes", mutate: func(w *kaito.Workspace) { n := 2; w.Resource.Count = &n }, wantReason: events.ReasonInvalidWorkspace, wantMsg: "resource.count"},
		{name: "invalid", mutate: func(w *kaito.Workspace) { w.Tuning.Method = "dora" }, wantReason: events.ReasonInvalidWorkspace, wantMsg: "tuning.method"},
		{name: "metadata service", mutate: func(w *kaito.Workspace) { w.Tuning.Input.URLs = []string{"http://169.254.169.254/"} }, wantReason: events.ReasonInvalidWorkspace, wantMsg: "tuning.input.urls[0]"},
		{name: "subject mismatch", mutate: func(w *kaito.Workspace) { w.Name = "other" }, wantReason: events.ReasonBadEvent, wantMsg: "does not match"},
		{name: "cannot fit", mutate: func(w *kaito.Workspace) { w.Tuning.Preset.Name = "phi-4"; w.Tuning.Method = "lora" }, wantReason: events.ReasonInsufficientGPUMemory, wantMsg: "Standard_NC6s_v3 has 16 GiB"},
		{name: "unknown preset", mutate: func(w *kaito.Workspace) { w.Tuning.Preset.Name = "gpt-5" }, wantReason: events.ReasonInvalidWorkspace, wantMsg: "tuning.preset.name"},
		{name: "unknown SKU", mutate: func(w *kaito.Workspace) { w.Resource.InstanceType = "Standard_D4s_v5" }, wantReason: events.ReasonInvalidWorkspace, wantMsg: "resource.instanceType"},
		{name: "config map without a cluster", mutate: func(w *kaito.Workspace) { w.Tuning.Config = "my-config" }, wantReason: events.ReasonInvalidWorkspace, wantMsg: "tuning.config"},
		{name: "no instance type: cheapest that fits", mutate: func(w *kaito.Workspace) { w.Resource.InstanceType = "" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := provision.New(&provisionsim.Provider{Log: slog.New(slog.DiscardHandler)}, &presets.Planner{Catalog: cat}, &provision.MemoryPending{}, provision.Options{Log: slog.New(slog.DiscardHandler)})
			ws := seed(t)
			tc.mutate(ws)
			ref := events.Ref{Namespace: "default", Name: "workspace-tuning-phi-3", Generation: 1}
			in := events.Must(events.New("test", events.WorkspaceRequested, events.WorkspaceRequested, ref, ws, nil))
			out, err := f.Handle(context.Background(), in)
			if tc.wantReason != "" {
				p, ok := events.AsPermanent(err)
				if !ok || p.Reason != tc.wantReason || !strings.Contains(p.Err.Error(), tc.wantMsg) {
					t.Fatalf("got %v, want permanent %s mentioning %s", err, tc.wantReason, tc.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var d events.NodeReadyData
			if err := events.Data(out[0], &d); err != nil {
				t.Fatal(err)
			}
			if len(d.Nodes) != ws.NodeCount() || d.Provider != "sim" || d.Plan == nil || d.InstanceType != d.Plan.InstanceType {
				t.Errorf("node.ready %+v", d)
			}
			if ws.Resource.InstanceType == "Standard_NC6s_v3" && d.Plan.DType != "float16" {
				t.Errorf("V100 plan %+v", d.Plan)
			}
			if ws.Resource.InstanceType == "" && d.InstanceType != "Standard_NC4as_T4_v3" {
				t.Errorf("chose %s", d.InstanceType)
			}
			again, err := f.Handle(context.Background(), in)
			if err != nil || again[0].ID() != out[0].ID() || string(again[0].Data()) != string(out[0].Data()) {
				t.Errorf("a redelivery must emit the same event: %v", err)
			}
		})
	}
}
