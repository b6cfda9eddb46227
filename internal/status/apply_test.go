package status

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
)

func chain(t *testing.T, gen int64, tuning bool) []cloudevents.Event {
	t.Helper()
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: gen}
	ws := kaito.Workspace{}
	ws.Name = "ws"
	ws.Resource.InstanceType = "Standard_NC6s_v3"
	if tuning {
		ws.Tuning = &kaito.TuningSpec{Method: "qlora"}
	} else {
		ws.Inference = &kaito.InferenceSpec{}
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mk := func(typ string, data any) cloudevents.Event {
		e := events.Must(events.New("test", typ, typ, ref, data, nil))
		at = at.Add(time.Second)
		e.SetTime(at)
		return e
	}
	out := []cloudevents.Event{
		mk(events.WorkspaceRequested, ws),
		mk(events.NodeReady, events.NodeReadyData{Workspace: ws, Provider: "sim", Nodes: []string{"n0"}}),
	}
	if tuning {
		out = append(out,
			mk(events.TuningStarted, events.TuningStartedData{Workspace: ws, Job: "ws-tuning-1", Trainer: "sim"}),
			mk(events.TuningCompleted, events.TuningCompletedData{Workspace: ws, Files: []events.AdapterFile{{Path: "a"}}}),
			mk(events.ImagePushed, events.ImagePushedData{Workspace: ws, Reference: "r@sha256:1", Digest: "sha256:1"}),
		)
	}
	return append(out, mk(events.InferenceReady, events.InferenceReadyData{Ref: ref, URL: "http://x"}))
}

func TestApplyFullChainInAnyOrder(t *testing.T) {
	for _, tuning := range []bool{true, false} {
		evs := chain(t, 1, tuning)
		rng := rand.New(rand.NewPCG(1, 2))
		for trial := range 20 {
			order := rng.Perm(len(evs))
			var w Workspace
			for _, i := range order {
				if _, err := Apply(&w, evs[i]); err != nil {
					t.Fatal(err)
				}
				// Every event applied a second time changes nothing.
				if changed, _ := Apply(&w, evs[i]); changed {
					t.Fatalf("reapplying %s changed the record", evs[i].Type())
				}
			}
			if w.Phase != Ready || w.Endpoint != "http://x" || w.ConditionStatus(CondWorkspaceReady) != "True" || w.ConditionStatus(CondResourceReady) != "True" {
				t.Fatalf("tuning=%v trial %d order %v: phase %s conditions %+v", tuning, trial, order, w.Phase, w.Conditions)
			}
			if len(w.Events) != len(evs) {
				t.Fatalf("%d events recorded", len(w.Events))
			}
			for i := 1; i < len(w.Events); i++ {
				if w.Events[i].Time.Before(w.Events[i-1].Time) {
					t.Fatal("events not in time order")
				}
			}
			// tune spans node.ready → tuning.completed: start and finish are two hops.
			want := map[string]time.Duration{StepProvision: time.Second, StepTune: 2 * time.Second, StepPublish: time.Second, StepServe: time.Second}
			for _, s := range w.Steps {
				if s.Started == nil || s.Ended == nil || s.Duration(time.Now()) != want[s.Name] {
					t.Fatalf("step %s: %+v", s.Name, s)
				}
			}
		}
	}
}

func TestApplyPhases(t *testing.T) {
	evs := chain(t, 2, true)
	failed := events.Must(events.New("test", events.WorkspaceFailed, "failed/publish", events.Ref{Namespace: "default", Name: "ws", Generation: 2},
		events.WorkspaceFailedData{Reason: "StepFailed", Message: "push refused", Function: "publish"}, nil))
	failed.SetTime(evs[3].Time().Add(time.Millisecond))
	tests := []struct {
		name  string
		apply []cloudevents.Event
		want  Phase
	}{
		{"requested", evs[:1], Provisioning},
		{"nodes ready, tuning", evs[:2], Tuning},
		{"adapter trained", evs[:4], Publishing},
		{"image pushed", evs[:5], Deploying},
		{"failed stays failed", append(append([]cloudevents.Event{}, evs[:4]...), failed, evs[4], evs[5]), Failed},
		{"older generation ignored", append(append([]cloudevents.Event{}, evs[:2]...), chain(t, 1, true)...), Tuning},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var w Workspace
			for _, e := range tc.apply {
				if _, err := Apply(&w, e); err != nil {
					t.Fatal(err)
				}
			}
			if w.Phase != tc.want {
				t.Errorf("phase %s, want %s", w.Phase, tc.want)
			}
			if tc.want == Failed && (w.Failure == nil || w.Failure.Reason != "StepFailed" || w.ConditionStatus(CondWorkspaceReady) != "False") {
				t.Errorf("failure %+v conditions %+v", w.Failure, w.Conditions)
			}
		})
	}
}

func TestApplyNewGenerationResets(t *testing.T) {
	var w Workspace
	for _, e := range chain(t, 1, true) {
		if _, err := Apply(&w, e); err != nil {
			t.Fatal(err)
		}
	}
	first := w.Created
	if _, err := Apply(&w, chain(t, 2, true)[0]); err != nil {
		t.Fatal(err)
	}
	if w.Generation != 2 || w.Phase != Provisioning || len(w.Events) != 1 || w.Endpoint != "" || !w.Created.Equal(first) {
		t.Errorf("after a new generation: %+v", w)
	}
}

// Two tuning attempts' events in every order: the record always ends with attempt 2's plan,
// nodes and progress, both attempts with their own shapes and outcomes, and the GPU time of both.
func TestApplyAttemptsInAnyOrder(t *testing.T) {
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	ws := kaito.Workspace{Tuning: &kaito.TuningSpec{Method: "qlora"}}
	ws.Name = "ws"
	first := &events.Plan{InstanceType: "Standard_NC6s_v3", BatchSize: 4, SeqLen: 2048}
	second := &events.Plan{InstanceType: "Standard_NC6s_v3", BatchSize: 2, SeqLen: 2048}
	mk := func(typ, step string, data any) cloudevents.Event {
		return events.Must(events.New("test", typ, step, ref, data, nil))
	}
	evs := []cloudevents.Event{
		mk(events.WorkspaceRequested, "requested", ws),
		mk(events.NodeReady, "ready-1", events.NodeReadyData{Workspace: ws, Nodes: []string{"n0"}, Plan: first}),
		mk(events.TuningProgress, "progress-1", events.TuningProgressData{Step: 50, MaxSteps: 100}),
		mk(events.TuningRetrying, "retrying-2", events.TuningRetryingData{Workspace: ws, Attempt: 2, MaxAttempts: 3, Reason: events.ReasonGPUOutOfMemory, Plan: second, GPUSeconds: 60}),
		mk(events.NodeReady, "ready-2", events.NodeReadyData{Workspace: ws, Nodes: []string{"n1"}, Plan: second, Attempt: 2}),
		mk(events.TuningProgress, "progress-2", events.TuningProgressData{Step: 5, MaxSteps: 100, Attempt: 2}),
		mk(events.TuningCompleted, "completed", events.TuningCompletedData{Workspace: ws, Attempt: 2, GPUSeconds: 120, Plan: second}),
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 50 {
		var w Workspace
		for _, i := range rng.Perm(len(evs)) {
			if _, err := Apply(&w, evs[i]); err != nil {
				t.Fatal(err)
			}
		}
		if w.Plan.BatchSize != 2 || w.Nodes[0] != "n1" || w.Progress.Attempt != 2 || w.Progress.Step != 5 {
			t.Fatalf("plan %+v nodes %v progress %+v", w.Plan, w.Nodes, w.Progress)
		}
		if len(w.Attempts) != 2 || w.Attempts[0].BatchSize != 4 || w.Attempts[0].Outcome != events.ReasonGPUOutOfMemory ||
			w.Attempts[1].BatchSize != 2 || w.Attempts[1].Outcome != "Succeeded" {
			t.Fatalf("attempts %+v", w.Attempts)
		}
		if w.GPU == nil || w.GPU.TuningSeconds != 180 {
			t.Fatalf("GPU time %+v", w.GPU)
		}
	}
}

// Generation 2 was promoted and still rolling out when generation 3 was admitted: its late
// inference.ready, of a newer adapter set than the record has seen, still says what serves (what
// generation 3 is scored against); an older set's report changes nothing. A held generation
// promoted later is no longer held.
func TestApplyLiveAcrossGenerations(t *testing.T) {
	mk := func(gen int64, typ, step string, data any) cloudevents.Event {
		return events.Must(events.New("test", typ, step, events.Ref{Namespace: "default", Name: "ws", Generation: gen}, data, nil))
	}
	ready := func(gen, set, serving int64) cloudevents.Event {
		return mk(gen, events.InferenceReady, fmt.Sprintf("ready-%d", set), events.InferenceReadyData{URL: "http://x", AdapterSet: set, ServingGeneration: serving})
	}
	var w Workspace
	for _, e := range []cloudevents.Event{
		ready(1, 1, 0),
		mk(2, events.ImagePushed, "pushed", events.ImagePushedData{Reference: "r@sha256:2"}),
		mk(3, events.WorkspaceRequested, "requested", kaito.Workspace{}),
		ready(2, 2, 0), // late, newer set: generation 2 serves
		ready(1, 1, 0), // late, older set: nothing
	} {
		if _, err := Apply(&w, e); err != nil {
			t.Fatal(err)
		}
	}
	if w.Generation != 3 || w.Live != 2 || w.AdapterSet != 2 {
		t.Fatalf("generation %d, live %d, set %d", w.Generation, w.Live, w.AdapterSet)
	}
	for _, e := range []cloudevents.Event{
		mk(3, events.ImagePushed, "pushed", events.ImagePushedData{Reference: "r@sha256:3"}),
		mk(3, events.AdapterHeld, "held", events.AdapterGateData{Reason: "held: eval_loss 1.5 vs 1.25 serving (generation 2)"}),
		ready(3, 3, 2),
	} {
		if _, err := Apply(&w, e); err != nil {
			t.Fatal(err)
		}
	}
	h3, _ := w.Pushed(3)
	if w.Live != 2 || w.Held == "" || w.AdapterState(h3) != AdapterHeld {
		t.Fatalf("held: live %d, held %q, state %s", w.Live, w.Held, w.AdapterState(h3))
	}
	if _, err := Apply(&w, ready(3, 4, 0)); err != nil { // promoted after all
		t.Fatal(err)
	}
	h3, _ = w.Pushed(3)
	h2, _ := w.Pushed(2)
	if w.Live != 3 || w.Held != "" || h3.Held != "" || w.AdapterState(h3) != AdapterServing || w.AdapterState(h2) != AdapterSuperseded {
		t.Fatalf("promoted: live %d, held %q/%q, states %s %s", w.Live, w.Held, h3.Held, w.AdapterState(h3), w.AdapterState(h2))
	}
}

// A 36-hour run reports progress 4,320 times; the record keeps one entry for them (the newest),
// so it stays far below a NATS message however long a run lasts. Before folding, every report
// stayed and a long run's record could no longer be written.
func TestProgressIsFoldedIntoOneEntry(t *testing.T) {
	ref := events.Ref{Namespace: "default", Name: "long", Generation: 1}
	var ws kaito.Workspace
	ws.Name = "long"
	var w Workspace
	if _, err := Apply(&w, events.Must(events.New("test", events.WorkspaceRequested, "requested", ref, ws, nil))); err != nil {
		t.Fatal(err)
	}
	const reports = 4320
	for step := 1; step <= reports; step++ {
		ev := events.Must(events.New("test", events.TuningProgress, fmt.Sprintf("progress-%d", step), ref, events.TuningProgressData{Step: step, MaxSteps: reports}, nil))
		if _, err := Apply(&w, ev); err != nil {
			t.Fatal(err)
		}
	}
	// A late, older report changes nothing.
	late := events.Must(events.New("test", events.TuningProgress, "progress-late", ref, events.TuningProgressData{Step: 7, MaxSteps: reports}, nil))
	if _, err := Apply(&w, late); err != nil {
		t.Fatal(err)
	}
	var progress []EventRecord
	for _, e := range w.Events {
		if e.Type == events.TuningProgress {
			progress = append(progress, e)
		}
	}
	if len(progress) != 1 || w.Progress.Step != reports || !strings.Contains(progress[0].Note, fmt.Sprint(reports)) {
		t.Fatalf("%d progress entries (want 1, the newest), progress %+v", len(progress), w.Progress)
	}
	if b, _ := json.Marshal(w); len(b) > 16<<10 {
		t.Errorf("the record is %d bytes after %d reports", len(b), reports)
	}
}
