// Package local is the local deployer's model server: vLLM's OpenAI-compatible server run as a
// process per replica on this machine (its CPU build where there is no GPU), with runtime LoRA on,
// behind kaitoflow's real chat-proxy and adapter reconciler — what an inference pod runs, without
// the cluster. sim.Deployer provides the rest (revisions, replicas, scale to zero, the adapter set),
// with this in place of its simulated runtime.
package local

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/internal/vllmproc"
)

// VLLM starts vLLM for a replica with the arguments the Knative deployer gives the model
// container (knative.Deployer.Runtime: the plan's), changed only where this machine is not a GPU
// node: the model from a local directory when one is mapped, the port a free one on loopback, and
// on a CPU one process, fp32 or bf16, and a share of host memory for the KV cache.
type VLLM struct {
	// Python has vLLM installed (hack/ml-env.sh vllm: vLLM's CPU build from PyPI).
	Python string
	// Models maps preset names to local model directories (the same as the local trainer's).
	Models map[string]string
	// CPU runs vLLM's CPU build: one process, DType, and KVCacheShare of host memory.
	CPU bool
	// DType on a CPU: float32 (default) or bfloat16.
	DType string
	// KVCacheShare is --gpu-memory-utilization on a CPU, which vLLM reads as a share of host
	// memory (its default 0.9 would claim almost all of it); default 0.05.
	KVCacheShare float64
	// Dir holds each replica's log.
	Dir string
	// Runtime is the model container's arguments the Knative deployer would give d's replicas
	// (knative.Deployer.Runtime); the composition passes it in, so that this driver does not
	// link the Knative one.
	Runtime func(d serve.Deployment) ([]string, error)
	Log     *slog.Logger
}

// Name implements sim.ModelServer.
func (v *VLLM) Name() string { return "local" }

// Args are vLLM's arguments for d's replica on port: the Knative deployer's, adapted to this
// machine.
func (v *VLLM) Args(d serve.Deployment, port int) ([]string, error) {
	if v.Runtime == nil {
		return nil, errors.New("local deployer: no runtime arguments (VLLM.Runtime)")
	}
	rtArgs, err := v.Runtime(d)
	if err != nil {
		return nil, err
	}
	if len(rtArgs) == 0 {
		return nil, errors.New("a user pod template: the local deployer runs vLLM presets only")
	}
	args := slices.Clone(rtArgs)
	if dir, ok := v.Models[d.Workspace.PresetName()]; ok {
		args[0] = dir // the positional model
		args = drop(args, "--revision")
		// The plan sized the context for the preset's model; a local one may hold less.
		if most := maxPositions(dir); most > 0 {
			if n, err := strconv.Atoi(vllmproc.Value(args, "--max-model-len")); err == nil && n > most {
				args = set(args, "--max-model-len", strconv.Itoa(most))
			}
		}
	}
	args = set(args, "--host", "127.0.0.1")
	args = set(args, "--port", strconv.Itoa(port))
	if v.CPU {
		args = set(args, "--tensor-parallel-size", "1")
		args = set(args, "--dtype", cmp.Or(v.DType, "float32"))
		share := v.KVCacheShare
		if share <= 0 {
			share = 0.05
		}
		args = set(args, "--gpu-memory-utilization", strconv.FormatFloat(share, 'f', 2, 64))
	}
	return args, nil
}

// Env is the model server's environment: runtime LoRA on, as the Knative deployer sets it, and
// offline for a local model.
func (v *VLLM) Env(d serve.Deployment) []string {
	env := []string{"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"}
	if _, ok := v.Models[d.Workspace.PresetName()]; ok {
		env = append(env, "HF_HUB_OFFLINE=1")
	}
	return env
}

// Start implements sim.ModelServer.
func (v *VLLM) Start(d serve.Deployment, replica string) (*url.URL, <-chan struct{}, func(), error) {
	port, err := freePort()
	if err != nil {
		return nil, nil, nil, err
	}
	args, err := v.Args(d, port)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := os.MkdirAll(v.Dir, 0o700); err != nil {
		return nil, nil, nil, err
	}
	logPath := filepath.Join(v.Dir, replica+".log")
	p, err := vllmproc.Start(v.Python, args, v.Env(d), logPath)
	if err != nil {
		return nil, nil, nil, err
	}
	log := logctx.Or(v.Log).With("replica", replica)
	log.Info("local: vLLM starting", "url", p.URL, "log", logPath, "args", args)
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		if err := p.Ready(ctx); err != nil {
			if ctx.Err() == nil {
				log.Error("local: vLLM did not start", "err", err)
			}
			return
		}
		log.Info("local: vLLM ready", "url", p.URL)
		close(ready)
	}()
	u, _ := url.Parse(p.URL)
	return u, ready, func() { cancel(); p.Stop() }, nil
}

// maxPositions is a model directory's max_position_embeddings (0 when unknown).
func maxPositions(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return 0
	}
	var c struct {
		MaxPositions int `json:"max_position_embeddings"`
	}
	_ = json.Unmarshal(b, &c)
	return c.MaxPositions
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// set sets flag's value, appending the flag when args lack it.
func set(args []string, flag, v string) []string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		args[i+1] = v
		return args
	}
	return append(args, flag, v)
}

func drop(args []string, flag string) []string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return slices.Delete(args, i, i+2)
	}
	return args
}
