package presets

import (
	"slices"
	"strings"
	"testing"
)

func TestInferenceConfigArgs(t *testing.T) {
	base := []string{"m", "--dtype", "float16", "--max-model-len", "14425", "--gpu-memory-utilization", "0.90", "--enable-lora"}
	for _, tc := range []struct {
		name, doc string
		want      string
		ignored   string
		err       string
	}{
		// Kaito v0.11+'s default template (its chart's inference-params-template), as it is.
		{"Kaito's default template", "kv_cache_cpu_memory_utilization: 0.5   # default 0.5, 0 disables\nvllm:\n  cpu-offload-gb: 0\n  # gpu-memory-utilization: 0.9\n  # max-model-len: 2048\n",
			"m --dtype float16 --max-model-len 14425 --gpu-memory-utilization 0.90 --enable-lora --cpu-offload-gb 0", "kv_cache_cpu_memory_utilization", ""},
		// Kaito v0.6-v0.8's, with its context-length probe.
		{"Kaito's older template", "max_probe_steps: 6\nvllm:\n  cpu-offload-gb: 0\n  gpu-memory-utilization: 0.95\n  swap-space: 4\n  max-model-len: 4096\n",
			"m --dtype float16 --enable-lora --cpu-offload-gb 0 --gpu-memory-utilization 0.95 --max-model-len 4096 --swap-space 4", "max_probe_steps", ""},
		{"flags", "vllm:\n  enforce-eager: true\n  enable-lora: false\n", "m --dtype float16 --max-model-len 14425 --gpu-memory-utilization 0.90 --enforce-eager", "", ""},
		{"a string", "vllm:\n  quantization: awq\n", "m --dtype float16 --max-model-len 14425 --gpu-memory-utilization 0.90 --enable-lora --quantization awq", "", ""},
		{"dashes", "vllm:\n  --dtype: half\n", "", "", "without dashes"},
		{"a list", "vllm:\n  lora-modules: [a, b]\n", "", "", "vllm.lora-modules"},
		{"unknown section", "vllmm:\n  x: 1\n", "", "", `unknown field "vllmm"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseInferenceConfig(tc.doc)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("want %q, got %v", tc.err, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(MergeArgs(slices.Clone(base), c.Args), " "); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			if got := strings.Join(c.Ignored, ","); got != tc.ignored {
				t.Errorf("ignored %q, want %q", got, tc.ignored)
			}
		})
	}
}
