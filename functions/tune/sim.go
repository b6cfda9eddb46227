package tune

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
)

// Publisher is what the sim trainer needs to announce that a run changed.
type Publisher interface {
	Publish(ctx context.Context, evs ...cloudevents.Event) error
}

// Sim is the simulated trainer: no GPU, no model, no dataset download. A run "trains" for Delay,
// then writes a small but well-formed PEFT adapter (adapter_config.json and
// adapter_model.safetensors with a valid header) whose bytes are derived from the job, so a rerun
// yields the same digests, and announces the change with kaitoflow.job.changed, as the Job watch
// does for real runs. Runs live in memory: a restarted process forgets them. Every file and log
// line says "sim".
type Sim struct {
	Dir       string
	Delay     time.Duration
	Publisher Publisher
	Log       *slog.Logger

	mu   sync.Mutex
	runs map[string]*simRun
}

type simRun struct {
	job      Job
	started  time.Time
	done     bool
	acked    bool
	progress *events.TuningProgressData
	result   Result
	err      error
}

// Name implements Trainer.
func (s *Sim) Name() string { return "sim" }

func simKey(ref events.Ref) string { return ref.Namespace + "/" + ref.Name }

// Start implements Trainer.
func (s *Sim) Start(ctx context.Context, job Job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runs == nil {
		s.runs = map[string]*simRun{}
	}
	if r, ok := s.runs[simKey(job.Ref)]; ok && r.job.Ref.Generation >= job.Ref.Generation {
		return nil
	}
	r := &simRun{job: job, started: time.Now().UTC()}
	s.runs[simKey(job.Ref)] = r
	s.log().InfoContext(ctx, "sim: tuning job started; nothing is trained", "job", job.Name, "nodes", job.Nodes)
	go s.finish(context.WithoutCancel(ctx), r)
	return nil
}

func (s *Sim) finish(ctx context.Context, r *simRun) {
	// Half way, the simulated trainer reports progress, as the real one does through the wrapper.
	time.Sleep(s.Delay / 2)
	s.mu.Lock()
	r.progress = &events.TuningProgressData{Step: 50, MaxSteps: 100, Loss: 1.234, TokensPerSecond: 1000, ETASeconds: (s.Delay / 2).Seconds()}
	s.mu.Unlock()
	s.announce(ctx, r, "progress")
	time.Sleep(s.Delay - s.Delay/2)
	dir := filepath.Join(s.Dir, r.job.Ref.Namespace, r.job.Ref.Name, strconv.FormatInt(r.job.Ref.Generation, 10))
	files, err := WriteSimAdapter(dir, r.job)
	s.mu.Lock()
	r.done, r.err = true, err
	r.result = Result{Location: dir, Files: files, Metrics: map[string]float64{"sim_train_loss": 1.234, "sim_epochs": 1}}
	s.mu.Unlock()
	s.log().InfoContext(ctx, "sim: tuning job finished with a simulated adapter", "job", r.job.Name, "dir", dir, "err", err)
	s.announce(ctx, r, "done")
}

// announce publishes kaitoflow.job.changed for the run, as the Job watch does for real runs.
func (s *Sim) announce(ctx context.Context, r *simRun, what string) {
	if s.Publisher == nil {
		return
	}
	e := cloudevents.NewEvent()
	e.SetID("sim-job/" + r.job.Name + "/" + what)
	e.SetSource("kaitoflow/sim-trainer")
	e.SetType(events.JobChanged)
	e.SetSubject(r.job.Ref.Subject())
	e.SetExtension(events.ExtGeneration, strconv.FormatInt(r.job.Ref.Generation, 10))
	if err := e.SetData(cloudevents.ApplicationJSON, events.JobChangedData{Job: r.job.Name}); err == nil {
		if err := s.Publisher.Publish(ctx, e); err != nil {
			s.log().WarnContext(ctx, "sim: publish job.changed; the next tick sees the run finished", "err", err)
		}
	}
}

// Status implements Trainer.
func (s *Sim) Status(_ context.Context, ref events.Ref) (*Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.runs[simKey(ref)]
	if !ok {
		return nil, nil
	}
	st := &Status{Job: r.job, Phase: Running, Node: firstOr(r.job.Nodes, "sim-node"), Started: r.started}
	if r.progress != nil {
		p := *r.progress
		st.Progress = &p
	}
	switch {
	case r.done && r.err != nil:
		st.Phase, st.Reason, st.Message = Failed, "TrainerFailed", "sim: "+r.err.Error()
	case r.done:
		st.Phase, st.Result = Succeeded, r.result
	}
	return st, nil
}

// List implements Trainer.
func (s *Sim) List(context.Context) ([]events.Ref, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var refs []events.Ref
	for _, r := range s.runs {
		if !r.acked {
			refs = append(refs, r.job.Ref)
		}
	}
	slices.SortFunc(refs, func(a, b events.Ref) int { return cmp.Compare(a.Subject(), b.Subject()) })
	return refs, nil
}

// Acknowledge implements Trainer.
func (s *Sim) Acknowledge(_ context.Context, ref events.Ref) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.runs[simKey(ref)]; ok && r.job.Ref.Generation == ref.Generation {
		r.acked = true
	}
	return nil
}

// Delete implements Trainer.
func (s *Sim) Delete(_ context.Context, ref events.Ref) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.runs, simKey(ref))
	return nil
}

func (s *Sim) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

func firstOr(xs []string, def string) string {
	if len(xs) > 0 {
		return xs[0]
	}
	return def
}

// Sim adapter shape: rank and width are tiny on purpose; the files are for the pipeline, not for
// a model.
const (
	simRank   = 8
	simHidden = 64
)

// WriteSimAdapter writes adapter_config.json and adapter_model.safetensors for job into dir and
// returns their sizes and digests. The content is a function of the job alone.
func WriteSimAdapter(dir string, job Job) ([]events.AdapterFile, error) {
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
	cfg, err := json.MarshalIndent(map[string]any{
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
	}, "", "  ")
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
