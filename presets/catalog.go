// Package presets knows the models kaitoflow tunes and serves and the GPUs it can rent for them,
// estimates how much GPU memory a tuning run or an inference server needs, and turns a workspace
// into a plan — which SKU, which precision, which batch and sequence length — before anything is
// provisioned. It also holds the Kaito-compatible training configuration and the inference runtime
// settings the presets point at, and (under trainer/) the trainer the tuning Job runs.
package presets

import (
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

//go:embed models.yaml
var modelsYAML []byte

//go:embed skus.yaml
var skusYAML []byte

// JobRunEntrypoint is job-run's binary in its own image (cmd/job-run): where ko puts a main
// package's binary (/ko-app/<last element of the import path>), as .ko.yaml builds it. Every
// tuning pod's init container copies it into the trainer's container.
const JobRunEntrypoint = "/ko-app/job-run"

// ProxyEntrypoint is chat-proxy's binary in its own image (cmd/chat-proxy), which every inference
// pod runs beside the model server.
const ProxyEntrypoint = "/ko-app/chat-proxy"

// InferenceImage is the model server the presets are served with: vLLM's OpenAI-compatible
// server, whose arguments VLLMArgs writes for this release. The trainer's image has no default:
// it is built from presets/trainer by hack/release.sh, into the user's registry.
const InferenceImage = "docker.io/vllm/vllm-openai:v0.33.0"

// Architecture is what the memory estimator needs to know of a transformer.
type Architecture struct {
	// Family decides how LoRA target names map to weight shapes: llama (q/k/v/o, gate/up/down),
	// phi3 (fused qkv_proj and gate_up_proj) or falcon (query_key_value, dense, dense_h_to_4h, dense_4h_to_h).
	Family           string `json:"family"`
	Layers           int    `json:"layers"`
	HiddenSize       int    `json:"hiddenSize"`
	IntermediateSize int    `json:"intermediateSize"`
	Heads            int    `json:"heads"`
	KVHeads          int    `json:"kvHeads"`
	Vocab            int    `json:"vocab"`
	TiedEmbeddings   bool   `json:"tiedEmbeddings"`
	// HeadDimension is the per-head width where the config states one that is not hidden/heads
	// (Qwen 3, Gemma); 0 means hidden/heads.
	HeadDimension int `json:"headDim,omitempty"`
}

// HeadDim is the per-head width.
func (a Architecture) HeadDim() int {
	if a.HeadDimension > 0 {
		return a.HeadDimension
	}
	return a.HiddenSize / a.Heads
}

// Model is one preset.
type Model struct {
	Name         string       `json:"name"`
	Aliases      []string     `json:"aliases,omitempty"`
	HuggingFace  string       `json:"huggingFace"`
	Revision     string       `json:"revision"`
	Parameters   int64        `json:"parameters"`
	Architecture Architecture `json:"architecture"`
	MaxContext   int          `json:"maxContext"`
	LoRATargets  []string     `json:"loraTargets"`
	Tuning       bool         `json:"tuning"`
	// Gated models need presetOptions.modelAccessSecret (Kaito refuses them without one).
	Gated   bool   `json:"gated,omitempty"`
	License string `json:"license"`
}

// SKU is one Azure GPU VM size.
type SKU struct {
	Name              string  `json:"name"`
	GPU               string  `json:"gpu"`
	GPUs              int     `json:"gpus"`
	MemoryGiB         float64 `json:"memoryGiB"`
	ComputeCapability string  `json:"computeCapability"`
	VCPU              int     `json:"vcpu"`
	RAMGiB            int     `json:"ramGiB"`
	LocalDiskGiB      int     `json:"localDiskGiB"`
	NVMe              bool    `json:"nvme"`
	PricePerHour      float64 `json:"pricePerHour"`
	// Family is the SKU's vCPU quota family (the Resource SKUs API's family, the Compute usage
	// API's name).
	Family string `json:"family"`
}

// BF16 reports whether the GPU computes in bfloat16: Ampere (8.0) and later. V100 (7.0) and T4
// (7.5) have no bf16 units, so training and serving there use fp16.
func (s SKU) BF16() bool {
	major, _, _ := strings.Cut(s.ComputeCapability, ".")
	n, err := strconv.Atoi(major)
	return err == nil && n >= 8
}

// FlashAttention reports whether FlashAttention-2 kernels run (Ampere and later). Elsewhere
// PyTorch's memory-efficient SDPA kernel still avoids materialising the attention matrix.
func (s SKU) FlashAttention() bool { return s.BF16() }

// Catalog is the set of presets and SKUs.
type Catalog struct {
	Models []Model `json:"models"`
	// Hub are Kaito's presets kept by name only: their architecture is read from the Hub when a
	// plan needs it (hub.go).
	Hub  []HubPreset `json:"hub,omitempty"`
	SKUs []SKU       `json:"skus"`
}

// ErrUnknown is wrapped by lookups of names the catalog does not have.
var ErrUnknown = errors.New("unknown")

// Default returns the catalog embedded in the binary. It is parsed once; callers must not modify it.
var Default = sync.OnceValues(func() (*Catalog, error) { return Parse(modelsYAML, skusYAML) })

// Parse reads a catalog from its model and SKU documents, strictly: a misspelt field is an error,
// not a zero that would make every estimate wrong.
func Parse(models, skus []byte) (*Catalog, error) {
	var c Catalog
	if err := strictYAML(models, &c); err != nil {
		return nil, fmt.Errorf("models: %w", err)
	}
	var s Catalog
	if err := strictYAML(skus, &s); err != nil {
		return nil, fmt.Errorf("skus: %w", err)
	}
	c.SKUs = s.SKUs
	return &c, c.check()
}

func strictYAML(doc []byte, v any) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

func (c *Catalog) check() error {
	var errs []error
	seen := map[string]bool{}
	for _, m := range c.Models {
		for _, n := range append([]string{m.Name}, m.Aliases...) {
			if seen[n] {
				errs = append(errs, fmt.Errorf("model name %q is used twice", n))
			}
			seen[n] = true
		}
		a := m.Architecture
		if m.Parameters <= 0 || a.Layers <= 0 || a.HiddenSize <= 0 || a.Heads <= 0 || a.KVHeads <= 0 || a.Vocab <= 0 ||
			a.IntermediateSize <= 0 || m.MaxContext <= 0 {
			errs = append(errs, fmt.Errorf("model %s: incomplete architecture", m.Name))
		}
		if (a.HeadDimension == 0 && a.HiddenSize%a.Heads != 0) || a.Heads%a.KVHeads != 0 {
			errs = append(errs, fmt.Errorf("model %s: hidden size, heads and KV heads do not divide", m.Name))
		}
		for _, t := range m.LoRATargets {
			if _, _, err := a.moduleShape(t); err != nil {
				errs = append(errs, fmt.Errorf("model %s: %w", m.Name, err))
			}
		}
	}
	for _, h := range c.Hub {
		if seen[h.Name] {
			errs = append(errs, fmt.Errorf("model name %q is used twice", h.Name))
		}
		seen[h.Name] = true
		if _, _, ok := ParseHubID(h.HuggingFace); !ok || len(h.Revision) != 40 {
			errs = append(errs, fmt.Errorf("hub preset %s: want a repository id and a pinned 40-character commit", h.Name))
		}
	}
	for _, s := range c.SKUs {
		if s.GPUs <= 0 || s.MemoryGiB <= 0 || s.PricePerHour <= 0 || s.VCPU <= 0 || s.Family == "" {
			errs = append(errs, fmt.Errorf("sku %s: incomplete", s.Name))
		}
	}
	return errors.Join(errs...)
}

// Model returns the preset called name (or one of its Kaito aliases).
func (c *Catalog) Model(name string) (*Model, error) {
	for i := range c.Models {
		m := &c.Models[i]
		if strings.EqualFold(m.Name, name) || slices.ContainsFunc(m.Aliases, func(a string) bool { return strings.EqualFold(a, name) }) {
			return m, nil
		}
	}
	return nil, fmt.Errorf("%w preset %q%s; known presets: %s", ErrUnknown, name, didYouMean(name, c.ModelNames()), strings.Join(c.ModelNames(), ", "))
}

// ModelNames lists the presets' names.
func (c *Catalog) ModelNames() []string {
	names := make([]string, len(c.Models))
	for i, m := range c.Models {
		names[i] = m.Name
	}
	return names
}

// SKU returns the VM size called name (case-insensitive; the "Standard_" prefix may be left out).
func (c *Catalog) SKU(name string) (*SKU, error) {
	for i := range c.SKUs {
		s := &c.SKUs[i]
		if strings.EqualFold(s.Name, name) || strings.EqualFold(strings.TrimPrefix(s.Name, "Standard_"), name) {
			return s, nil
		}
	}
	names := make([]string, len(c.SKUs))
	for i, s := range c.SKUs {
		names[i] = s.Name
	}
	return nil, fmt.Errorf("%w instance type %q: not a GPU SKU kaitoflow knows%s", ErrUnknown, name, didYouMean(name, names))
}

// Without is the catalog less the SKUs named: what the fit check may still choose from once those
// were ruled out (no quota for them). The models are shared, not copied.
func (c *Catalog) Without(names ...string) *Catalog {
	out := *c
	out.SKUs = slices.DeleteFunc(slices.Clone(c.SKUs), func(s SKU) bool { return slices.Contains(names, s.Name) })
	return &out
}

// SKUsByPrice returns the SKUs, cheapest first.
func (c *Catalog) SKUsByPrice() []SKU {
	s := slices.Clone(c.SKUs)
	slices.SortStableFunc(s, func(a, b SKU) int {
		switch {
		case a.PricePerHour < b.PricePerHour:
			return -1
		case a.PricePerHour > b.PricePerHour:
			return 1
		}
		return 0
	})
	return s
}
