// Package tune turns kaitoflow.node.ready into a tuning run and the run's progress into events:
// kaitoflow.tuning.started when the trainer runs, kaitoflow.tuning.completed with the adapter when
// it succeeds, kaitoflow.workspace.failed with the reason when it fails. Starting returns at once;
// everything after comes from kaitoflow.job.changed (a watch on the Job and its Pod, or the sim
// trainer's own clock) and kaitoflow.tick, so no step holds a request open for the length of a
// training run.
package tune

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// Name is the function's name.
const Name = "tune"

// Types are the events the function consumes.
// It reads its own tuning.completed and workspace.failed back: once those are stored, the run is
// acknowledged and ticks stop looking at it.
var Types = []string{events.NodeReady, events.JobChanged, events.Tick, events.TuningCompleted, events.WorkspaceFailed, events.WorkspaceDeleted}

// Job is one tuning run: a workspace generation on its nodes.
type Job struct {
	Name      string           `json:"name"`
	Ref       events.Ref       `json:"ref"`
	Workspace events.Workspace `json:"workspace"`
	Nodes     []string         `json:"nodes"`
	// Plan is what provision checked: precision, batch, sequence length and the rendered
	// training_config.yaml the run must use.
	Plan *events.Plan `json:"plan,omitempty"`
}

// Phase of a run.
type Phase string

// Phases.
const (
	Pending   Phase = "Pending"
	Running   Phase = "Running"
	Succeeded Phase = "Succeeded"
	Failed    Phase = "Failed"
)

// Status is what a trainer knows of a run.
type Status struct {
	Job   Job
	Phase Phase
	// Node and Started are set once the trainer runs.
	Node    string
	Started time.Time
	// Result is set when Succeeded.
	Result Result
	// Reason and Message are set when Failed (OOMKilled, DeadlineExceeded, exit code 3: …).
	Reason, Message string
	// Progress is the trainer's latest report while Running.
	Progress *events.TuningProgressData
	// Acknowledged says the run's outcome is stored: nothing seen of it later (its pod collected
	// with a node that was scaled away) judges it again.
	Acknowledged bool
}

// Result is what a finished run produced.
type Result struct {
	// Location is where the adapter is: a directory (sim), or the output repository holding the
	// uploaded blobs.
	Location string
	Files    []events.AdapterFile
	// Layer is the adapter's image layer when the run uploaded it to the output repository.
	Layer    *events.Blob
	Metrics  map[string]float64
	Datasets []string
	// Finished is when the run ended (the Job's completion time): one value however often the
	// outcome is observed, so what is built from it (the image's created time) is too.
	Finished time.Time
}

// Trainer runs tuning jobs. Start is create-or-get per job name and returns at once. Status
// finds the run of a workspace (nil when it has none). List returns the runs not yet
// acknowledged; Acknowledge marks a run whose outcome is stored. Delete removes the run.
type Trainer interface {
	Name() string
	Start(ctx context.Context, job Job) error
	Status(ctx context.Context, ref events.Ref) (*Status, error)
	List(ctx context.Context) ([]events.Ref, error)
	Acknowledge(ctx context.Context, ref events.Ref) error
	Delete(ctx context.Context, ref events.Ref) error
}

// Function is the tune handler.
type Function struct {
	trainer Trainer
	log     *slog.Logger
}

// New returns the tune function over trainer.
func New(t Trainer, log *slog.Logger) *Function {
	if log == nil {
		log = slog.Default()
	}
	return &Function{trainer: t, log: log.With("function", Name, "trainer", t.Name())}
}

// JobName derives the run's name from the workspace generation, so a redelivered node.ready finds
// the run it already started. It stays a valid label value (≤ 63): long workspace names are cut
// and a hash keeps them apart.
func JobName(ref events.Ref) string {
	base := ref.Name
	if len(base) > 40 {
		sum := sha256.Sum256([]byte(ref.Name))
		base = base[:32] + "-" + hex.EncodeToString(sum[:])[:7]
	}
	return fmt.Sprintf("%s-tuning-%d", base, ref.Generation)
}

// Handle implements runtime.Handler.
func (f *Function) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	return runtime.Dispatch(ctx, ev, f.tick, f.handle)
}

func (f *Function) handle(ctx context.Context, ref events.Ref, ev cloudevents.Event) ([]cloudevents.Event, error) {
	switch ev.Type() {
	case events.NodeReady:
		var d events.NodeReadyData
		if err := events.Data(ev, &d); err != nil {
			return nil, err
		}
		if d.Workspace.Tuning == nil {
			return nil, nil // an inference-only workspace: serve takes it from here
		}
		if d.Plan == nil {
			return nil, events.Permanentf(events.ReasonBadEvent, "node.ready carries no plan: provision must run the fit check first")
		}
		job := Job{Name: JobName(ref), Ref: ref, Workspace: d.Workspace, Nodes: d.Nodes, Plan: d.Plan}
		if err := f.trainer.Start(ctx, job); err != nil {
			return nil, fmt.Errorf("start tuning job %s: %w", job.Name, err)
		}
		return f.observe(ctx, ref, &ev)
	case events.JobChanged:
		return f.observe(ctx, ref, &ev)
	case events.TuningCompleted:
		return nil, f.trainer.Acknowledge(ctx, ref)
	case events.WorkspaceFailed:
		var d events.WorkspaceFailedData
		if err := events.Data(ev, &d); err != nil {
			return nil, err
		}
		if d.Function == Name {
			return nil, f.trainer.Acknowledge(ctx, ref)
		}
	case events.WorkspaceDeleted:
		if err := f.trainer.Delete(ctx, ref); err != nil {
			return nil, fmt.Errorf("delete tuning job of %s: %w", ref, err)
		}
	}
	return nil, nil
}

// observe turns the run's state into events. Every event's id derives from the generation, so
// however often a state is observed, it is stored once; a run seen only when it has already
// finished still gets its tuning.started first.
func (f *Function) observe(ctx context.Context, ref events.Ref, cause *cloudevents.Event) ([]cloudevents.Event, error) {
	st, err := f.trainer.Status(ctx, ref)
	if err != nil || st == nil {
		return nil, err
	}
	if st.Job.Ref.Generation < ref.Generation && ref.Generation != 0 {
		return nil, nil // a watch event about an older run
	}
	if st.Acknowledged {
		// The outcome is stored. A finished run's pod goes when its node does; read again, the
		// Job would look like a success without a summary — a failure after the fact.
		return nil, nil
	}
	ref = st.Job.Ref
	var out []cloudevents.Event
	emit := func(typ, step string, data any) error {
		e, err := events.New("kaitoflow/"+Name, typ, step, ref, data, cause)
		if err == nil {
			out = append(out, e)
		}
		return err
	}
	if st.Phase == Pending {
		return nil, nil
	}
	if st.Phase == Running || st.Phase == Succeeded || (st.Phase == Failed && st.Node != "") {
		if err := emit(events.TuningStarted, events.TuningStarted, events.TuningStartedData{
			Workspace: st.Job.Workspace, Nodes: st.Job.Nodes, Job: st.Job.Name, Trainer: f.trainer.Name(),
			Plan: st.Job.Plan, Node: st.Node, Started: st.Started,
		}); err != nil {
			return nil, err
		}
	}
	switch st.Phase {
	case Running:
		if p := st.Progress; p != nil {
			p.Job = st.Job.Name
			// One event per reported step: the wrapper reports at a bounded rate, so do these.
			err = emit(events.TuningProgress, fmt.Sprintf("progress/%d", p.Step), *p)
		}
	case Succeeded:
		err = emit(events.TuningCompleted, events.TuningCompleted, events.TuningCompletedData{
			Workspace: st.Job.Workspace, Nodes: st.Job.Nodes, Job: st.Job.Name,
			Location: st.Result.Location, Files: st.Result.Files, Layer: st.Result.Layer, Metrics: st.Result.Metrics, Datasets: st.Result.Datasets,
			Plan: st.Job.Plan, Finished: st.Result.Finished,
		})
	case Failed:
		f.log.WarnContext(ctx, "tuning job failed", "job", st.Job.Name, "reason", st.Reason, "message", st.Message)
		err = emit(events.WorkspaceFailed, "failed/"+Name, events.WorkspaceFailedData{
			Ref: ref, Function: Name, EventType: events.JobChanged, Reason: st.Reason, Message: st.Message,
		})
	}
	return out, err
}

// tick re-observes every run, for state changes whose watch event was lost.
func (f *Function) tick(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	refs, err := f.trainer.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []cloudevents.Event
	for _, ref := range refs {
		evs, err := f.observe(ctx, ref, &ev)
		if err != nil {
			f.log.WarnContext(ctx, "observe tuning job; the next tick retries", "workspace", ref.String(), "err", err)
			continue
		}
		out = append(out, evs...)
	}
	return out, nil
}
