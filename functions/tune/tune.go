// Package tune turns kaitoflow.node.ready into a tuning run and the run's end into
// kaitoflow.tuning.completed. Starting and finishing are two steps: node.ready starts the job and
// emits kaitoflow.tuning.started; tuning.started waits for the job's outcome. Neither step holds
// a GPU or a request open for the length of training with a real trainer, whose completion
// arrives as an event of its own.
package tune

import (
	"context"
	"fmt"
	"log/slog"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
)

// Name is the function's name.
const Name = "tune"

// Types are the events the function consumes.
var Types = []string{events.NodeReady, events.TuningStarted}

// Job is one tuning run: a workspace generation on its nodes.
type Job struct {
	Name      string
	Ref       events.Ref
	Workspace events.Workspace
	Nodes     []string
	// Plan is what provision checked: precision, batch, sequence length and the rendered
	// training_config.yaml the run must use.
	Plan *events.Plan
}

// Result is what a finished run produced.
type Result struct {
	// Location is where the adapter files are (a directory for the sim trainer).
	Location string
	Files    []events.AdapterFile
	Metrics  map[string]float64
}

// Trainer runs tuning jobs. Start is idempotent per job name; Wait returns the outcome and an
// events.PermanentError when the run failed for good.
type Trainer interface {
	Name() string
	Start(ctx context.Context, job Job) error
	Wait(ctx context.Context, job Job) (Result, error)
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

// JobName derives the run's name from the workspace generation, so a redelivered node.ready
// finds the run it already started.
func JobName(ref events.Ref) string {
	return fmt.Sprintf("%s-tuning-%d", ref.Name, ref.Generation)
}

// Handle implements runtime.Handler.
func (f *Function) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	ref, err := events.RefOf(ev)
	if err != nil {
		return nil, events.Permanent(events.ReasonBadEvent, err)
	}
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
		out, err := events.New("kaitoflow/"+Name, events.TuningStarted, events.TuningStarted, ref, events.TuningStartedData{
			Workspace: d.Workspace, Nodes: d.Nodes, Job: job.Name, Trainer: f.trainer.Name(), Plan: d.Plan,
		}, &ev)
		if err != nil {
			return nil, err
		}
		return []cloudevents.Event{out}, nil

	case events.TuningStarted:
		var d events.TuningStartedData
		if err := events.Data(ev, &d); err != nil {
			return nil, err
		}
		job := Job{Name: d.Job, Ref: ref, Workspace: d.Workspace, Nodes: d.Nodes, Plan: d.Plan}
		res, err := f.trainer.Wait(ctx, job)
		if err != nil {
			return nil, fmt.Errorf("tuning job %s: %w", job.Name, err)
		}
		out, err := events.New("kaitoflow/"+Name, events.TuningCompleted, events.TuningCompleted, ref, events.TuningCompletedData{
			Workspace: d.Workspace, Nodes: d.Nodes, Job: job.Name,
			Location: res.Location, Files: res.Files, Metrics: res.Metrics,
		}, &ev)
		if err != nil {
			return nil, err
		}
		return []cloudevents.Event{out}, nil
	}
	return nil, nil
}
