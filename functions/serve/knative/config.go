package knative

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/presets"
)

// InferenceConfigKey is the key of Kaito's inference.config ConfigMap that holds the runtime's
// settings.
const InferenceConfigKey = "inference_config.yaml"

// inferenceConfig is Kaito's inference_config.yaml: vLLM's engine arguments by their flag names.
type inferenceConfig struct {
	VLLM map[string]any `json:"vllm"`
}

// parseInferenceConfig turns inference_config.yaml into vLLM flags, sorted by name so the Service
// is the same for the same config; a flag set to false comes back as its removal ("!--flag", see
// mergeArgs).
func parseInferenceConfig(doc string) ([]string, error) {
	var c inferenceConfig
	if err := yaml.UnmarshalStrict([]byte(doc), &c); err != nil {
		return nil, fmt.Errorf("%s: %w", InferenceConfigKey, err)
	}
	names := make([]string, 0, len(c.VLLM))
	for k := range c.VLLM {
		names = append(names, k)
	}
	sort.Strings(names)
	var args []string
	for _, k := range names {
		if strings.HasPrefix(k, "-") || strings.ContainsAny(k, " =") {
			return nil, fmt.Errorf("%s: vllm.%s: give the flag's name without dashes", InferenceConfigKey, k)
		}
		switch v := c.VLLM[k].(type) {
		case bool:
			if v {
				args = append(args, "--"+k)
			} else {
				args = append(args, "!--"+k) // removes the flag from the plan's arguments
			}
		case string:
			args = append(args, "--"+k, v)
		case float64:
			args = append(args, "--"+k, strconv.FormatFloat(v, 'f', -1, 64))
		default:
			return nil, fmt.Errorf("%s: vllm.%s: want a string, number or boolean", InferenceConfigKey, k)
		}
	}
	return args, nil
}

// mergeArgs returns base with every flag of over replacing the same flag in base (with its value,
// if it had one) and the rest of over appended; "!--flag" in over only removes the flag.
func mergeArgs(base, over []string) []string {
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

// withInferenceConfig applies the workspace's inference.config to the runtime's arguments.
func (k *Deployer) withInferenceConfig(ctx context.Context, ws *events.Workspace, rt Runtime) (Runtime, error) {
	in := ws.Inference
	if in == nil || in.Config == "" || len(rt.Args) == 0 {
		return rt, nil
	}
	if k.Configs == nil {
		return rt, events.Permanentf(events.ReasonInvalidWorkspace, "inference.config: ConfigMap %q cannot be read: no cluster", in.Config)
	}
	ns := ws.Namespace
	if ns == "" {
		ns = events.DefaultNamespace
	}
	data, err := k.Configs(ctx, ns, in.Config)
	if errors.Is(err, presets.ErrConfigMapNotFound) {
		return rt, events.Permanent(events.ReasonInvalidWorkspace, field.NotFound(field.NewPath("inference", "config"), ns+"/"+in.Config))
	}
	if err != nil {
		return rt, fmt.Errorf("inference.config: read ConfigMap %s/%s: %w", ns, in.Config, err)
	}
	doc, ok := data[InferenceConfigKey]
	if !ok {
		return rt, events.Permanentf(events.ReasonInvalidWorkspace, "inference.config: ConfigMap %s/%s has no %s key", ns, in.Config, InferenceConfigKey)
	}
	over, err := parseInferenceConfig(doc)
	if err != nil {
		return rt, events.Permanentf(events.ReasonInvalidWorkspace, "inference.config %s: %v", in.Config, err)
	}
	rt.Args = mergeArgs(slices.Clone(rt.Args), over)
	return rt, nil
}
