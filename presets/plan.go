package presets

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ErrNotTunable is wrapped by a tuning plan of a preset that cannot be tuned.
var ErrNotTunable = errors.New("not tunable")

// headroom is the share of a GPU's memory a plan may fill: the driver, ECC and the estimator's own
// error need the rest.
const headroom = 0.95

// Defaults a plan starts from and may shrink, when the user did not set them, to make a run fit.
var (
	defaultBatchSizes = []int{4, 2, 1}
	defaultSeqLens    = []int{2048, 1024, 512}
)

// Overrides are the values the user set explicitly (in the training config); a plan never changes
// them, it only refuses when they cannot fit.
type Overrides struct {
	BatchSize             *int
	SeqLen                *int
	GradientCheckpointing *bool
	LoRARank              *int
	LoRATargets           []string
}

// TuningPlan says what a tuning run will use and why.
type TuningPlan struct {
	Preset                string   `json:"preset"`
	HuggingFace           string   `json:"huggingFace"`
	Revision              string   `json:"revision"`
	Method                string   `json:"method"`
	InstanceType          string   `json:"instanceType"`
	GPU                   string   `json:"gpu"`
	GPUs                  int      `json:"gpus"`
	GPUMemoryGiB          float64  `json:"gpuMemoryGiB"`
	DType                 string   `json:"dtype"`
	BatchSize             int      `json:"batchSize"`
	SeqLen                int      `json:"seqLen"`
	GradientCheckpointing bool     `json:"gradientCheckpointing"`
	LoRARank              int      `json:"loraRank"`
	LoRATargets           []string `json:"loraTargets"`
	// Processes is how many training processes the run has: one per GPU (data parallel, each
	// with the whole model) when the model fits one GPU, else one with the layers spread over
	// the node's GPUs (device_map "auto"), which is what Estimate assumes then.
	Processes int      `json:"processes"`
	Estimate  Estimate `json:"estimate"`
	Reasons   []string `json:"reasons"`
}

// FitError says a request cannot fit, with the numbers.
type FitError struct {
	Preset       string
	InstanceType string
	NeedsGiB     float64
	HasGiB       float64
	Detail       string
}

func (e *FitError) Error() string {
	if e.InstanceType == "" {
		return fmt.Sprintf("%s does not fit any known GPU SKU: %s", e.Preset, e.Detail)
	}
	return fmt.Sprintf("%s needs ~%.1f GiB per GPU, %s has %.0f GiB (%s)", e.Preset, e.NeedsGiB, e.InstanceType, e.HasGiB, e.Detail)
}

// PlanTuning picks the settings of a tuning run: the SKU (the cheapest that fits when
// instanceType is empty), the compute dtype the GPU supports, and the largest default batch and
// sequence length that fit. It returns a *FitError when nothing fits.
func (c *Catalog) PlanTuning(preset, method, instanceType string, o Overrides) (*TuningPlan, error) {
	m, err := c.Model(preset)
	if err != nil {
		return nil, err
	}
	return c.PlanTuningFor(m, method, instanceType, o)
}

// tuningPlan is the plan for a SKU whose memory holds estimate e: one process with the model
// split over the GPUs, or one process per GPU (data parallel, faster) where every GPU holds the
// whole model.
func tuningPlan(m *Model, sku SKU, method string, rank int, targets []string, batch, seq int, ckpt bool, e Estimate) (*TuningPlan, error) {
	p := &TuningPlan{
		Preset: m.Name, HuggingFace: m.HuggingFace, Revision: m.Revision, Method: method,
		InstanceType: sku.Name, GPU: sku.GPU, GPUs: sku.GPUs, GPUMemoryGiB: sku.MemoryGiB,
		DType: dtype(sku), BatchSize: batch, SeqLen: seq, GradientCheckpointing: ckpt,
		LoRARank: rank, LoRATargets: targets, Processes: 1, Estimate: e,
	}
	if sku.GPUs <= 1 {
		return p, nil
	}
	whole, err := EstimateTraining(TrainingInput{
		Model: m, Method: method, LoRARank: rank, LoRATargets: targets, BatchSize: batch, SeqLen: seq,
		GradientCheckpointing: ckpt, FlashAttention: true, GPUs: 1,
	})
	if err != nil {
		return nil, err
	}
	if whole.PerGPUGiB <= sku.MemoryGiB*headroom {
		p.Processes, p.Estimate = sku.GPUs, whole
	}
	return p, nil
}

// PlanTuningFor is PlanTuning for a model that need not be in the catalog (one read from the Hub).
func (c *Catalog) PlanTuningFor(m *Model, method, instanceType string, o Overrides) (*TuningPlan, error) {
	if !m.Tuning {
		return nil, fmt.Errorf("%w: preset %s cannot be tuned (as in Kaito); tunable presets: %s", ErrNotTunable, m.Name, strings.Join(c.TunableNames(), ", "))
	}
	if method != "lora" && method != "qlora" {
		return nil, fmt.Errorf("method %q: want lora or qlora", method)
	}
	candidates, err := c.candidates(instanceType)
	if err != nil {
		return nil, err
	}
	rank, ckpt := valueOr(o.LoRARank, 8), valueOr(o.GradientCheckpointing, true)
	targets := o.LoRATargets
	if len(targets) == 0 {
		targets = m.LoRATargets
	}
	seqs := fixedOr(o.SeqLen, capAt(defaultSeqLens, m.MaxContext))
	batches := fixedOr(o.BatchSize, defaultBatchSizes)

	var smallest *Estimate
	for _, sku := range candidates {
		for _, s := range seqs {
			for _, b := range batches {
				e, err := EstimateTraining(TrainingInput{
					Model: m, Method: method, LoRARank: rank, LoRATargets: targets, BatchSize: b, SeqLen: s,
					GradientCheckpointing: ckpt, FlashAttention: true, GPUs: sku.GPUs,
				})
				if err != nil {
					return nil, err
				}
				if smallest == nil || e.PerGPUGiB < smallest.PerGPUGiB {
					smallest = &e
				}
				if e.PerGPUGiB > sku.MemoryGiB*headroom {
					continue
				}
				p, err := tuningPlan(m, sku, method, rank, targets, b, s, ckpt, e)
				if err != nil {
					return nil, err
				}
				p.explain(m, sku, instanceType == "", seqs[0], batches[0])
				return p, nil
			}
		}
	}
	last := candidates[len(candidates)-1]
	fe := &FitError{Preset: m.Name, NeedsGiB: smallest.PerGPUGiB, HasGiB: last.MemoryGiB,
		Detail: fmt.Sprintf("%s at batch %d, sequence %d, the smallest settings tried", method, batches[len(batches)-1], seqs[len(seqs)-1])}
	if instanceType != "" {
		fe.InstanceType = last.Name
		if method == "lora" {
			fe.Detail += "; qlora needs about a quarter of the weight memory"
		}
	}
	return nil, fe
}

func (p *TuningPlan) explain(m *Model, sku SKU, chosen bool, seq0, batch0 int) {
	if chosen {
		p.Reasons = append(p.Reasons, fmt.Sprintf("no instanceType given: %s is the cheapest SKU where it fits (~$%.2f/h, %d× %s %.0f GiB)", sku.Name,
			sku.PricePerHour, sku.GPUs, sku.GPU, sku.MemoryGiB))
	}
	if sku.BF16() {
		p.Reasons = append(p.Reasons, fmt.Sprintf("%s (compute capability %s) has bf16: computing in bfloat16", sku.GPU, sku.ComputeCapability))
	} else {
		p.Reasons = append(p.Reasons, fmt.Sprintf("%s (compute capability %s) has no bf16: computing in float16", sku.GPU, sku.ComputeCapability))
	}
	if p.Method == "qlora" {
		p.Reasons = append(p.Reasons, fmt.Sprintf("qlora: base weights in NF4 with double quantization, %.2f GiB instead of %.2f GiB in 16-bit",
			p.Estimate.WeightsGiB, float64(m.Parameters)*bytes16/gib))
	}
	switch {
	case p.Processes > 1:
		p.Reasons = append(p.Reasons, fmt.Sprintf("data parallel: the whole model fits one GPU, so %d training processes, one per GPU", p.Processes))
	case sku.GPUs > 1:
		p.Reasons = append(p.Reasons, fmt.Sprintf("model parallel: the model does not fit one GPU, so one training process with its layers spread "+
			"over the %d GPUs", sku.GPUs))
	}
	if p.SeqLen < seq0 || p.BatchSize < batch0 {
		p.Reasons = append(p.Reasons, fmt.Sprintf("shrunk the defaults (batch %d, sequence %d) to batch %d, sequence %d to fit", batch0, seq0,
			p.BatchSize, p.SeqLen))
	}
	p.Reasons = append(p.Reasons, fmt.Sprintf("needs ~%.1f GiB per GPU of %.0f GiB (%.0f%%): weights %.2f, adapter+optimizer %.2f, activations "+
		"%.2f, logits %.2f, overhead %.2f",
		p.Estimate.PerGPUGiB, sku.MemoryGiB, 100*p.Estimate.PerGPUGiB/sku.MemoryGiB,
		p.Estimate.WeightsGiB, p.Estimate.AdapterGiB, p.Estimate.ActivationsGiB, p.Estimate.LogitsGiB, p.Estimate.OverheadGiB))
}

// InferencePlan says how a preset will be served and why.
type InferencePlan struct {
	Preset               string  `json:"preset"`
	HuggingFace          string  `json:"huggingFace"`
	Revision             string  `json:"revision"`
	InstanceType         string  `json:"instanceType"`
	GPUs                 int     `json:"gpus"`
	DType                string  `json:"dtype"`
	MaxModelLen          int     `json:"maxModelLen"`
	GPUMemoryUtilization float64 `json:"gpuMemoryUtilization"`
	EnableLoRA           bool    `json:"enableLoRA"`
	MaxLoRARank          int     `json:"maxLoRARank,omitempty"`
	MaxLoRAs             int     `json:"maxLoRAs,omitempty"`
	// MaxNumSeqs is how many sequences a replica runs at once (vLLM's --max-num-seqs): as many of
	// BatchSequenceTokens as its KV cache holds, at most vLLM's default. The serving Service's
	// concurrency is sized by it (a hard limit per replica, and the autoscaler's target below it).
	MaxNumSeqs int      `json:"maxNumSeqs,omitempty"`
	Estimate   Estimate `json:"estimate"`
	Reasons    []string `json:"reasons"`
}

// gpuMemoryUtilization is vLLM's own default share of GPU memory.
const gpuMemoryUtilization = 0.9

// BatchSequenceTokens is the length of a request (prompt and answer) a replica's batch is sized
// for: a chat turn with some context, or the model's whole context when that is shorter.
// MaxNumSeqsLimit is vLLM's default --max-num-seqs, which more KV cache does not raise.
const (
	BatchSequenceTokens = 2048
	MaxNumSeqsLimit     = 256
)

// maxNumSeqs is how many sequences of BatchSequenceTokens (or maxModelLen, if shorter) fit in
// kvTokens of KV cache at once: at least 1, at most MaxNumSeqsLimit.
func maxNumSeqs(kvTokens, maxModelLen int) int {
	return min(max(kvTokens/max(min(maxModelLen, BatchSequenceTokens), 1), 1), MaxNumSeqsLimit)
}

// vLLM accepts these LoRA ranks only.
var vllmLoRARanks = []int{8, 16, 32, 64, 128, 256}

// PlanInference picks how to serve preset: the SKU (cheapest where at least a useful context fits,
// when instanceType is empty), the dtype, tensor parallelism over the node's GPUs, and the longest
// max model length the KV cache allows.
func (c *Catalog) PlanInference(preset, instanceType string, adapters, loraRank int) (*InferencePlan, error) {
	m, err := c.Model(preset)
	if err != nil {
		return nil, err
	}
	return c.PlanInferenceFor(m, instanceType, adapters, loraRank)
}

// PlanInferenceFor is PlanInference for a model that need not be in the catalog (one read from
// the Hub).
func (c *Catalog) PlanInferenceFor(m *Model, instanceType string, adapters, loraRank int) (*InferencePlan, error) {
	candidates, err := c.candidates(instanceType)
	if err != nil {
		return nil, err
	}
	minCtx := min(m.MaxContext, 2048)
	var best int
	for _, sku := range candidates {
		n := MaxContextThatFits(m, &sku, gpuMemoryUtilization)
		best = max(best, n)
		if n < minCtx {
			continue
		}
		p := &InferencePlan{
			Preset: m.Name, HuggingFace: m.HuggingFace, Revision: m.Revision, InstanceType: sku.Name, GPUs: sku.GPUs,
			DType: dtype(sku), MaxModelLen: n, GPUMemoryUtilization: gpuMemoryUtilization,
			Estimate: EstimateInference(InferenceInput{Model: m, ContextTokens: n, GPUs: sku.GPUs}),
		}
		if instanceType == "" {
			p.Reasons = append(p.Reasons, fmt.Sprintf("no instanceType given: %s is the cheapest SKU that serves at least %d tokens of context",
				sku.Name, minCtx))
		}
		if !sku.BF16() {
			p.Reasons = append(p.Reasons, fmt.Sprintf("%s has no bf16: serving in float16", sku.GPU))
		}
		if n < m.MaxContext {
			p.Reasons = append(p.Reasons,
				fmt.Sprintf("max model length %d of the model's %d: the KV cache (%d KiB/token) must fit next to %.1f GiB of weights", n,
					m.MaxContext, m.Architecture.KVBytesPerToken()>>10, p.Estimate.WeightsGiB))
		}
		kv := KVCacheTokens(m, &sku, gpuMemoryUtilization)
		p.MaxNumSeqs = maxNumSeqs(kv, n)
		p.Reasons = append(p.Reasons, fmt.Sprintf("a replica runs %d sequences at once: its KV cache holds %d tokens, %d sequences of %d",
			p.MaxNumSeqs, kv, kv/max(min(n, BatchSequenceTokens), 1), min(n, BatchSequenceTokens)))
		if adapters > 0 {
			// One more LoRA slot than adapters: the next generation's adapter is loaded and
			// answers beside the one serving before the route moves to it.
			p.EnableLoRA, p.MaxLoRAs = true, adapters+1
			i, _ := slices.BinarySearch(vllmLoRARanks, max(loraRank, 8))
			p.MaxLoRARank = vllmLoRARanks[min(i, len(vllmLoRARanks)-1)]
		}
		return p, nil
	}
	last := candidates[len(candidates)-1]
	fe := &FitError{Preset: m.Name,
		NeedsGiB: EstimateInference(InferenceInput{Model: m, ContextTokens: minCtx, GPUs: last.GPUs}).PerGPUGiB, HasGiB: last.MemoryGiB,
		Detail: fmt.Sprintf("serving %d tokens of context in 16-bit; at most %d fit", minCtx, best)}
	if instanceType != "" {
		fe.InstanceType = last.Name
	}
	return nil, fe
}

// VLLMArgs are the arguments of `vllm serve` (the entrypoint of the vllm/vllm-openai image) for
// the plan, checked against vLLM v0.33.0's parser: the model is the positional argument there
// (--model is deprecated and loses to it), and --max-lora-rank accepts only vLLM's MaxLoRARanks
// (vllmLoRARanks).
func (p *InferencePlan) VLLMArgs() []string {
	args := []string{
		p.HuggingFace, "--revision", p.Revision, "--served-model-name", p.Preset,
		"--dtype", p.DType, "--max-model-len", strconv.Itoa(p.MaxModelLen),
		"--gpu-memory-utilization", strconv.FormatFloat(p.GPUMemoryUtilization, 'f', 2, 64),
		"--tensor-parallel-size", strconv.Itoa(p.GPUs),
	}
	if p.MaxNumSeqs > 0 {
		args = append(args, "--max-num-seqs", strconv.Itoa(p.MaxNumSeqs))
	}
	if p.EnableLoRA {
		args = append(args, "--enable-lora", "--max-lora-rank", strconv.Itoa(p.MaxLoRARank), "--max-loras", strconv.Itoa(p.MaxLoRAs))
	}
	return args
}

func (c *Catalog) candidates(instanceType string) ([]SKU, error) {
	if instanceType == "" {
		return c.SKUsByPrice(), nil
	}
	s, err := c.SKU(instanceType)
	if err != nil {
		return nil, err
	}
	return []SKU{*s}, nil
}

func dtype(s SKU) string {
	if s.BF16() {
		return "bfloat16"
	}
	return "float16"
}

func fixedOr(v *int, defaults []int) []int {
	if v != nil {
		return []int{*v}
	}
	return defaults
}

// capAt drops values above limit, keeping limit itself when everything is above it.
func capAt(values []int, limit int) []int {
	var out []int
	for _, v := range values {
		if v <= limit {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return []int{limit}
	}
	return out
}

// IsFitError reports whether err is a FitError.
func IsFitError(err error) bool {
	var fe *FitError
	return errors.As(err, &fe)
}

// valueOr is *p, or def when the user set nothing.
func valueOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
