package tune

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func types(evs []cloudevents.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type())
	}
	return out
}

func TestSimRunStartsThenCompletesByEvent(t *testing.T) {
	ws := events.Workspace{Tuning: &events.TuningSpec{Method: "qlora", Preset: &events.PresetSpec{PresetMeta: events.PresetMeta{Name: "phi-3-mini-128k-instruct"}}}}
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 3}
	rec := &testenv.Recorder{}
	f := New(&Sim{Dir: t.TempDir(), Delay: 20 * time.Millisecond, Publisher: rec, Log: quiet}, quiet)
	ready := events.Must(events.New("test", events.NodeReady, events.NodeReady, ref, events.NodeReadyData{Workspace: ws, Nodes: []string{"n0"}, Plan: &events.Plan{DType: "float16"}}, nil))
	out, err := f.Handle(context.Background(), ready)
	if err != nil || len(out) != 1 || out[0].Type() != events.TuningStarted {
		t.Fatalf("node.ready → %v, %v", types(out), err)
	}
	var started events.TuningStartedData
	if err := events.Data(out[0], &started); err != nil || started.Job != "ws-tuning-3" || started.Plan.DType != "float16" || started.Node != "n0" {
		t.Fatalf("tuning.started %+v %v", started, err)
	}
	// Half way the sim trainer reports progress, as job-run does for real runs.
	halfway := rec.Wait(t, 0)[0]
	if halfway.Type() != events.JobChanged || halfway.Subject() != "default/ws" {
		t.Fatalf("sim announced %v", halfway)
	}
	prog, err := f.Handle(context.Background(), halfway)
	if err != nil || len(prog) != 2 || prog[1].Type() != events.TuningProgress {
		t.Fatalf("progress → %v, %v", types(prog), err)
	}
	var p events.TuningProgressData
	if err := events.Data(prog[1], &p); err != nil || p.Percent() != 50 || p.Job != "ws-tuning-3" {
		t.Fatalf("progress %+v %v", p, err)
	}
	changed := rec.Wait(t, 1)[1]
	done, err := f.Handle(context.Background(), changed)
	if err != nil || strings.Join(types(done), ",") != events.TuningStarted+","+events.TuningCompleted || done[0].ID() != out[0].ID() {
		t.Fatalf("job.changed → %v, %v", types(done), err)
	}
	var c events.TuningCompletedData
	if err := events.Data(done[1], &c); err != nil || len(c.Files) != 2 {
		t.Fatalf("tuning.completed %+v %v", c, err)
	}
	b, err := os.ReadFile(filepath.Join(c.Location, "adapter_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b[:8])
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatalf("safetensors header: %v", err)
	}
	cfg, _ := os.ReadFile(filepath.Join(c.Location, "adapter_config.json"))
	if !strings.Contains(string(cfg), `"kaitoflow_dtype": "float16"`) {
		t.Errorf("the adapter does not record the planned dtype: %s", cfg)
	}
	// A redelivered node.ready starts nothing new; the same events come out again.
	again, err := f.Handle(context.Background(), ready)
	if err != nil || len(again) != 2 || again[1].ID() != done[1].ID() {
		t.Fatalf("redelivery: %v %v", types(again), err)
	}
	// Ticks look at the run until its outcome is read back, then leave it alone.
	tick := cloudevents.NewEvent()
	tick.SetID("t")
	tick.SetSource("test")
	tick.SetType(events.Tick)
	if out, _ := f.Handle(context.Background(), tick); len(out) != 2 {
		t.Fatalf("tick before acknowledgement: %v", types(out))
	}
	if _, err := f.Handle(context.Background(), done[1]); err != nil {
		t.Fatal(err)
	}
	if out, _ := f.Handle(context.Background(), tick); len(out) != 0 {
		t.Fatalf("tick after acknowledgement: %v", types(out))
	}
}

func TestInferenceOnlyWorkspaceIsNotTuned(t *testing.T) {
	ws := events.Workspace{Inference: &events.InferenceSpec{}}
	in := events.Must(events.New("test", events.NodeReady, events.NodeReady, events.Ref{Namespace: "d", Name: "w", Generation: 1}, events.NodeReadyData{Workspace: ws}, nil))
	out, err := New(&Sim{Dir: t.TempDir(), Log: quiet}, quiet).Handle(context.Background(), in)
	if err != nil || len(out) != 0 {
		t.Fatalf("got %v %v", out, err)
	}
}

func TestNodeReadyWithoutAPlanIsRefused(t *testing.T) {
	ws := events.Workspace{Tuning: &events.TuningSpec{Method: "lora"}}
	in := events.Must(events.New("test", events.NodeReady, events.NodeReady, events.Ref{Namespace: "d", Name: "w", Generation: 1}, events.NodeReadyData{Workspace: ws}, nil))
	_, err := New(&Sim{Dir: t.TempDir(), Log: quiet}, quiet).Handle(context.Background(), in)
	if _, ok := events.AsPermanent(err); !ok {
		t.Fatalf("got %v", err)
	}
}

func TestJobNameIsAValidLabelValue(t *testing.T) {
	for _, name := range []string{"a", "workspace-tuning-phi-3", strings.Repeat("x", 63)} {
		n := JobName(events.Ref{Namespace: "default", Name: name, Generation: 123456})
		if len(n) > 63 {
			t.Errorf("%q: %d characters", n, len(n))
		}
	}
	if JobName(events.Ref{Name: strings.Repeat("x", 50) + "a"}) == JobName(events.Ref{Name: strings.Repeat("x", 50) + "b"}) {
		t.Error("long names collide")
	}
}
