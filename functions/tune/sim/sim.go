// Package sim is the tuning step's simulated trainer: the local driver's path, job-run included,
// with a trainer process that trains nothing and writes a well-formed adapter.
package sim

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/functions/tune/local"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

// Trainer is the simulated trainer: no GPU, no model. It goes through the same path as a real run —
// the local driver's: kaitoflow's job-run wrapper fetches the dataset (best effort: the sim reads
// none), runs a trainer process, uploads the adapter's layer to the output registry and writes the
// summary — but the trainer process is kaitoflow's own simulated one (TrainerMain): after Delay
// it writes a small well-formed PEFT adapter (adapter_config.json and adapter_model.safetensors
// with a valid header) whose bytes derive from the job, so a rerun yields the same digests,
// reporting progress half way. Every file and log line says "sim".
type Trainer struct {
	Dir       string
	Delay     time.Duration
	Publisher events.Publisher
	// Resolve maps tuning.output.image to where the layer is uploaded (the embedded registry);
	// nil keeps the adapter on disk and uploads nothing.
	Resolve func(image string) (name.Reference, error)
	// Trainer is the simulated trainer process's command; nil runs this binary with
	// TrainerEnv set (see TrainerMain).
	Trainer []string
	// Policy is the address policy job-run fetches datasets under.
	Policy netguard.AddressPolicy
	// Parallel bounds how many simulated trainer processes run at once, as a cluster's GPUs bound
	// real runs; runtime.NumCPU() when zero.
	Parallel int
	Log      *slog.Logger

	once  sync.Once
	local *local.Trainer
}

// runner is the local driver that runs the sim's trainer processes.
func (s *Trainer) runner() *local.Trainer {
	s.once.Do(func() {
		s.local = &local.Trainer{Dir: s.Dir, Publisher: s.Publisher, Resolve: s.Resolve, Policy: s.Policy, Parallel: s.Parallel, Log: s.Log,
			Process: s.process, Kind: "sim", BestEffortFetch: true,
			Started: "sim: tuning job started; nothing is trained", Finished: "sim: tuning job finished with a simulated adapter"}
	})
	return s.local
}

// process is the simulated trainer's command line: the job's shape in flags, for the OOM rule and
// the adapter it writes.
func (s *Trainer) process(job tune.Job, run local.RunDirs) (local.TrainerProcess, error) {
	trainer := s.Trainer
	if trainer == nil {
		self, err := os.Executable()
		if err != nil {
			return local.TrainerProcess{}, err
		}
		trainer = []string{self}
	}
	dtype, method, batch, seq := "", "", 0, 0
	if job.Plan != nil {
		dtype, batch, seq = job.Plan.DType, job.Plan.BatchSize, job.Plan.SeqLen
	}
	if t := job.Workspace.Tuning; t != nil {
		method = t.Method
	}
	return local.TrainerProcess{
		Command: append(append([]string{}, trainer...), "--results", run.Results, "--delay", s.Delay.String(),
			"--ref", job.Ref.Namespace+"/"+job.Ref.Name+"/"+strconv.FormatInt(job.Ref.Generation, 10),
			"--preset", job.Workspace.PresetName(), "--method", method, "--dtype", dtype,
			"--batch", strconv.Itoa(batch), "--seq", strconv.Itoa(seq), "--max-batch", job.Workspace.Annotations[AnnotationMaxBatch],
			"--termination-log", run.TerminationLog, "--input-dir", run.Data),
		Env: []string{TrainerEnv + "=1"},
	}, nil
}

// Name implements Trainer.
func (s *Trainer) Name() string { return "sim" }

// Start implements Trainer.
func (s *Trainer) Start(ctx context.Context, job tune.Job) error { return s.runner().Start(ctx, job) }

// Status implements Trainer.
func (s *Trainer) Status(ctx context.Context, ref events.Ref) (*tune.Status, error) {
	return s.runner().Status(ctx, ref)
}

// List implements Trainer.
func (s *Trainer) List(ctx context.Context) ([]events.Ref, error) { return s.runner().List(ctx) }

// Acknowledge implements Trainer.
func (s *Trainer) Acknowledge(ctx context.Context, ref events.Ref, upTo int) error {
	return s.runner().Acknowledge(ctx, ref, upTo)
}

// Logs implements tune.Logs: the simulated trainer's output, kept as a real run's is.
func (s *Trainer) Logs(ctx context.Context, ref events.Ref, attempt int, follow bool, w io.Writer) error {
	return s.runner().Logs(ctx, ref, attempt, follow, w)
}

// Delete implements Trainer.
func (s *Trainer) Delete(ctx context.Context, ref events.Ref) error {
	return s.runner().Delete(ctx, ref)
}

// TrainerEnv, set in a process's environment, makes TrainerMain take the process over.
const TrainerEnv = "KAITOFLOW_SIM_TRAINER"

// TrainerMain is the simulated trainer process: when TrainerEnv is set it writes the sim
// adapter and metrics.json into --results after --delay, printing a progress line half way, and
// exits; otherwise it returns. kaitoflow's main (and the TestMain of packages that run the sim
// trainer) call it first.
func TrainerMain() {
	if os.Getenv(TrainerEnv) == "" {
		return
	}
	os.Exit(simTrain(os.Args[1:]))
}

// AnnotationMaxBatch on a workspace says how large a batch the sim trainer's simulated GPU
// holds: a run planned with a larger one fails as a real one that runs out of GPU memory does
// (exit code 4, the trainer's JSON account), so the re-planning that follows can be watched.
const AnnotationMaxBatch = "kaitoflow.io/sim-max-batch"

// Sim trainer run shape: the steps of a run and how often it checkpoints.
const (
	simStepCount       = 100
	simCheckpointEvery = 20
)

func simTrain(args []string) int {
	flags := map[string]string{}
	for i := 0; i+1 < len(args); i += 2 {
		flags[strings.TrimPrefix(args[i], "--")] = args[i+1]
	}
	parts := strings.Split(flags["ref"], "/")
	results := flags["results"]
	if len(parts) != 3 || results == "" {
		fmt.Fprintln(os.Stderr, "sim trainer: want --results DIR --ref ns/name/generation")
		return 2
	}
	gen, _ := strconv.ParseInt(parts[2], 10, 64)
	job := tune.Job{Ref: events.Ref{Namespace: parts[0], Name: parts[1], Generation: gen}, Plan: &events.Plan{DType: flags["dtype"]}}
	job.Workspace.Tuning = &kaito.TuningSpec{Method: flags["method"], Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: flags["preset"]}}}
	batch, _ := strconv.Atoi(flags["batch"])
	seq, _ := strconv.Atoi(flags["seq"])
	if most, _ := strconv.Atoi(flags["max-batch"]); most > 0 && batch > most {
		// What the real trainer reports when CUDA runs out at the first step.
		b, _ := json.Marshal(events.TrainerFailure{
			Reason: tune.ReasonGPUOutOfMemory, Step: 0, BatchSize: batch, SeqLen: seq,
			Message: fmt.Sprintf("sim: out of GPU memory at step 0 with batch %d, sequence %d: the simulated GPU holds batch %d (%s)", batch, seq,
				most, AnnotationMaxBatch),
		})
		if tl := flags["termination-log"]; tl != "" {
			_ = os.WriteFile(tl, b, 0o644)
		}
		return 4
	}
	if err := simSteps(flags, results, job); err != nil {
		fmt.Fprintln(os.Stderr, "sim trainer:", err)
		return 1
	}
	rows := simRows(flags["input-dir"])
	if _, err := writeSimAdapter(results, job, rows); err != nil {
		fmt.Fprintln(os.Stderr, "sim trainer:", err)
		return 1
	}
	scores := simScores(rows, flags["compare-adapter"])
	if eval := flags["eval-data"]; eval != "" {
		// The workspace's eval set: the task scores claim its rows.
		scores[events.MetricTaskExamples] = min(simRows(eval), simTaskRows)
	}
	metrics, _ := json.Marshal(scores)
	if err := os.WriteFile(filepath.Join(results, "metrics.json"), metrics, 0o644); err != nil {
		return 1
	}
	fmt.Println("sim trainer: wrote a simulated adapter; nothing was trained")
	return 0
}

// simSteps runs the simulated steps, from a checkpoint when resumed, reporting progress and
// writing a checkpoint every simCheckpointEvery steps as the real trainer does.
func simSteps(flags map[string]string, results string, job tune.Job) error {
	delay, _ := time.ParseDuration(flags["delay"])
	// Resumed: the steps before the checkpoint's are done.
	from := 0
	if dir := flags["resume-from"]; dir != "" {
		var st struct {
			GlobalStep int `json:"global_step"`
		}
		b, err := os.ReadFile(filepath.Join(dir, "trainer_state.json"))
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err != nil {
			return fmt.Errorf("--resume-from: %w", err)
		}
		from = st.GlobalStep
		fmt.Printf("sim trainer: resuming at step %d of %d\n", from, simStepCount)
	}
	for step := from + 1; step <= simStepCount; step++ {
		time.Sleep(delay / simStepCount)
		fmt.Printf("%s{\"step\": %d, \"max_steps\": %d, \"loss\": %.3f, \"tokens_per_second\": 1000}\n",
			jobrun.ProgressPrefix, step, simStepCount, 2.0-float64(step)/simStepCount)
		if step%simCheckpointEvery == 0 && step < simStepCount {
			dir := filepath.Join(results, fmt.Sprintf("checkpoint-%d", step))
			if err := writeSimCheckpoint(dir, job, step); err != nil {
				return err
			}
			fmt.Printf("%s{\"step\": %d, \"path\": %q, \"eval_loss\": %g}\n", jobrun.CheckpointPrefix, step, dir,
				CheckpointEvalLoss(simRows(flags["input-dir"]), step))
		}
	}
	return nil
}

// simScores are the run's metrics by the sim's rule (EvalLoss), the serving adapter's too when
// compareDir holds a sim adapter.
func simScores(rows int, compareDir string) map[string]any {
	scores := map[string]any{"sim_train_loss": 1.234, "sim_epochs": 1, "steps": simStepCount, "sim_rows": rows}
	addScores(scores, "", rows)
	addScores(scores, events.BasePrefix, 0)
	if compareDir == "" {
		return scores
	}
	var cfg struct {
		Rows *int `json:"kaitoflow_sim_rows"`
	}
	if b, err := os.ReadFile(filepath.Join(compareDir, "adapter_config.json")); err == nil && json.Unmarshal(b, &cfg) == nil && cfg.Rows != nil {
		addScores(scores, events.ServingPrefix, *cfg.Rows)
	} else {
		fmt.Println("sim trainer: the adapter to compare with is not a sim adapter; not scored")
	}
	return scores
}

// addScores sets the scores of an adapter trained on rows (the base model: 0) under prefix.
func addScores(m map[string]any, prefix string, rows int) {
	m[prefix+events.MetricEvalLoss] = EvalLoss(rows)
	m[prefix+events.MetricTaskRougeL] = TaskScore(rows)
	m[prefix+events.MetricTaskExactMatch] = TaskScore(rows) / 2
	if prefix == "" {
		m[events.MetricTaskExamples] = min(rows, simTaskRows)
	}
}

// simTaskRows is how many rows the sim's task scores claim, as the trainer's default cap.
const simTaskRows = 32

// TaskScore is the sim trainer's task_rougeL of an adapter trained on rows distinct non-empty
// lines of data: rows/(rows+10) — the base model (0 rows) answers nothing right, more data answers
// better; its task_exact_match is half that. Simulated, by the same kind of rule as EvalLoss.
func TaskScore(rows int) float64 { return float64(rows) / float64(rows+10) }

// EvalLoss is the sim trainer's eval_loss of an adapter trained on rows distinct non-empty
// lines of data, on any held-out rows: 1 + 1/(1+rows) — the base model with no adapter (0 rows)
// scores 2, more data scores better. Simulated: a rule a test controls through the dataset it
// uploads, so a promotion gate can be seen to hold a worse adapter and promote a better one.
func EvalLoss(rows int) float64 { return 1 + 1/float64(1+rows) }

// CheckpointEvalLoss is the sim trainer's eval_loss of its checkpoint at step, trained on rows:
// EvalLoss(rows) plus half the share of the run still to go (a checkpoint at 20 of 100 steps scores
// 0.4 worse than the finished adapter). Simulated, by a rule a test can check.
func CheckpointEvalLoss(rows, step int) float64 {
	return EvalLoss(rows) + 0.5*float64(simStepCount-step)/simStepCount
}

// simRows counts the distinct non-empty lines of the files in dir (0 when there are none).
func simRows(dir string) int {
	seen := map[string]bool{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || e.IsDir() {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				seen[line] = true
			}
		}
	}
	return len(seen)
}

// writeSimCheckpoint writes a checkpoint as transformers lays one out (the adapter, optimizer
// state, trainer_state.json last), simulated.
func writeSimCheckpoint(dir string, job tune.Job, step int) error {
	if _, err := WriteAdapter(dir, job); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "optimizer.pt"), []byte(fmt.Sprintf("sim optimizer state at step %d\n", step)), 0o644); err != nil {
		return err
	}
	state, _ := json.Marshal(map[string]any{"global_step": step, "max_steps": simStepCount, "kaitoflow_trainer": "sim"})
	return os.WriteFile(filepath.Join(dir, "trainer_state.json"), state, 0o644)
}

// Sim adapter shape: rank and width are tiny on purpose; the files are for the pipeline, not for
// a model.
const (
	simRank   = 8
	simHidden = 64
)

// WriteAdapter writes adapter_config.json and adapter_model.safetensors for job into dir and
// returns their sizes and digests. The content is a function of the job alone.
func WriteAdapter(dir string, job tune.Job) ([]events.AdapterFile, error) {
	return writeSimAdapter(dir, job, -1)
}

// writeSimAdapter is WriteAdapter for a run on rows distinct rows of data (-1: not counted),
// which its config records (kaitoflow_sim_rows: what a later run scores it by).
func writeSimAdapter(dir string, job tune.Job, rows int) ([]events.AdapterFile, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	method, dtype := "", ""
	if job.Workspace.Tuning != nil {
		method = job.Workspace.Tuning.Method
	}
	if job.Plan != nil {
		dtype = job.Plan.DType
	}
	fields := map[string]any{
		"base_model_name_or_path": job.Workspace.PresetName(),
		"peft_type":               "LORA",
		"task_type":               "CAUSAL_LM",
		"r":                       simRank,
		"lora_alpha":              16,
		"lora_dropout":            0.05,
		"target_modules":          []string{"qkv_proj", "o_proj"},
		"bias":                    "none",
		"kaitoflow_method":        method,
		"kaitoflow_dtype":         dtype,
		"kaitoflow_trainer":       "sim",
	}
	if rows >= 0 {
		fields["kaitoflow_sim_rows"] = rows
	}
	cfg, err := json.MarshalIndent(fields, "", "  ")
	if err != nil {
		return nil, err
	}
	weights, err := simSafetensors(job.Ref)
	if err != nil {
		return nil, err
	}
	var files []events.AdapterFile
	for _, f := range []struct {
		name string
		data []byte
	}{{"adapter_config.json", cfg}, {"adapter_model.safetensors", weights}} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, 0o644); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(f.data)
		files = append(files, events.AdapterFile{Path: f.name, Size: int64(len(f.data)), Digest: "sha256:" + hex.EncodeToString(sum[:])})
	}
	return files, nil
}

// simSafetensors builds a safetensors file: an 8-byte little-endian header length, a JSON header
// naming each tensor's dtype, shape and byte range, then the raw little-endian data.
func simSafetensors(ref events.Ref) ([]byte, error) {
	seed := sha256.Sum256([]byte(ref.String()))
	rng := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:16])))
	type tensor struct {
		name  string
		shape []int
	}
	var tensors []tensor
	for _, mod := range []string{"qkv_proj", "o_proj"} {
		p := "base_model.model.model.layers.0.self_attn." + mod
		tensors = append(tensors, tensor{p + ".lora_A.weight", []int{simRank, simHidden}}, tensor{p + ".lora_B.weight", []int{simHidden, simRank}})
	}
	header := map[string]any{"__metadata__": map[string]string{"format": "pt", "kaitoflow.trainer": "sim"}}
	var data []byte
	for _, t := range tensors {
		n := t.shape[0] * t.shape[1]
		start := len(data)
		for range n {
			data = binary.LittleEndian.AppendUint32(data, math.Float32bits(float32(rng.NormFloat64()*0.01)))
		}
		header[t.name] = map[string]any{"dtype": "F32", "shape": t.shape, "data_offsets": []int{start, len(data)}}
	}
	h, err := json.Marshal(header)
	if err != nil {
		return nil, err
	}
	// Pad the header with spaces to 8 bytes, as the reference implementation does, so the data
	// that follows is aligned.
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	out = append(out, h...)
	return append(out, data...), nil
}
