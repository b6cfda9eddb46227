package tune

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/events"
)

func TestStartThenComplete(t *testing.T) {
	ws := events.Workspace{Tuning: &events.TuningSpec{Method: "qlora", Preset: &events.PresetSpec{PresetMeta: events.PresetMeta{Name: "phi-3-mini-128k-instruct"}}}}
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 3}
	f := New(&Sim{Dir: t.TempDir()}, nil)
	ready := events.Must(events.New("test", events.NodeReady, events.NodeReady, ref, events.NodeReadyData{Workspace: ws, Nodes: []string{"n0"}, Plan: &events.Plan{DType: "float16"}}, nil))
	out, err := f.Handle(context.Background(), ready)
	if err != nil || len(out) != 1 || out[0].Type() != events.TuningStarted {
		t.Fatalf("node.ready → %v, %v", out, err)
	}
	var started events.TuningStartedData
	if err := events.Data(out[0], &started); err != nil || started.Job != "ws-tuning-3" || started.Plan == nil || started.Plan.DType != "float16" {
		t.Fatalf("tuning.started %+v %v", started, err)
	}
	done, err := f.Handle(context.Background(), out[0])
	if err != nil || len(done) != 1 || done[0].Type() != events.TuningCompleted {
		t.Fatalf("tuning.started → %v, %v", done, err)
	}
	var c events.TuningCompletedData
	if err := events.Data(done[0], &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Files) != 2 {
		t.Fatalf("files %+v", c.Files)
	}
	// The safetensors file parses: header length, JSON header, offsets inside the data.
	b, err := os.ReadFile(filepath.Join(c.Location, "adapter_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b[:8])
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatalf("header: %v", err)
	}
	data := uint64(len(b)) - 8 - n
	for k, v := range hdr {
		if k == "__metadata__" {
			continue
		}
		var tinfo struct {
			DType   string   `json:"dtype"`
			Offsets []uint64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(v, &tinfo); err != nil || tinfo.DType != "F32" || tinfo.Offsets[1] > data {
			t.Errorf("tensor %s: %s", k, v)
		}
	}
	cfg, err := os.ReadFile(filepath.Join(c.Location, "adapter_config.json"))
	if err != nil || !strings.Contains(string(cfg), `"kaitoflow_dtype": "float16"`) {
		t.Errorf("the adapter does not record the planned dtype: %s", cfg)
	}
	// A rerun (redelivered tuning.started) yields the same files.
	again, err := f.Handle(context.Background(), out[0])
	if err != nil {
		t.Fatal(err)
	}
	var c2 events.TuningCompletedData
	_ = events.Data(again[0], &c2)
	if c2.Files[1].Digest != c.Files[1].Digest {
		t.Error("the sim adapter is not reproducible")
	}
}

func TestInferenceOnlyWorkspaceIsNotTuned(t *testing.T) {
	ws := events.Workspace{Inference: &events.InferenceSpec{}}
	in := events.Must(events.New("test", events.NodeReady, events.NodeReady, events.Ref{Namespace: "d", Name: "w", Generation: 1}, events.NodeReadyData{Workspace: ws}, nil))
	out, err := New(&Sim{Dir: t.TempDir()}, nil).Handle(context.Background(), in)
	if err != nil || len(out) != 0 {
		t.Fatalf("got %v %v", out, err)
	}
}

func TestNodeReadyWithoutAPlanIsRefused(t *testing.T) {
	ws := events.Workspace{Tuning: &events.TuningSpec{Method: "lora"}}
	in := events.Must(events.New("test", events.NodeReady, events.NodeReady, events.Ref{Namespace: "d", Name: "w", Generation: 1}, events.NodeReadyData{Workspace: ws}, nil))
	_, err := New(&Sim{Dir: t.TempDir()}, nil).Handle(context.Background(), in)
	if _, ok := events.AsPermanent(err); !ok {
		t.Fatalf("got %v", err)
	}
}
