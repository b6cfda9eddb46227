package presets

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// InferenceConfigKey is the key of Kaito's inference.config ConfigMap that holds the runtime's
// settings.
const InferenceConfigKey = "inference_config.yaml"

// inferenceConfig is Kaito's inference_config.yaml: vLLM's engine arguments by their flag names
// under vllm, and the settings Kaito's own runtime wrapper reads at the top level.
type inferenceConfig struct {
	VLLM map[string]any `json:"vllm"`
	// Kaito's wrapper: LMCache's CPU KV-cache offload (v0.11+) and its context-length probe
	// (v0.6-v0.8). vLLM has no flag for either; kaitoflow accepts them and says it ignores them.
	KVCacheCPUMemoryUtilization *float64 `json:"kv_cache_cpu_memory_utilization,omitempty"`
	MaxProbeSteps               *int     `json:"max_probe_steps,omitempty"`
}

// InferenceConfig is a parsed inference_config.yaml.
type InferenceConfig struct {
	// Args are vLLM's flags, sorted by name so the Service is the same for the same config; a flag
	// set to false is its removal ("!--flag", see MergeArgs).
	Args []string
	// Ignored names the settings only Kaito's runtime reads.
	Ignored []string
}

// ParseInferenceConfig reads Kaito's inference_config.yaml as Kaito writes it (its default
// template included); any other key is refused, naming it.
func ParseInferenceConfig(doc string) (*InferenceConfig, error) {
	var c inferenceConfig
	if err := yaml.UnmarshalStrict([]byte(doc), &c); err != nil {
		return nil, fmt.Errorf("%s: %w", InferenceConfigKey, err)
	}
	out := &InferenceConfig{}
	if c.KVCacheCPUMemoryUtilization != nil {
		out.Ignored = append(out.Ignored, "kv_cache_cpu_memory_utilization")
	}
	if c.MaxProbeSteps != nil {
		out.Ignored = append(out.Ignored, "max_probe_steps")
	}
	for _, k := range slices.Sorted(maps.Keys(c.VLLM)) {
		if strings.HasPrefix(k, "-") || strings.ContainsAny(k, " =") {
			return nil, fmt.Errorf("%s: vllm.%s: give the flag's name without dashes", InferenceConfigKey, k)
		}
		switch v := c.VLLM[k].(type) {
		case bool:
			if v {
				out.Args = append(out.Args, "--"+k)
			} else {
				out.Args = append(out.Args, "!--"+k) // removes the flag from the plan's arguments
			}
		case string:
			out.Args = append(out.Args, "--"+k, v)
		case float64:
			out.Args = append(out.Args, "--"+k, strconv.FormatFloat(v, 'f', -1, 64))
		default:
			return nil, fmt.Errorf("%s: vllm.%s: want a string, number or boolean", InferenceConfigKey, k)
		}
	}
	return out, nil
}

// MergeArgs returns base with every flag of over replacing the same flag in base (with its value,
// if it had one) and the rest of over appended; "!--flag" in over only removes the flag.
func MergeArgs(base, over []string) []string {
	flags := map[string]bool{}
	for _, a := range over {
		if strings.HasPrefix(a, "--") {
			flags[a] = true
		}
		if f, ok := strings.CutPrefix(a, "!"); ok {
			flags[f] = true
		}
	}
	over = slices.DeleteFunc(slices.Clone(over), func(a string) bool { return strings.HasPrefix(a, "!") })
	var out []string
	for i := 0; i < len(base); i++ {
		if flags[base[i]] {
			if i+1 < len(base) && !strings.HasPrefix(base[i+1], "--") {
				i++ // drop its value too
			}
			continue
		}
		out = append(out, base[i])
	}
	return append(out, over...)
}
