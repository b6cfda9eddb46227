package tune

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/kaitoflow/kaitoflow/events"
)

// Sim is the simulated trainer: no GPU, no model, no dataset download. After Delay it writes a
// small but well-formed PEFT adapter (adapter_config.json and adapter_model.safetensors with a
// valid header) whose bytes are derived from the job, so a rerun yields the same digests. Every
// file and log line says "sim".
type Sim struct {
	Dir   string
	Delay time.Duration
	Log   *slog.Logger

	mu      sync.Mutex
	started map[string]time.Time
}

// Name implements Trainer.
func (s *Sim) Name() string { return "sim" }

// Start implements Trainer.
func (s *Sim) Start(ctx context.Context, job Job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started == nil {
		s.started = map[string]time.Time{}
	}
	if _, ok := s.started[job.Name]; !ok {
		s.started[job.Name] = time.Now()
		s.log().InfoContext(ctx, "sim: tuning job started; nothing is trained", "job", job.Name, "nodes", job.Nodes)
	}
	return nil
}

// Wait implements Trainer. A job this process never saw (it restarted) starts over.
func (s *Sim) Wait(ctx context.Context, job Job) (Result, error) {
	if err := s.Start(ctx, job); err != nil {
		return Result{}, err
	}
	s.mu.Lock()
	remaining := s.Delay - time.Since(s.started[job.Name])
	s.mu.Unlock()
	if remaining > 0 {
		t := time.NewTimer(remaining)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
	}
	dir := filepath.Join(s.Dir, job.Ref.Namespace, job.Ref.Name, strconv.FormatInt(job.Ref.Generation, 10))
	files, err := WriteSimAdapter(dir, job)
	if err != nil {
		return Result{}, fmt.Errorf("sim: write adapter: %w", err)
	}
	s.mu.Lock()
	delete(s.started, job.Name)
	s.mu.Unlock()
	s.log().InfoContext(ctx, "sim: tuning job finished with a simulated adapter", "job", job.Name, "dir", dir)
	return Result{Location: dir, Files: files, Metrics: map[string]float64{"sim_train_loss": 1.234, "sim_epochs": 1}}, nil
}

func (s *Sim) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
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
