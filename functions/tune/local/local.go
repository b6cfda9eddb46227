// Package local is the tuning step's local trainer driver: each run on this machine, through the
// job-run wrapper a tuning Job's container runs, with kaitoflow's real trainer or the sim's.
package local

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Trainer runs each tuning job on this machine as a tuning Job's container runs it: kaitoflow's
// job-run wrapper fetches the dataset, runs the trainer process (Process says which, and with what
// arguments), uploads the checkpoints and the adapter's layer to the output registry and writes
// the summary. Changes are announced with kaitoflow.job.changed, as the Job watch does for a
// cluster's runs. Runs live in memory: a restarted process forgets them. the sim is this driver with the
// simulated trainer; PythonProcess makes it run kaitoflow's real one.
type Trainer struct {
	// Dir holds each run's data, results and termination log, by namespace, name and generation
	// (shared by a generation's attempts, as an output volume would be).
	Dir       string
	Publisher events.Publisher
	// Resolve maps tuning.output.image to where the layer is uploaded (the embedded registry);
	// nil keeps the adapter on disk and uploads nothing.
	Resolve func(image string) (name.Reference, error)
	// Policy is the address policy job-run fetches datasets under.
	Policy netguard.AddressPolicy
	// Parallel bounds how many trainer processes run at once, as a cluster's GPUs bound its runs;
	// runtime.NumCPU() when zero.
	Parallel int
	// Process is the trainer process of a run.
	Process func(job tune.Job, run RunDirs) (TrainerProcess, error)
	// Stdout receives the trainer's output; nil discards it (it would interleave with `up`'s own).
	Stdout io.Writer
	Log    *slog.Logger

	// Kind names the driver in its status and log lines; "local" when empty.
	Kind string
	// BestEffortFetch logs a failed dataset fetch instead of failing the run (the sim reads no
	// data).
	BestEffortFetch bool
	// Started and Finished, when set, are the log lines of a run's start and end in place of
	// local's (the sim's say that nothing is trained).
	Started, Finished string

	mu    sync.Mutex
	runs  map[string]*localRun
	slots chan struct{}
}

// RunDirs are a run's directories and files, as job-run lays them out.
type RunDirs struct {
	// Root is the generation's directory; Data, Results and TerminationLog are job-run's.
	Root, Data, Results, TerminationLog string
}

// TrainerProcess is the command line and the added environment of a trainer process.
type TrainerProcess struct {
	Command []string
	Env     []string
}

type localRun struct {
	job      tune.Job
	started  time.Time
	ended    time.Time
	done     bool
	acked    bool
	progress *events.TuningProgressData
	result   tune.Result
	err      error
	// failure is the trainer's own account of a failed run.
	failure *events.TrainerFailure
	// cancel ends the run (job-run sends the trainer SIGTERM): the workspace was deleted, or a
	// newer generation or attempt replaced it.
	cancel context.CancelFunc
}

// Name implements Trainer.
func (l *Trainer) Name() string { return cmp.Or(l.Kind, "local") }

func localKey(ref events.Ref) string { return ref.Namespace + "/" + ref.Name }

// Start implements Trainer.
func (l *Trainer) Start(ctx context.Context, job tune.Job) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs == nil {
		l.runs = map[string]*localRun{}
	}
	if r, ok := l.runs[localKey(job.Ref)]; ok && (r.job.Ref.Generation > job.Ref.Generation ||
		r.job.Ref.Generation == job.Ref.Generation && r.job.AttemptOf() >= job.AttemptOf()) {
		return nil
	}
	if l.slots == nil {
		n := l.Parallel
		if n <= 0 {
			n = goruntime.NumCPU()
		}
		l.slots = make(chan struct{}, n)
	}
	if old, ok := l.runs[localKey(job.Ref)]; ok && old.cancel != nil {
		old.cancel() // superseded: its process must not go on writing the results directory
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r := &localRun{job: job, started: time.Now().UTC(), cancel: cancel}
	l.runs[localKey(job.Ref)] = r
	msg := cmp.Or(l.Started, "local: tuning job started; the trainer runs on this machine")
	logctx.Or(l.Log).InfoContext(ctx, msg, "job", job.Name, "nodes", job.Nodes)
	go l.run(runCtx, r)
	return nil
}

func (l *Trainer) run(ctx context.Context, r *localRun) {
	l.slots <- struct{}{}
	res, failure, err := l.wrap(ctx, r)
	<-l.slots
	l.mu.Lock()
	res.Finished = time.Now().UTC().Truncate(time.Second)
	r.done, r.err, r.result, r.failure, r.ended = true, err, res, failure, res.Finished
	l.mu.Unlock()
	msg := cmp.Or(l.Finished, "local: tuning job finished")
	logctx.Or(l.Log).InfoContext(ctx, msg, "job", r.job.Name, "location", res.Location, "err", err)
	l.announce(ctx, r, "done")
}

// wrap runs the job through job-run, as a tuning Job's container does.
func (l *Trainer) wrap(ctx context.Context, r *localRun) (tune.Result, *events.TrainerFailure, error) {
	dir := l.runDir(r.job.Ref)
	run := RunDirs{Root: dir, Data: filepath.Join(dir, "data"), Results: filepath.Join(dir, "results"),
		TerminationLog: filepath.Join(dir, fmt.Sprintf("termination-log-%d", r.job.AttemptOf()))}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tune.Result{}, nil, err
	}
	proc, err := l.Process(r.job, run)
	if err != nil {
		return tune.Result{}, nil, fmt.Errorf("%s: %w", l.Name(), err)
	}
	// The trainer's output and errors, as a pod's log keeps them: `kaitoflow logs` reads this.
	// Its errors go there only, not to this process's stderr: `up` keeps its terminal calm, and
	// a failed run's traceback is in `kaitoflow logs` (and its reason in the workspace's status).
	logFile, err := os.OpenFile(logPath(dir, r.job.AttemptOf()), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return tune.Result{}, nil, fmt.Errorf("%s: trainer log: %w", l.Name(), err)
	}
	defer logFile.Close()
	logged := &boundedWriter{w: logFile, left: MaxLog}
	stdout := io.Writer(logged)
	if l.Stdout != nil {
		stdout = io.MultiWriter(l.Stdout, logged)
	}
	cfg := jobrun.Config{
		DataDir: run.Data, ResultsDir: run.Results, TerminationLog: run.TerminationLog, Attempts: 1,
		FetchBestEffort: l.BestEffortFetch, Policy: l.Policy, Env: proc.Env, Command: proc.Command,
		CheckpointTag: r.job.CheckpointTag(), Reporter: localReporter{l: l, r: r}, Stdout: stdout, Stderr: logged,
	}
	t := r.job.Workspace.Tuning
	if t != nil && t.Input != nil {
		cfg.InputURLs = t.Input.URLs
	}
	cfg.EvalURLs = r.job.Workspace.EvalDataURLs()
	if l.Resolve != nil && t != nil && t.Output != nil && t.Output.Image != "" {
		ref, err := l.Resolve(t.Output.Image)
		if err != nil {
			return tune.Result{}, nil, err
		}
		// The rewrite points at the operator's stand-in (up's embedded registry), not the workspace's.
		cfg.OutputImage, cfg.InsecureRegistry, cfg.OperatorRegistry = ref.String(), true, true
		if c := r.job.Compare; c != nil {
			// The serving adapter's reference is where publish pushed it: the embedded registry.
			cfg.CompareImage = c.Reference
		}
	}
	if err := jobrun.Run(ctx, cfg, logctx.Or(l.Log)); err != nil {
		// The trainer's own account, as tuning Jobs read it from the termination message.
		var tf events.TrainerFailure
		if b, rerr := os.ReadFile(run.TerminationLog); rerr == nil && json.Unmarshal(b, &tf) == nil && tf.Reason != "" {
			return tune.Result{}, &tf, fmt.Errorf("%s: %w", l.Name(), err)
		}
		return tune.Result{}, nil, fmt.Errorf("%s: %w", l.Name(), err)
	}
	b, err := os.ReadFile(cfg.TerminationLog)
	if err != nil {
		return tune.Result{}, nil, err
	}
	var sum jobrun.Summary
	if err := json.Unmarshal(b, &sum); err != nil {
		return tune.Result{}, nil, fmt.Errorf("%s: summary: %w", l.Name(), err)
	}
	return tune.Result{Location: sum.Location, Files: sum.Files, Layer: sum.Layer, Metrics: sum.Metrics, Datasets: sum.Datasets}, nil, nil
}

type localReporter struct {
	l *Trainer
	r *localRun
}

func (lr localReporter) Report(ctx context.Context, p events.TuningProgressData) error {
	lr.l.mu.Lock()
	lr.r.progress = &p
	lr.l.mu.Unlock()
	lr.l.announce(ctx, lr.r, fmt.Sprintf("progress-%d", p.Step))
	return nil
}

// announce publishes kaitoflow.job.changed for the run, as the Job watch does for a cluster's runs.
func (l *Trainer) announce(ctx context.Context, r *localRun, what string) {
	if l.Publisher == nil {
		return
	}
	e := cloudevents.NewEvent()
	e.SetID(l.Name() + "-job/" + r.job.Name + "/" + what)
	e.SetSource("kaitoflow/" + l.Name() + "-trainer")
	e.SetType(events.JobChanged)
	e.SetSubject(r.job.Ref.Subject())
	e.SetExtension(events.ExtGeneration, strconv.FormatInt(r.job.Ref.Generation, 10))
	// The run continues the trace of the node.ready that started it.
	runtime.InjectTrace(ctx, &e)
	if err := e.SetData(cloudevents.ApplicationJSON, events.JobChangedData{Job: r.job.Name}); err == nil {
		if err := l.Publisher.Publish(ctx, e); err != nil {
			logctx.Or(l.Log).WarnContext(ctx, l.Name()+": publish job.changed; the next tick sees the change", "err", err)
		}
	}
}

// Status implements Trainer.
func (l *Trainer) Status(_ context.Context, ref events.Ref) (*tune.Status, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.runs[localKey(ref)]
	if !ok {
		return nil, nil
	}
	st := &tune.Status{Job: r.job, Phase: tune.Running, Node: firstOr(r.job.Nodes, l.Name()+"-node"), Started: r.started, Acknowledged: r.acked}
	if r.progress != nil {
		p := *r.progress
		st.Progress = &p
	}
	switch {
	case r.done && r.failure != nil:
		f := *r.failure
		st.Phase, st.Reason, st.Message, st.Failure, st.Ended = tune.Failed, f.Reason, f.Message, &f, r.ended
	case r.done && r.err != nil:
		st.Phase, st.Reason, st.Message, st.Ended = tune.Failed, "TrainerFailed", r.err.Error(), r.ended
	case r.done:
		st.Phase, st.Result = tune.Succeeded, r.result
	}
	return st, nil
}

// List implements Trainer.
func (l *Trainer) List(context.Context) ([]events.Ref, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var refs []events.Ref
	for _, r := range l.runs {
		if !r.acked {
			refs = append(refs, r.job.Ref)
		}
	}
	slices.SortFunc(refs, func(a, b events.Ref) int { return cmp.Compare(a.Subject(), b.Subject()) })
	return refs, nil
}

// Acknowledge implements Trainer.
func (l *Trainer) Acknowledge(_ context.Context, ref events.Ref, upTo int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.runs[localKey(ref)]; ok && r.job.Ref.Generation == ref.Generation && r.job.AttemptOf() <= upTo {
		r.acked = true
	}
	return nil
}

// Delete implements Trainer.
func (l *Trainer) Delete(_ context.Context, ref events.Ref) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.runs[localKey(ref)]; ok && r.cancel != nil {
		r.cancel()
	}
	delete(l.runs, localKey(ref))
	return nil
}

func firstOr(xs []string, def string) string {
	if len(xs) > 0 {
		return xs[0]
	}
	return def
}

// Python is kaitoflow's Python trainer (presets/trainer) as the local driver's process: the command
// line a tuning Job's container runs (TrainerCommand), with the plan's training config, on this
// machine's Python environment.
type Python struct {
	// Interpreter has the trainer's packages (hack/ml-env.sh makes one from the hashed lock).
	Interpreter string
	// TrainerDir holds the kaitoflow_trainer package (presets/trainer); it goes on PYTHONPATH.
	TrainerDir string
	// Models maps preset names to local model directories. A preset not in it is the plan's
	// Hugging Face model at its pinned revision, from the Hugging Face cache or downloaded.
	Models map[string]string
	// CPU trains in fp32 on the CPU whatever precision the plan chose for its GPU (there is no
	// fp16 or bf16 mixed precision on a CPU); false trains as planned, on the machine's GPUs.
	CPU bool
}

// Process implements Trainer.Process.
func (p Python) Process(job tune.Job, run RunDirs) (TrainerProcess, error) {
	if job.Plan == nil || job.Workspace.Tuning == nil {
		return TrainerProcess{}, fmt.Errorf("job %s: no plan or tuning spec", job.Name)
	}
	cfg, err := presets.ParseTrainingConfig([]byte(job.Plan.TrainingConfig))
	if err != nil {
		return TrainerProcess{}, fmt.Errorf("the plan's training config: %w", err)
	}
	// The Job's output volume is mounted at /mnt/results; here the run's results directory is.
	over := presets.TrainingConfig{"TrainingArguments": {"output_dir": run.Results}}
	if p.CPU {
		over["TrainingArguments"]["fp16"], over["TrainingArguments"]["bf16"] = false, false
		over["ModelConfig"] = map[string]any{"torch_dtype": "float32", "device_map": "cpu"}
		if q := cfg["QuantizationConfig"]; q != nil {
			// bitsandbytes' CPU backend computes in the dtype it is given; the plan's is a GPU's.
			over["QuantizationConfig"] = map[string]any{"bnb_4bit_compute_dtype": "float32"}
		}
	}
	rendered, err := presets.Merge(cfg, over).Render()
	if err != nil {
		return TrainerProcess{}, err
	}
	config := filepath.Join(run.Root, presets.TrainingConfigKey)
	if err := os.WriteFile(config, rendered, 0o600); err != nil {
		return TrainerProcess{}, err
	}
	model, revision := job.Plan.Model, job.Plan.Revision
	if dir, ok := p.Models[job.Workspace.PresetName()]; ok {
		model, revision = dir, ""
	}
	env := []string{
		"PYTHONPATH=" + p.TrainerDir,
		// The trainer's output-root rule admits the run's directory in place of /mnt.
		"KAITOFLOW_OUTPUT_ROOT=" + run.Root,
		// Where the trainer writes its own account of a failure (out of memory, a bad dataset).
		"KAITOFLOW_TERMINATION_LOG=" + run.TerminationLog,
		"PYTHONUNBUFFERED=1", "TOKENIZERS_PARALLELISM=false",
	}
	if p.CPU {
		env = append(env, "CUDA_VISIBLE_DEVICES=")
	}
	return TrainerProcess{Command: tune.TrainerCommand(job, p.Interpreter, model, revision, config, run.Data), Env: env}, nil
}

// runDir holds a generation's runs: data, results, termination logs and trainer logs.
func (l *Trainer) runDir(ref events.Ref) string {
	return filepath.Join(l.Dir, ref.Namespace, ref.Name, strconv.FormatInt(ref.Generation, 10))
}

// MaxLog bounds an attempt's trainer log on disk; what comes after is dropped, and said so.
const MaxLog = 64 << 20

func logPath(dir string, attempt int) string {
	return filepath.Join(dir, fmt.Sprintf("trainer-%d.log", attempt))
}

// boundedWriter writes up to left bytes, then one line saying the rest was dropped; it never
// fails the trainer for its log.
type boundedWriter struct {
	mu   sync.Mutex
	w    io.Writer
	left int64
	cut  bool
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case int64(len(p)) <= b.left:
		n, _ := b.w.Write(p)
		b.left -= int64(n)
	case !b.cut:
		b.cut = true
		_, _ = b.w.Write(p[:b.left])
		b.left = 0
		_, _ = fmt.Fprintf(b.w, "\n[kaitoflow: the log reached %d bytes; the rest of this attempt's output is dropped]\n", MaxLog)
	}
	return len(p), nil
}

// Logs implements tune.Logs: an attempt's trainer output from its log file; with follow, until
// the attempt ends (a newer one, or the run done) or ctx does.
func (l *Trainer) Logs(ctx context.Context, ref events.Ref, attempt int, follow bool, w io.Writer) error {
	dir := l.runDir(ref)
	if attempt <= 0 {
		matches, _ := filepath.Glob(filepath.Join(dir, "trainer-*.log"))
		for _, m := range matches {
			var n int
			if _, err := fmt.Sscanf(filepath.Base(m), "trainer-%d.log", &n); err == nil {
				attempt = max(attempt, n)
			}
		}
	}
	f, err := os.Open(logPath(dir, attempt))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w for %s attempt %d", tune.ErrNoLogs, ref.Subject(), attempt)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	// The run that writes this log, if it still runs: a replaced or deleted run's trainer is still
	// writing until it has stopped (what it says on SIGTERM), so the follow waits for that run.
	run := l.writer(ref, attempt)
	const poll = 200 * time.Millisecond
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if !follow || l.ended(run) {
			// One more read: what was written between the copy and the check.
			_, err := io.Copy(w, f)
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
}

// writer is the run writing the attempt's log, nil when none is (done before this process
// started, or gone).
func (l *Trainer) writer(ref events.Ref, attempt int) *localRun {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.runs[localKey(ref)]
	if !ok || r.job.Ref.Generation != ref.Generation || r.job.AttemptOf() != attempt {
		return nil
	}
	return r
}

// ended reports whether run's trainer has stopped writing: its wrapper returned (done is set
// after job-run has waited for the trainer and its output).
func (l *Trainer) ended(run *localRun) bool {
	if run == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return run.done
}
