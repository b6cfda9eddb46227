package provision_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/functions/provision"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/presets"
)

// scripted is a Provider whose capacity state the test sets.
type scripted struct {
	mu        sync.Mutex
	ready     bool
	err       error
	ensureErr error
	ensured   int
	released  []provision.Purpose
}

func (s *scripted) Name() string { return "scripted" }
func (s *scripted) Ensure(context.Context, provision.Request) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ensured++
	return s.ensureErr
}
func (s *scripted) Check(context.Context, provision.Request) (provision.Capacity, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return provision.Capacity{}, s.err
	}
	if !s.ready {
		return provision.Capacity{Waiting: "0 of 1 nodes Ready with 1 nvidia.com/gpu"}, nil
	}
	return provision.Capacity{Ready: true, Nodes: []events.Node{{Name: "aks-kf1-0", GPUs: 1}}}, nil
}
func (s *scripted) Release(_ context.Context, r provision.Request) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.released = append(s.released, r.Purpose)
	return nil
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func setup(t *testing.T) (*provision.Function, *scripted, *clock, *provision.MemoryPending) {
	t.Helper()
	cat, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	p, clk, pend := &scripted{}, &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}, &provision.MemoryPending{}
	return provision.New(p, &presets.Planner{Catalog: cat}, pend, provision.Options{Deadline: 30 * time.Minute, Now: clk.now, Log: slog.New(slog.DiscardHandler)}), p, clk, pend
}

func ev(t *testing.T, typ string, gen int64, data any) cloudevents.Event {
	t.Helper()
	return events.Must(events.New("test", typ, typ, events.Ref{Namespace: "default", Name: "workspace-tuning-phi-3", Generation: gen}, data, nil))
}

func tick(t *testing.T) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID("tick-1")
	e.SetSource("test")
	e.SetType(events.Tick)
	_ = e.SetData(cloudevents.ApplicationJSON, events.TickData{})
	return e
}

func handle(t *testing.T, f *provision.Function, e cloudevents.Event) []cloudevents.Event {
	t.Helper()
	out, err := f.Handle(context.Background(), e)
	if err != nil {
		t.Fatalf("%s: %v", e.Type(), err)
	}
	return out
}

func TestWaitsForNodesThenEmitsNodeReadyOnce(t *testing.T) {
	f, p, _, pend := setup(t)
	if out := handle(t, f, ev(t, events.WorkspaceRequested, 1, seed(t))); len(out) != 0 {
		t.Fatalf("node.ready before any node is ready: %v", out)
	}
	if out := handle(t, f, ev(t, events.NodeChanged, 1, events.NodeChangedData{Node: "aks-kf1-0"})); len(out) != 0 {
		t.Fatal("node.ready while the node has no GPU")
	}
	p.ready = true
	out := handle(t, f, ev(t, events.NodeChanged, 1, events.NodeChangedData{Node: "aks-kf1-0"}))
	if len(out) != 1 || out[0].Type() != events.NodeReady {
		t.Fatalf("got %v", out)
	}
	var d events.NodeReadyData
	if err := events.Data(out[0], &d); err != nil || d.Plan == nil || d.NodeInfo[0].GPUs != 1 {
		t.Fatalf("node.ready data %+v %v", d, err)
	}
	// A redelivered request creates nothing new and emits the same event.
	again := handle(t, f, ev(t, events.WorkspaceRequested, 1, seed(t)))
	if len(again) != 1 || again[0].ID() != out[0].ID() {
		t.Fatalf("redelivery: %v", again)
	}
	// Once node.ready is stored, ticks leave the workspace alone.
	handle(t, f, out[0])
	if rec, _ := pend.Get(context.Background(), "default", "workspace-tuning-phi-3"); rec == nil || !rec.Ready {
		t.Fatalf("record not marked ready: %+v", rec)
	}
	if out := handle(t, f, tick(t)); len(out) != 0 {
		t.Errorf("tick after ready: %v", out)
	}
}

func TestDeadlineFailsTheWorkspace(t *testing.T) {
	f, _, clk, _ := setup(t)
	handle(t, f, ev(t, events.WorkspaceRequested, 1, seed(t)))
	clk.t = clk.t.Add(29 * time.Minute)
	if out := handle(t, f, tick(t)); len(out) != 0 {
		t.Fatalf("failed before the deadline: %v", out)
	}
	clk.t = clk.t.Add(2 * time.Minute)
	out := handle(t, f, tick(t))
	if len(out) != 1 || out[0].Type() != events.WorkspaceFailed || out[0].Subject() != "default/workspace-tuning-phi-3" {
		t.Fatalf("got %v", out)
	}
	var d events.WorkspaceFailedData
	_ = events.Data(out[0], &d)
	if d.Reason != provision.ReasonCapacityTimeout || !strings.Contains(d.Message, "nvidia.com/gpu") || !strings.Contains(d.Message, "30m0s") {
		t.Errorf("failure %+v", d)
	}
}

func TestCapacityFailureFailsTheWorkspace(t *testing.T) {
	f, p, _, _ := setup(t)
	handle(t, f, ev(t, events.WorkspaceRequested, 1, seed(t)))
	p.err = errors.New("ARM throttled")
	if out := handle(t, f, tick(t)); len(out) != 0 {
		t.Fatalf("a retryable check error failed the workspace: %v", out)
	}
	p.err = events.Permanentf("QuotaExceeded", "Operation could not be completed as it results in exceeding approved standardNCSv3Family Cores quota")
	out := handle(t, f, tick(t))
	var d events.WorkspaceFailedData
	if len(out) != 1 || events.Data(out[0], &d) != nil || d.Reason != provision.ReasonCapacityFailed || !strings.Contains(d.Message, "quota") {
		t.Fatalf("got %v %+v", out, d)
	}
}

func TestRelease(t *testing.T) {
	f, p, _, pend := setup(t)
	handle(t, f, ev(t, events.WorkspaceRequested, 2, seed(t)))
	// An event of an older generation releases nothing.
	handle(t, f, ev(t, events.WorkspaceFailed, 1, events.WorkspaceFailedData{}))
	if len(p.released) != 0 {
		t.Fatal("an old generation's failure released the new one's capacity")
	}
	handle(t, f, ev(t, events.TuningCompleted, 2, events.TuningCompletedData{}))
	if len(p.released) != 1 || p.released[0] != provision.Tuning {
		t.Fatalf("released %v", p.released)
	}
	if rec, _ := pend.Get(context.Background(), "default", "workspace-tuning-phi-3"); rec == nil || !rec.Released {
		t.Errorf("no tombstone after release: %+v", rec)
	}
	// A late duplicate of the generation's request buys nothing again, and ticks skip it.
	ensured := p.ensured
	if out := handle(t, f, ev(t, events.WorkspaceRequested, 2, seed(t))); len(out) != 0 || p.ensured != ensured {
		t.Errorf("a duplicate request after the release re-provisioned: %v (ensured %d → %d)", out, ensured, p.ensured)
	}
	if out := handle(t, f, tick(t)); len(out) != 0 {
		t.Errorf("a tick looked at released capacity: %v", out)
	}
	// Releasing again (a redelivery, or workspace.deleted later) is a no-op, but a deletion is
	// still answered, for the finalizer.
	out := handle(t, f, ev(t, events.WorkspaceDeleted, 2, events.WorkspaceDeletedData{}))
	if len(p.released) != 1 {
		t.Errorf("released twice: %v", p.released)
	}
	if len(out) != 1 || out[0].Type() != events.CapacityReleased {
		t.Errorf("deletion not answered: %v", out)
	}
	// A new generation is provisioned as usual.
	handle(t, f, ev(t, events.WorkspaceRequested, 3, seed(t)))
	if p.ensured == ensured {
		t.Error("generation 3 was not provisioned")
	}
}

func TestPreflightRefusesOrWarns(t *testing.T) {
	cat, _ := presets.Default()
	bad := func(context.Context, *kaito.DataSource) error {
		return events.Permanentf("DatasetInvalid", "tuning.input.urls[0] https://x/d.parquet: HTTP 404 Not Found")
	}
	f := provision.New(&scripted{ready: true}, &presets.Planner{Catalog: cat}, &provision.MemoryPending{}, provision.Options{Preflight: bad, Log: slog.New(slog.DiscardHandler)})
	_, err := f.Handle(context.Background(), ev(t, events.WorkspaceRequested, 1, seed(t)))
	if p, ok := events.AsPermanent(err); !ok || p.Reason != "DatasetInvalid" {
		t.Fatalf("enforced preflight: %v", err)
	}
	f = provision.New(&scripted{ready: true}, &presets.Planner{Catalog: cat}, &provision.MemoryPending{}, provision.Options{Preflight: bad, PreflightWarnOnly: true, Log: slog.New(slog.DiscardHandler)})
	out, err := f.Handle(context.Background(), ev(t, events.WorkspaceRequested, 1, seed(t)))
	if err != nil || len(out) != 1 {
		t.Fatalf("warn-only preflight: %v %v", out, err)
	}
	var d events.NodeReadyData
	_ = events.Data(out[0], &d)
	if !strings.Contains(strings.Join(d.Plan.Reasons, "\n"), "404") {
		t.Errorf("the warning is not on the plan: %v", d.Plan.Reasons)
	}
}

// handingOver is a provider whose tuning capacity becomes serving capacity.
type handingOver struct {
	scripted
	served []provision.Purpose
}

func (h *handingOver) Serve(_ context.Context, r provision.Request) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.served = append(h.served, r.Purpose)
	return nil
}

// With a provider that can hand over, the end of the run keeps the capacity for serving instead of
// releasing it; a redelivery hands over nothing twice; deleting the workspace releases it.
func TestTuningCapacityHandedOverToServing(t *testing.T) {
	cat, _ := presets.Default()
	p := &handingOver{scripted: scripted{ready: true}}
	pend := &provision.MemoryPending{}
	f := provision.New(p, &presets.Planner{Catalog: cat}, pend, provision.Options{Log: slog.New(slog.DiscardHandler)})
	handle(t, f, ev(t, events.WorkspaceRequested, 1, seed(t)))
	for range 2 {
		if out := handle(t, f, ev(t, events.TuningCompleted, 1, events.TuningCompletedData{})); len(out) != 0 {
			t.Fatalf("handover emitted %v", out)
		}
	}
	if len(p.served) != 1 || p.served[0] != provision.Serving || len(p.released) != 0 {
		t.Fatalf("served %v, released %v", p.served, p.released)
	}
	if rec, _ := pend.Get(context.Background(), "default", "workspace-tuning-phi-3"); rec == nil || rec.Released || rec.Purpose != provision.Serving {
		t.Fatalf("record after handover: %+v", rec)
	}
	out := handle(t, f, ev(t, events.WorkspaceDeleted, 1, events.WorkspaceDeletedData{}))
	if len(p.released) != 1 || p.released[0] != provision.Serving || len(out) != 1 || out[0].Type() != events.CapacityReleased {
		t.Fatalf("deletion: released %v, out %v", p.released, out)
	}
}

// A tuning attempt that lost its node: provision ensures the capacity again (the provider puts it
// back) and emits node.ready for attempt 2, resumed, once it is ready — a node.ready of its own,
// so the first attempt's stored one does not hide it. A redelivered retry ensures again and emits
// the same event; a retry on a larger SKU releases the old capacity first.
func TestRetryGetsCapacityForTheNextAttempt(t *testing.T) {
	f, p, clk, pend := setup(t)
	p.ready = true
	first := handle(t, f, ev(t, events.WorkspaceRequested, 1, seed(t)))
	handle(t, f, first[0])
	var ready events.NodeReadyData
	if err := events.Data(first[0], &ready); err != nil {
		t.Fatal(err)
	}

	p.ready = false // the node is gone
	clk.t = clk.t.Add(time.Hour)
	retry := ev(t, events.TuningRetrying, 1, events.TuningRetryingData{Workspace: ready.Workspace, Attempt: 2, MaxAttempts: 3, Reason: "NodeLost", Plan: ready.Plan, Resume: true})
	if out := handle(t, f, retry); len(out) != 0 {
		t.Fatalf("node.ready before the capacity is back: %v", out)
	}
	if p.ensured != 2 || len(p.released) != 0 {
		t.Fatalf("ensured %d times, released %v", p.ensured, p.released)
	}
	rec, _ := pend.Get(context.Background(), "default", "workspace-tuning-phi-3")
	if rec.Attempt != 2 || rec.Ready || !rec.Resume || !rec.Deadline.Equal(clk.t.Add(30*time.Minute)) {
		t.Fatalf("record after the retry: %+v", rec)
	}
	// The first attempt's node.ready, redelivered, does not mark attempt 2's capacity ready.
	handle(t, f, first[0])
	p.ready = true
	out := handle(t, f, ev(t, events.NodeChanged, 1, events.NodeChangedData{Node: "aks-kf1-0"}))
	if len(out) != 1 || out[0].Type() != events.NodeReady || out[0].ID() == first[0].ID() {
		t.Fatalf("attempt 2: %v", out)
	}
	var second events.NodeReadyData
	if err := events.Data(out[0], &second); err != nil || second.Attempt != 2 || !second.Resume {
		t.Fatalf("attempt 2's node.ready: %+v %v", second, err)
	}
	if again := handle(t, f, retry); len(again) != 1 || again[0].ID() != out[0].ID() {
		t.Fatalf("a redelivered retry: %v", again)
	}

	// Attempt 3 on a larger SKU: the old capacity goes first, and while the provider cannot
	// create the new one yet (the old pool still being deleted) ticks ensure it again, instead of
	// the retry's redeliveries running out.
	bigger := *ready.Plan
	bigger.InstanceType = "Standard_NC24ads_A100_v4"
	p.ensureErr = errors.New("agent pool kf0123456789 is being deleted")
	if out := handle(t, f, ev(t, events.TuningRetrying, 1, events.TuningRetryingData{Workspace: ready.Workspace, Attempt: 3, MaxAttempts: 3, Reason: "GPUOutOfMemory", Plan: &bigger})); len(out) != 0 {
		t.Fatalf("node.ready before the capacity is ensured: %v", out)
	}
	if rec, _ := pend.Get(context.Background(), "default", "workspace-tuning-phi-3"); len(p.released) != 1 || rec.Plan.InstanceType != bigger.InstanceType || rec.Attempt != 3 {
		t.Fatalf("larger SKU: released %v, record %+v", p.released, rec)
	}
	p.ready = false
	ensured := p.ensured
	handle(t, f, tick(t))
	p.ensureErr, p.ready = nil, true
	out = handle(t, f, tick(t))
	if p.ensured != ensured+2 || len(out) != 1 || out[0].Type() != events.NodeReady {
		t.Fatalf("ticks ensured %d times and emitted %v", p.ensured-ensured, out)
	}
	var third events.NodeReadyData
	if err := events.Data(out[0], &third); err != nil || third.Attempt != 3 || third.InstanceType != bigger.InstanceType {
		t.Fatalf("attempt 3's node.ready: %+v %v", third, err)
	}
}
