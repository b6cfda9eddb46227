package presets

import (
	"fmt"
	"math"
)

// The estimator works in bytes and reports GiB. Every term is an explicit formula of the model's
// architecture and the run's settings, not a per-model number, so a new preset, a different rank
// or a longer sequence is estimated without anyone measuring it first.
//
// Sources:
//   - [QLoRA] Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", 2023, §3: NF4 stores
//     4 bits per weight plus one fp32 absmax per 64-weight block (0.5 bit/param); double quantization
//     stores those constants in 8 bits with an fp32 constant per 256 blocks: 8/64 + 32/(64·256) =
//     0.127 bit/param. bitsandbytes quantizes nn.Linear layers only; embeddings and lm_head stay 16-bit.
//   - [Korthikanti] Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
//     Models", 2022, §4.1: activations per layer = s·b·h·(34 + 5·a·s/h) bytes at 16-bit; attention
//     takes 11·sbh + 5·a·s²·b, the MLP 19·sbh for a 4h-wide MLP. FlashAttention and PyTorch's
//     memory-efficient SDPA never materialise the s² scores, removing that term.
//   - [ZeRO] Rajbhandari et al., "ZeRO", 2020, §3.1: mixed-precision Adam keeps two fp32 moments
//     (8 bytes/param) besides the 16-bit weights and gradients.
//   - [vLLM] Kwon et al., "PagedAttention", 2023: the KV cache holds 2 (K and V) · layers · KV heads ·
//     head dim values per token.

const (
	gib = float64(1 << 30)

	bytes16 = 2.0
	// nf4DQBits is NF4 with double quantization, per [QLoRA] §3.
	nf4DQBits = 4 + 8.0/64 + 32.0/(64*256)
	// adapterBytes: LoRA weights and gradients in the compute dtype (2+2, as QLoRA's reference
	// trainer casts LoRA layers to bf16) and AdamW's two fp32 moments (8) [ZeRO].
	adapterBytes = 12.0
	// logitBytes: 16-bit logits, the fp32 copy the loss upcasts to, and its fp32 gradient.
	logitBytes = 2 + 4 + 4.0
	// cudaOverheadGiB per GPU: CUDA context, cuBLAS workspaces, NCCL buffers; measured at 0.8-1.3 GiB
	// on recent drivers, so 1.2 is a slightly conservative constant.
	cudaOverheadGiB = 1.2
	// fragmentation is the share of dynamic memory the caching allocator loses to fragmentation.
	fragmentation = 0.05
	// inferenceOverheadGiB per GPU: vLLM's profiled activation peak and CUDA graphs besides the
	// CUDA context.
	inferenceOverheadGiB = 2.0
)

// moduleShape returns the input and output width of a LoRA target module.
func (a Architecture) moduleShape(name string) (in, out int, err error) {
	h, hd, i := a.HiddenSize, a.HeadDim(), a.IntermediateSize
	q, kv := a.Heads*hd, a.KVHeads*hd
	switch name {
	case "q_proj":
		return h, q, nil
	case "k_proj", "v_proj":
		return h, kv, nil
	case "o_proj":
		return q, h, nil
	case "gate_proj", "up_proj":
		return h, i, nil
	case "down_proj":
		return i, h, nil
	case "qkv_proj", "query_key_value":
		return h, q + 2*kv, nil
	case "gate_up_proj":
		return h, 2 * i, nil
	case "dense":
		return q, h, nil
	case "dense_h_to_4h":
		return h, i, nil
	case "dense_4h_to_h":
		return i, h, nil
	}
	return 0, 0, fmt.Errorf("LoRA target %q is not a module of a %s model", name, a.Family)
}

// LoRAParams is the number of trainable parameters LoRA of rank r adds to the target modules:
// r·(in+out) per module per layer (A is r×in, B is out×r).
func (a Architecture) LoRAParams(targets []string, r int) (int64, error) {
	var per int64
	for _, t := range targets {
		in, out, err := a.moduleShape(t)
		if err != nil {
			return 0, err
		}
		per += int64(r) * int64(in+out)
	}
	return per * int64(a.Layers), nil
}

// EmbeddingParams counts the input embedding and the output head (once when they are tied).
func (a Architecture) EmbeddingParams() int64 {
	n := int64(a.Vocab) * int64(a.HiddenSize)
	if a.TiedEmbeddings {
		return n
	}
	return 2 * n
}

// KVBytesPerToken is the 16-bit KV cache one token occupies [vLLM].
func (a Architecture) KVBytesPerToken() int64 {
	return 2 * int64(a.Layers) * int64(a.KVHeads) * int64(a.HeadDim()) * 2
}

// TrainingInput describes a tuning run for the estimator.
type TrainingInput struct {
	Model                 *Model
	Method                string // lora or qlora
	LoRARank              int
	LoRATargets           []string
	BatchSize             int
	SeqLen                int
	GradientCheckpointing bool
	// FlashAttention: the attention kernel never materialises the s×s scores (FlashAttention-2 on
	// Ampere+, or PyTorch's memory-efficient SDPA, which also runs on V100 and T4).
	FlashAttention bool
	// GPUs the model is spread over (device_map "auto": layers split across the node's GPUs).
	GPUs int
}

// Estimate is a memory estimate, in GiB.
type Estimate struct {
	WeightsGiB     float64 `json:"weightsGiB"`
	AdapterGiB     float64 `json:"adapterGiB,omitempty"`
	ActivationsGiB float64 `json:"activationsGiB,omitempty"`
	LogitsGiB      float64 `json:"logitsGiB,omitempty"`
	KVCacheGiB     float64 `json:"kvCacheGiB,omitempty"`
	OverheadGiB    float64 `json:"overheadGiB"`
	TotalGiB       float64 `json:"totalGiB"`
	// PerGPUGiB is what the busiest GPU holds.
	PerGPUGiB     float64 `json:"perGPUGiB"`
	LoRAParams    int64   `json:"loraParams,omitempty"`
	GPUs          int     `json:"gpus"`
	Quantization  string  `json:"quantization"`
	ContextTokens int     `json:"contextTokens,omitempty"`
}

// EstimateTraining estimates the GPU memory of a LoRA or QLoRA run.
func EstimateTraining(in TrainingInput) (Estimate, error) {
	m := in.Model
	a := m.Architecture
	if in.BatchSize < 1 || in.SeqLen < 1 || in.LoRARank < 1 {
		return Estimate{}, fmt.Errorf("batch size, sequence length and LoRA rank must be positive")
	}
	gpus := max(in.GPUs, 1)
	e := Estimate{GPUs: gpus, Quantization: "none (16-bit)"}

	// Weights. QLoRA quantizes the linear layers to NF4+DQ; embeddings and lm_head stay 16-bit.
	emb := float64(a.EmbeddingParams())
	switch in.Method {
	case "qlora":
		e.WeightsGiB = ((float64(m.Parameters)-emb)*nf4DQBits/8 + emb*bytes16) / gib
		e.Quantization = "nf4 + double quantization"
	case "lora":
		e.WeightsGiB = float64(m.Parameters) * bytes16 / gib
	default:
		return Estimate{}, fmt.Errorf("method %q: want lora or qlora", in.Method)
	}

	targets := in.LoRATargets
	if len(targets) == 0 {
		targets = m.LoRATargets
	}
	lp, err := a.LoRAParams(targets, in.LoRARank)
	if err != nil {
		return Estimate{}, err
	}
	e.LoRAParams = lp
	e.AdapterGiB = float64(lp) * adapterBytes / gib

	// Activations [Korthikanti]: attention 11·sbh (+5·a·s²·b without a fused kernel), MLP 19·sbh
	// scaled by its width relative to 4h, and by 1.5 for gated MLPs (gate and up are both kept).
	s, b, h := float64(in.SeqLen), float64(in.BatchSize), float64(a.HiddenSize)
	mlp := 19 * float64(a.IntermediateSize) / (4 * h)
	if a.Family != "falcon" {
		mlp *= 1.5
	}
	layer := s * b * h * (11 + mlp)
	if !in.FlashAttention {
		layer += 5 * float64(a.Heads) * s * s * b
	}
	if in.GradientCheckpointing {
		// Only each layer's 16-bit input is kept; one layer is recomputed at a time in backward.
		e.ActivationsGiB = (float64(a.Layers)*s*b*h*bytes16 + layer) / gib
	} else {
		e.ActivationsGiB = float64(a.Layers) * layer / gib
	}
	e.LogitsGiB = s * b * float64(a.Vocab) * logitBytes / gib

	dynamic := e.WeightsGiB + e.AdapterGiB + e.ActivationsGiB + e.LogitsGiB
	e.OverheadGiB = cudaOverheadGiB*float64(gpus) + fragmentation*dynamic
	e.TotalGiB = dynamic + e.OverheadGiB
	// device_map "auto" splits layers evenly; the last GPU also holds the logits and the first the
	// embeddings, so the busiest GPU carries its share plus the logits.
	shared := e.WeightsGiB + e.AdapterGiB + e.ActivationsGiB
	e.PerGPUGiB = shared/float64(gpus) + e.LogitsGiB + cudaOverheadGiB + fragmentation*(shared/float64(gpus)+e.LogitsGiB)
	return round(e), nil
}

// InferenceInput describes an inference server for the estimator.
type InferenceInput struct {
	Model *Model
	// ContextTokens of KV cache to hold: at least one sequence of the max model length.
	ContextTokens int
	// GPUs in tensor parallel.
	GPUs int
}

// EstimateInference estimates a 16-bit inference server: weights, KV cache and runtime overhead.
func EstimateInference(in InferenceInput) Estimate {
	a := in.Model.Architecture
	gpus := max(in.GPUs, 1)
	e := Estimate{GPUs: gpus, Quantization: "none (16-bit)", ContextTokens: in.ContextTokens}
	e.WeightsGiB = float64(in.Model.Parameters) * bytes16 / gib
	e.KVCacheGiB = float64(a.KVBytesPerToken()) * float64(in.ContextTokens) / gib
	e.OverheadGiB = inferenceOverheadGiB * float64(gpus)
	e.TotalGiB = e.WeightsGiB + e.KVCacheGiB + e.OverheadGiB
	e.PerGPUGiB = (e.WeightsGiB+e.KVCacheGiB)/float64(gpus) + inferenceOverheadGiB
	return round(e)
}

// MaxContextThatFits is the longest KV cache (in tokens) that fits next to the weights when the
// server may use utilization of each GPU's memory, capped at the model's own maximum; 0 when even
// the weights do not fit.
func MaxContextThatFits(m *Model, sku *SKU, utilization float64) int {
	return min(KVCacheTokens(m, sku, utilization), m.MaxContext)
}

// KVCacheTokens is how many tokens of KV cache fit on sku's GPUs next to m's 16-bit weights and
// the runtime's overhead, at utilization of their memory: what a replica's running sequences share.
func KVCacheTokens(m *Model, sku *SKU, utilization float64) int {
	gpus := float64(sku.GPUs)
	free := utilization*sku.MemoryGiB*gpus - float64(m.Parameters)*bytes16/gib - inferenceOverheadGiB*gpus
	if free <= 0 {
		return 0
	}
	return int(free * gib / float64(m.Architecture.KVBytesPerToken()))
}

func round(e Estimate) Estimate {
	r := func(v float64) float64 { return math.Round(v*100) / 100 }
	e.WeightsGiB, e.AdapterGiB, e.ActivationsGiB, e.LogitsGiB = r(e.WeightsGiB), r(e.AdapterGiB), r(e.ActivationsGiB), r(e.LogitsGiB)
	e.KVCacheGiB, e.OverheadGiB, e.TotalGiB, e.PerGPUGiB = r(e.KVCacheGiB), r(e.OverheadGiB), r(e.TotalGiB), r(e.PerGPUGiB)
	return e
}
