package tune_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/functions/tune"
	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/presets"
)

func types(evs []cloudevents.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type())
	}
	return out
}

func TestSimRunStartsThenCompletesByEvent(t *testing.T) {
	ws := kaito.Workspace{Tuning: &kaito.TuningSpec{Method: "qlora", Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-128k-instruct"}}}}
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 3}
	rec := &testenv.Recorder{}
	f := tune.New(&tunesim.Trainer{Dir: t.TempDir(), Delay: 20 * time.Millisecond, Publisher: rec, Log: slog.New(slog.DiscardHandler)}, tune.Options{Log: slog.New(slog.DiscardHandler)})
	ready := events.Must(events.New("test", events.NodeReady, events.NodeReady, ref, events.NodeReadyData{Workspace: ws, Nodes: []string{"n0"}, Plan: &events.Plan{DType: "float16"}}, nil))
	out, err := f.Handle(context.Background(), ready)
	if err != nil || len(out) != 1 || out[0].Type() != events.TuningStarted {
		t.Fatalf("node.ready → %v, %v", types(out), err)
	}
	var started events.TuningStartedData
	if err := events.Data(out[0], &started); err != nil || started.Job != "ws-tuning-3" || started.Plan.DType != "float16" || started.Node != "n0" {
		t.Fatalf("tuning.started %+v %v", started, err)
	}
	// The sim trainer reports progress, as job-run does for real runs.
	halfway := rec.Wait(t, 0)[0]
	if halfway.Type() != events.JobChanged || halfway.Subject() != "default/ws" {
		t.Fatalf("sim announced %v", halfway)
	}
	prog, err := f.Handle(context.Background(), halfway)
	if err != nil || len(prog) != 2 || prog[1].Type() != events.TuningProgress {
		t.Fatalf("progress → %v, %v", types(prog), err)
	}
	var p events.TuningProgressData
	if err := events.Data(prog[1], &p); err != nil || p.Step < 1 || p.MaxSteps != 100 || p.Job != "ws-tuning-3" {
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
	ws := kaito.Workspace{Inference: &kaito.InferenceSpec{}}
	in := events.Must(events.New("test", events.NodeReady, events.NodeReady, events.Ref{Namespace: "d", Name: "w", Generation: 1}, events.NodeReadyData{Workspace: ws}, nil))
	out, err := tune.New(&tunesim.Trainer{Dir: t.TempDir(), Log: slog.New(slog.DiscardHandler)}, tune.Options{Log: slog.New(slog.DiscardHandler)}).Handle(context.Background(), in)
	if err != nil || len(out) != 0 {
		t.Fatalf("got %v %v", out, err)
	}
}

func TestNodeReadyWithoutAPlanIsRefused(t *testing.T) {
	ws := kaito.Workspace{Tuning: &kaito.TuningSpec{Method: "lora"}}
	in := events.Must(events.New("test", events.NodeReady, events.NodeReady, events.Ref{Namespace: "d", Name: "w", Generation: 1}, events.NodeReadyData{Workspace: ws}, nil))
	_, err := tune.New(&tunesim.Trainer{Dir: t.TempDir(), Log: slog.New(slog.DiscardHandler)}, tune.Options{Log: slog.New(slog.DiscardHandler)}).Handle(context.Background(), in)
	if _, ok := events.AsPermanent(err); !ok {
		t.Fatalf("got %v", err)
	}
}

func TestJobNameIsAValidLabelValue(t *testing.T) {
	for _, name := range []string{"a", "workspace-tuning-phi-3", strings.Repeat("x", 63)} {
		n := tune.JobName(events.Ref{Namespace: "default", Name: name, Generation: 123456})
		if len(n) > 63 {
			t.Errorf("%q: %d characters", n, len(n))
		}
	}
	if tune.JobName(events.Ref{Name: strings.Repeat("x", 50) + "a"}) == tune.JobName(events.Ref{Name: strings.Repeat("x", 50) + "b"}) {
		t.Error("long names collide")
	}
}

// run drives one attempt of a sim run as the pipeline does: node.ready in, then each job.changed
// the sim announces, until the run's outcome (tuning.completed, tuning.retrying or
// workspace.failed) comes out.
func run(t *testing.T, f *tune.Function, rec *testenv.Recorder, ref events.Ref, ready events.NodeReadyData) cloudevents.Event {
	t.Helper()
	ctx := context.Background()
	seen := len(rec.Events())
	in := events.Must(events.New("test", events.NodeReady, events.NodeReady, ref, ready, nil))
	out, err := f.Handle(ctx, in)
	for {
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range out {
			switch e.Type() {
			case events.TuningCompleted, events.TuningRetrying, events.WorkspaceFailed:
				return e
			}
		}
		evs := rec.Wait(t, seen)
		out, err = f.Handle(ctx, evs[seen])
		seen++
	}
}

// smallSimGPU is phi-3 qlora on an A100 whose simulated GPU holds batch 2, with its plan from the
// real planner; config names the workspace's tuning.config, which configs serves.
func smallSimGPU(t *testing.T, config string, configs presets.ConfigSource) (*presets.Planner, kaito.Workspace, *events.Plan) {
	t.Helper()
	catalog, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	planner := &presets.Planner{Catalog: catalog, Configs: configs}
	ws := kaito.Workspace{Tuning: &kaito.TuningSpec{Method: "qlora", Config: config, Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-128k-instruct"}}}}
	ws.Name, ws.Namespace = "ws", "default"
	ws.Annotations = map[string]string{tunesim.AnnotationMaxBatch: "2"}
	ws.Resource.InstanceType = "Standard_NC24ads_A100_v4"
	plan, err := planner.Plan(context.Background(), &ws)
	if err != nil {
		t.Fatal(err)
	}
	return planner, ws, plan
}

// The sim's GPU holds batch 2 (kaitoflow.io/sim-max-batch); the planner plans batch 4 for
// phi-3 on an A100. The first attempt runs out of GPU memory, tune re-plans with the real
// planner — batch 2, twice the gradient accumulation — and the second attempt completes.
func TestOutOfGPUMemoryRetriesWithAHalfBatch(t *testing.T) {
	planner, ws, plan := smallSimGPU(t, "", nil)
	if plan.BatchSize != 4 {
		t.Fatalf("the planner planned batch %d; this test wants 4", plan.BatchSize)
	}
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	rec := &testenv.Recorder{}
	f := tune.New(&tunesim.Trainer{Dir: t.TempDir(), Delay: 20 * time.Millisecond, Publisher: rec, Log: slog.New(slog.DiscardHandler)}, tune.Options{Replanner: planner, Log: slog.New(slog.DiscardHandler)})

	first := run(t, f, rec, ref, events.NodeReadyData{Workspace: ws, Nodes: []string{"n0"}, Plan: plan})
	if first.Type() != events.TuningRetrying {
		t.Fatalf("attempt 1 ended with %s: %s", first.Type(), first.Data())
	}
	var retry events.TuningRetryingData
	if err := events.Data(first, &retry); err != nil {
		t.Fatal(err)
	}
	if retry.Attempt != 2 || retry.Reason != events.ReasonGPUOutOfMemory || retry.Resume || retry.Failure == nil || retry.Failure.BatchSize != 4 {
		t.Fatalf("retrying: %+v", retry)
	}
	if retry.Plan.BatchSize != 2 || retry.Plan.GradientAccumulation != 2 || !strings.Contains(retry.Plan.TrainingConfig, "per_device_train_batch_size: 2") ||
		!strings.Contains(retry.Plan.TrainingConfig, "gradient_accumulation_steps: 2") {
		t.Fatalf("the next plan: batch %d, accumulation %d\n%s", retry.Plan.BatchSize, retry.Plan.GradientAccumulation, retry.Plan.TrainingConfig)
	}
	if len(retry.Changes) == 0 || !strings.Contains(strings.Join(retry.Changes, "; "), "per_device_train_batch_size 4 → 2") {
		t.Errorf("changes: %q", retry.Changes)
	}
	// Read back, the retrying event acknowledges attempt 1: ticks no longer report it.
	if _, err := f.Handle(context.Background(), first); err != nil {
		t.Fatal(err)
	}

	done := run(t, f, rec, ref, events.NodeReadyData{Workspace: ws, Nodes: []string{"n0"}, Plan: retry.Plan, Attempt: retry.Attempt})
	var c events.TuningCompletedData
	if err := events.Data(done, &c); err != nil || done.Type() != events.TuningCompleted {
		t.Fatalf("attempt 2 ended with %s: %s", done.Type(), done.Data())
	}
	if c.Attempt != 2 || c.Plan.BatchSize != 2 || c.Job != "ws-tuning-1-2" || c.Metrics["steps"] != 100 {
		t.Fatalf("completed: attempt %d, batch %d, job %s, metrics %v", c.Attempt, c.Plan.BatchSize, c.Job, c.Metrics)
	}
}

// A batch the user set in tuning.config is the user's: running out of memory with it fails the
// workspace with the advice, and no second attempt is made.
func TestOutOfGPUMemoryWithTheUsersBatchFailsWithAdvice(t *testing.T) {
	planner, ws, plan := smallSimGPU(t, "my-config", func(_ context.Context, ns, name string) (map[string]string, error) {
		if ns != "default" || name != "my-config" {
			return nil, presets.ErrConfigMapNotFound
		}
		return map[string]string{presets.TrainingConfigKey: "training_config:\n  TrainingArguments:\n    per_device_train_batch_size: 4\n"}, nil
	})
	rec := &testenv.Recorder{}
	f := tune.New(&tunesim.Trainer{Dir: t.TempDir(), Delay: 20 * time.Millisecond, Publisher: rec, Log: slog.New(slog.DiscardHandler)}, tune.Options{Replanner: planner, Log: slog.New(slog.DiscardHandler)})
	out := run(t, f, rec, events.Ref{Namespace: "default", Name: "ws", Generation: 1}, events.NodeReadyData{Workspace: ws, Nodes: []string{"n0"}, Plan: plan})
	var failed events.WorkspaceFailedData
	if err := events.Data(out, &failed); err != nil || out.Type() != events.WorkspaceFailed {
		t.Fatalf("ended with %s: %s", out.Type(), out.Data())
	}
	for _, want := range []string{"per_device_train_batch_size 4 is set in tuning.config my-config", "lower per_device_train_batch_size", "gradient_accumulation_steps"} {
		if failed.Reason != events.ReasonGPUOutOfMemory || !strings.Contains(failed.Message, want) {
			t.Errorf("failed %s: %s\nwant %q in it", failed.Reason, failed.Message, want)
		}
	}
}
