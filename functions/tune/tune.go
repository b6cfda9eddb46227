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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// Name is the function's name.
const Name = "tune"

// Source is the CloudEvents source of the events the step emits (runtime.Function.Source).
const Source = "kaitoflow/" + Name

// Types are the events the function consumes.
// It reads its own tuning.completed and workspace.failed back: once those are stored, the run is
// acknowledged and ticks stop looking at it.
// Its own tuning.retrying, read back, acknowledges the failed attempt the same way.
var Types = (&Function{}).routes().Types()

// Job is one tuning run: a workspace generation on its nodes.
type Job struct {
	Name      string          `json:"name"`
	Ref       events.Ref      `json:"ref"`
	Workspace kaito.Workspace `json:"workspace"`
	Nodes     []string        `json:"nodes"`
	// Plan is what provision checked: precision, batch, sequence length and the rendered
	// training_config.yaml the run must use.
	Plan *events.Plan `json:"plan,omitempty"`
	// Attempt numbers the runs of one generation from 1; Resume says this one is expected to
	// continue from a checkpoint of the attempt before (job-run continues whatever checkpoint of
	// the same plan it finds).
	Attempt int  `json:"attempt,omitempty"`
	Resume  bool `json:"resume,omitempty"`
	// Compare is the adapter serving when the run started: the trainer scores it beside the new
	// one on the same held-out rows (nil: nothing serves yet).
	Compare *events.ComparedAdapter `json:"compare,omitempty"`
}

// TrainerCommand is the Python trainer's command line for job (presets/trainer), run with python
// on the base model at model (a Hugging Face id at revision, or a directory) with the training
// config at config and the dataset under inputDir: the tuning Job's container and the local
// trainer run the same one.
func TrainerCommand(job Job, python, model, revision, config, inputDir string) []string {
	cmd := []string{python, "-m", "kaitoflow_trainer.train", "--method", job.Workspace.Tuning.Method, "--model", model}
	if revision != "" {
		cmd = append(cmd, "--revision", revision)
	}
	cmd = append(cmd, "--config", config, "--input-dir", inputDir)
	if job.Plan.TrainingProcesses > 1 {
		// One training process per GPU (data parallel), each holding the model on its own device;
		// the plan chose it only where the whole model fits one GPU.
		cmd = append(cmd, "--processes", strconv.Itoa(job.Plan.TrainingProcesses))
	}
	return cmd
}

// AttemptOf is the job's attempt, counting a job from before attempts as the first.
func (j Job) AttemptOf() int { return max(j.Attempt, 1) }

// CheckpointTag names the run's checkpoints: the workspace generation and what fixes the run's
// shape (the rendered training config, the SKU, the processes), so an attempt with the same plan
// continues them and a re-planned one does not.
func (j Job) CheckpointTag() string {
	var plan string
	if p := j.Plan; p != nil {
		plan = fmt.Sprintf("%s\n%s\n%d", p.TrainingConfig, p.InstanceType, p.TrainingProcesses)
	}
	return jobrun.CheckpointTag(j.Ref.Namespace, j.Ref.Name, j.Ref.Generation, plan)
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
	// Reason and Message are set when Failed (OOMKilled, DeadlineExceeded, exit code 3: …);
	// Failure when the trainer said more (its termination message as JSON).
	Reason, Message string
	Failure         *events.TrainerFailure
	// Ended is when a finished run stopped, as far as is known (zero: not known).
	Ended time.Time
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
// finds the newest run of a workspace (nil when it has none). List returns the runs not yet
// acknowledged; Acknowledge marks a generation's runs up to attempt as stored. Delete removes
// the runs.
type Trainer interface {
	Name() string
	Start(ctx context.Context, job Job) error
	Status(ctx context.Context, ref events.Ref) (*Status, error)
	List(ctx context.Context) ([]events.Ref, error)
	Acknowledge(ctx context.Context, ref events.Ref, attempt int) error
	Delete(ctx context.Context, ref events.Ref) error
}

// ErrNoLogs: the workspace's generation has no trainer output (yet), for the attempt asked.
var ErrNoLogs = errors.New("no trainer output")

// Logs are a run's trainer output, the way `kubectl logs` reads a tuning pod's: attempt 0 is the
// newest; with follow, what the trainer writes next, until the attempt ends or ctx does.
// ErrNoLogs when there is none. Each driver that keeps output implements it.
type Logs func(ctx context.Context, ref events.Ref, attempt int, follow bool, w io.Writer) error

// Replanner makes the plan of the next attempt after a run ran out of GPU memory: one step
// smaller (half the batch with twice the gradient accumulation, then half the sequence, then the
// next SKU the fit check accepts), never changing what the user set. It returns the plan and
// what changed, or a permanent error with the advice when nothing is left to change.
type Replanner interface {
	Replan(ctx context.Context, ws *kaito.Workspace, plan *events.Plan, failure *events.TrainerFailure) (*events.Plan, []string, error)
}

// ServingLookup says which adapter a workspace serves now (nil: none), for a run to score its own
// beside (the status store).
type ServingLookup interface {
	ServingAdapter(ctx context.Context, ref events.Ref) (*events.ComparedAdapter, error)
}

// DefaultMaxAttempts bounds the attempts of one generation.
const DefaultMaxAttempts = 3

// Options configure a Function.
type Options struct {
	// Replanner shrinks the plan after out of GPU memory; nil fails such a run with the advice.
	Replanner Replanner
	// MaxAttempts bounds the attempts of a generation (DefaultMaxAttempts when zero; 1 never
	// retries).
	MaxAttempts int
	// Serving finds the adapter a run is scored against; nil scores none.
	Serving ServingLookup
	Log     *slog.Logger
}

// Function is the tune handler.
type Function struct {
	// router dispatches each event to its route (routes), built once by New.
	router      *runtime.Routes
	trainer     Trainer
	replanner   Replanner
	serving     ServingLookup
	maxAttempts int
	log         *slog.Logger
}

// New returns the tune function over trainer.
func New(t Trainer, o Options) *Function {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	f := &Function{trainer: t, replanner: o.Replanner, serving: o.Serving, maxAttempts: o.MaxAttempts, log: o.Log.With("function", Name, "trainer", t.Name())}
	f.router = f.routes()
	return f
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

// AttemptJobName is the run's name for an attempt: JobName for the first, then with the attempt
// appended, so every attempt's Job (and its logs) stays to be read.
func AttemptJobName(ref events.Ref, attempt int) string {
	if attempt <= 1 {
		return JobName(ref)
	}
	return fmt.Sprintf("%s-%d", JobName(ref), attempt)
}

// routes are the events the function takes, each with its handler.
func (f *Function) routes() *runtime.Routes {
	r := &runtime.Routes{}
	r.OnTick(f.tick)
	runtime.On(r, events.NodeReady, f.nodeReady)
	r.Add(events.JobChanged, func(ctx context.Context, ref events.Ref, ev cloudevents.Event) ([]cloudevents.Event, error) {
		return f.observe(ctx, ref, &ev)
	})
	runtime.On(r, events.TuningRetrying, func(ctx context.Context, ref events.Ref, _ cloudevents.Event,
		d events.TuningRetryingData) ([]cloudevents.Event, error) {
		return nil, f.trainer.Acknowledge(ctx, ref, d.Attempt-1)
	})
	// Every attempt of the generation: the outcome is stored.
	r.Add(events.TuningCompleted, func(ctx context.Context, ref events.Ref, _ cloudevents.Event) ([]cloudevents.Event, error) {
		return nil, f.trainer.Acknowledge(ctx, ref, math.MaxInt)
	})
	runtime.On(r, events.WorkspaceFailed, func(ctx context.Context, ref events.Ref, _ cloudevents.Event,
		d events.WorkspaceFailedData) ([]cloudevents.Event, error) {
		if d.Function != Name {
			return nil, nil
		}
		return nil, f.trainer.Acknowledge(ctx, ref, math.MaxInt)
	})
	r.Add(events.WorkspaceDeleted, func(ctx context.Context, ref events.Ref, _ cloudevents.Event) ([]cloudevents.Event, error) {
		if err := f.trainer.Delete(ctx, ref); err != nil {
			return nil, fmt.Errorf("delete tuning job of %s: %w", ref, err)
		}
		return nil, nil
	})
	return r
}

// Handle implements runtime.Handler.
func (f *Function) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	return f.router.Handle(ctx, ev)
}

func (f *Function) nodeReady(ctx context.Context, ref events.Ref, ev cloudevents.Event, d events.NodeReadyData) ([]cloudevents.Event, error) {
	if d.Workspace.Tuning == nil {
		return nil, nil // an inference-only workspace: serve takes it from here
	}
	if d.Plan == nil {
		return nil, events.Permanentf(events.ReasonBadEvent, "node.ready carries no plan: provision must run the fit check first")
	}
	job := Job{Name: AttemptJobName(ref, d.Attempt), Ref: ref, Workspace: d.Workspace, Nodes: d.Nodes, Plan: d.Plan, Attempt: max(d.Attempt, 1),
		Resume: d.Resume}
	if f.serving != nil {
		// Read at every delivery, used once: the run is create-or-get, and the first one
		// started is the one that runs.
		c, err := f.serving.ServingAdapter(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("the adapter %s serves: %w", ref, err)
		}
		if c != nil && c.Generation < ref.Generation {
			job.Compare = c
		}
	}
	if err := f.trainer.Start(ctx, job); err != nil {
		return nil, fmt.Errorf("start tuning job %s: %w", job.Name, err)
	}
	return f.observe(ctx, ref, &ev)
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
		e, err := events.New(Source, typ, step, ref, data, cause)
		if err == nil {
			out = append(out, e)
		}
		return err
	}
	if st.Phase == Pending {
		return nil, nil
	}
	attempt := st.Job.AttemptOf()
	// Per attempt: the first keeps the step names runs had before there were attempts.
	per := func(step string) string {
		if attempt > 1 {
			return fmt.Sprintf("%s/attempt-%d", step, attempt)
		}
		return step
	}
	if st.Phase == Running || st.Phase == Succeeded || (st.Phase == Failed && st.Node != "") {
		if err := emit(events.TuningStarted, per(events.TuningStarted), events.TuningStartedData{
			Workspace: st.Job.Workspace, Nodes: st.Job.Nodes, Job: st.Job.Name, Trainer: f.trainer.Name(),
			Plan: st.Job.Plan, Node: st.Node, Started: st.Started, Attempt: attempt,
		}); err != nil {
			return nil, err
		}
	}
	switch st.Phase {
	case Running:
		if p := st.Progress; p != nil {
			p.Job, p.Attempt = st.Job.Name, attempt
			// One event per reported step: the wrapper reports at a bounded rate, so do these.
			err = emit(events.TuningProgress, per(fmt.Sprintf("progress/%d", p.Step)), *p)
		}
	case Succeeded:
		err = emit(events.TuningCompleted, events.TuningCompleted, events.TuningCompletedData{
			Workspace: st.Job.Workspace, Nodes: st.Job.Nodes, Job: st.Job.Name,
			Location: st.Result.Location, Files: st.Result.Files, Layer: st.Result.Layer, Metrics: st.Result.Metrics, Datasets: st.Result.Datasets,
			Plan: st.Job.Plan, Finished: st.Result.Finished, Attempt: attempt, GPUSeconds: gpuSeconds(st, st.Result.Finished),
			Compared: st.Job.Compare,
		})
	case Failed:
		e, ferr := f.failed(ctx, st, attempt, cause)
		if ferr != nil {
			return nil, ferr
		}
		out = append(out, e)
	}
	return out, err
}

// failed is what a failed run leads to: its next attempt (tuning.retrying) when one may fix it,
// else workspace.failed.
func (f *Function) failed(ctx context.Context, st *Status, attempt int, cause *cloudevents.Event) (cloudevents.Event, error) {
	f.log.WarnContext(ctx, "tuning job failed", "job", st.Job.Name, "attempt", attempt, "reason", st.Reason, "message", st.Message)
	ref := st.Job.Ref
	next, reason, msg, err := f.retry(ctx, st)
	if err != nil {
		return cloudevents.Event{}, err
	}
	if next != nil {
		return events.New(Source, events.TuningRetrying, fmt.Sprintf("retrying/attempt-%d", next.Attempt), ref, *next, cause)
	}
	return events.New(Source, events.WorkspaceFailed, "failed/"+Name, ref, events.WorkspaceFailedData{
		Ref: ref, Function: Name, EventType: events.JobChanged, Reason: reason, Message: msg,
	}, cause)
}

// Failure reasons the pipeline recovers from with another attempt. OOMKilled is not one of them:
// that is the node's memory, which no smaller batch is sure to fix.
const (
	// ReasonGPUOutOfMemory: the trainer ran out of GPU memory (its exit code 4).
	ReasonGPUOutOfMemory = events.ReasonGPUOutOfMemory
	// ReasonNodeLost: the run's pod was taken away with its node (spot eviction, a deleted VM,
	// a drain).
	ReasonNodeLost = "NodeLost"
)

// retry decides what follows a failed attempt: the next attempt — a smaller plan after running
// out of GPU memory, the same plan resumed from its newest checkpoint after losing the node — or
// none, with the reason and message the workspace fails with.
func (f *Function) retry(ctx context.Context, st *Status) (next *events.TuningRetryingData, reason, message string, err error) {
	attempt := st.Job.AttemptOf()
	if st.Reason != ReasonGPUOutOfMemory && st.Reason != ReasonNodeLost {
		return nil, st.Reason, st.Message, nil
	}
	if attempt >= f.maxAttempts {
		return nil, st.Reason, fmt.Sprintf("%s (attempt %d of %d; no attempts left)", st.Message, attempt, f.maxAttempts), nil
	}
	next = &events.TuningRetryingData{
		Workspace: st.Job.Workspace, Attempt: attempt + 1, MaxAttempts: f.maxAttempts, Reason: st.Reason, Message: st.Message,
		Failure: st.Failure, Plan: st.Job.Plan, GPUSeconds: gpuSeconds(st, st.Ended),
	}
	switch st.Reason {
	case ReasonNodeLost:
		next.Resume = true
		if st.Progress != nil {
			next.CheckpointStep = st.Progress.CheckpointStep
		}
	case ReasonGPUOutOfMemory:
		if f.replanner == nil {
			return nil, st.Reason, st.Message, nil
		}
		plan, changes, err := f.replanner.Replan(ctx, &st.Job.Workspace, st.Job.Plan, st.Failure)
		if p, ok := events.AsPermanent(err); ok {
			return nil, p.Reason, p.Err.Error(), nil
		}
		if err != nil {
			return nil, "", "", fmt.Errorf("re-plan %s after it ran out of GPU memory: %w", st.Job.Name, err)
		}
		// A checkpoint of a different batch or sequence would resume a different run: start over.
		next.Plan, next.Changes = plan, changes
	}
	return next, "", "", nil
}

// gpuSeconds is what a run held: the GPUs of its nodes for as long as its trainer ran.
func gpuSeconds(st *Status, end time.Time) float64 {
	if st.Started.IsZero() || end.IsZero() || end.Before(st.Started) || st.Job.Plan == nil {
		return 0
	}
	return float64(max(st.Job.Plan.GPUs, 1)*max(len(st.Job.Nodes), 1)) * end.Sub(st.Started).Seconds()
}

// tick re-observes every run, for state changes whose watch event was lost.
func (f *Function) tick(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	return runtime.Sweep(ctx, ev, f.log, "tuning job", f.trainer.List, f.observe)
}
