package presets

import (
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// TrainingConfig is Kaito's training_config.yaml: sections of keyword arguments the trainer hands
// to transformers and peft (ModelConfig → from_pretrained, QuantizationConfig → BitsAndBytesConfig,
// LoraConfig → peft.LoraConfig, TrainingArguments → transformers.TrainingArguments), plus
// DatasetConfig and DataCollator, which the trainer reads itself. Values are kept as given so a
// user's ConfigMap can use any argument those libraries accept.
type TrainingConfig map[string]map[string]any

// The sections Kaito defines; any other is refused rather than silently ignored.

// OutputRoot is where the trainer may write: the Job mounts its output volume there. The trainer
// contract says the same (TestContractTrainingConfig).
const OutputRoot = "/mnt"

// DefaultTrainingConfig is Kaito's default for method (its lora-params and qlora-params
// templates: r 8, alpha 8, dropout 0.0, nf4 with double quantization for qlora, results under
// /mnt), plus what kaitoflow's trainer needs to be explicit about, and two changes: Kaito's images
// carry the weights (local_files_only: true), kaitoflow's trainer downloads the preset's pinned
// revision; and 5% of the rows are held out (train_test_split is the share trained on) so every
// run reports eval_loss. The values are the trainer contract's, which the trainer reads too.
func DefaultTrainingConfig(method string) TrainingConfig {
	tc := Contract().TrainingConfig
	c := mustParse(tc.Defaults)
	if method == "qlora" {
		c = Merge(c, mustParse(tc.QLoRA))
	}
	return c
}

// mustParse parses a training config the binary embeds: one that does not parse is a build that
// must not run (TestDefaultTrainingConfigIsKaitos parses both).
func mustParse(doc []byte) TrainingConfig {
	c, err := ParseTrainingConfig(doc)
	if err != nil {
		panic(fmt.Sprintf("embedded trainer contract: training config: %v", err))
	}
	return c
}

// ParseTrainingConfig reads a training_config.yaml, with or without Kaito's top-level
// "training_config:" key. Numbers come back as float64 or int64 as JSON has them.
func ParseTrainingConfig(doc []byte) (TrainingConfig, error) {
	var raw map[string]json.RawMessage
	if err := yaml.Unmarshal(doc, &raw); err != nil {
		return nil, fmt.Errorf("training_config.yaml: %w", err)
	}
	if inner, ok := raw["training_config"]; ok && len(raw) == 1 {
		raw = nil
		if err := json.Unmarshal(inner, &raw); err != nil {
			return nil, fmt.Errorf("training_config: %w", err)
		}
	}
	c := TrainingConfig{}
	var errs field.ErrorList
	root := field.NewPath("training_config")
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		if sections := Contract().TrainingConfig.Sections; !slices.Contains(sections, k) {
			errs = append(errs, field.NotSupported(root.Child(k), k, sections))
			continue
		}
		var sec map[string]any
		if err := json.Unmarshal(raw[k], &sec); err != nil {
			errs = append(errs, field.Invalid(root.Child(k), string(raw[k]), "must be a mapping of arguments"))
			continue
		}
		c[k] = sec
	}
	if len(errs) > 0 {
		return nil, errs.ToAggregate()
	}
	return c, nil
}

// Merge returns base with over's arguments laid on top, section by section. Neither is modified.
func Merge(base, over TrainingConfig) TrainingConfig {
	out := TrainingConfig{}
	for k, sec := range base {
		out[k] = maps.Clone(sec)
	}
	for k, sec := range over {
		if out[k] == nil {
			out[k] = map[string]any{}
		}
		maps.Copy(out[k], sec)
	}
	return out
}

// Validate checks a merged configuration against method, with field paths.
func (c TrainingConfig) Validate(method string) field.ErrorList {
	var errs field.ErrorList
	root := field.NewPath("training_config")
	errs = append(errs, c.validateTrainingKeys(root)...)
	q := root.Child("QuantizationConfig")
	in4, in8 := truthy(c["QuantizationConfig"]["load_in_4bit"]), truthy(c["QuantizationConfig"]["load_in_8bit"])
	switch method {
	case "lora":
		if in4 {
			errs = append(errs, field.Forbidden(q.Child("load_in_4bit"), "lora trains a 16-bit base model; use method qlora for 4-bit"))
		}
		if in8 {
			errs = append(errs, field.Forbidden(q.Child("load_in_8bit"), "lora trains a 16-bit base model; use method qlora for a quantized one"))
		}
	case "qlora":
		if !in4 && !in8 {
			errs = append(errs, field.Required(q.Child("load_in_4bit"), "qlora needs a quantized base model (load_in_4bit: true)"))
		}
		if in4 && in8 {
			errs = append(errs, field.Invalid(q.Child("load_in_8bit"), true, "load_in_4bit and load_in_8bit are exclusive"))
		}
	}
	out, _ := c["TrainingArguments"]["output_dir"].(string)
	if out == "" {
		errs = append(errs, field.Required(root.Child("TrainingArguments", "output_dir"), "under "+OutputRoot))
	} else if clean := path.Clean(out); clean != OutputRoot && !strings.HasPrefix(clean, OutputRoot+"/") {
		errs = append(errs, field.Invalid(root.Child("TrainingArguments", "output_dir"), out,
			"must be under "+OutputRoot+", where the Job mounts its output volume"))
	}
	errs = append(errs, c.validateLimits(root)...)
	return errs
}

// validateLimits applies the contract's value rules (trainingConfig.limits, which the trainer
// applies too) to the arguments that are set, in the order of their names.
func (c TrainingConfig) validateLimits(root *field.Path) field.ErrorList {
	var errs field.ErrorList
	limits := Contract().TrainingConfig.Limits
	for _, name := range slices.Sorted(maps.Keys(limits)) {
		section, key, _ := strings.Cut(name, ".")
		if v, ok := c[section][key]; ok && !limits[name].Holds(v) {
			errs = append(errs, field.Invalid(root.Child(section, key), v, limits[name].Rule()))
		}
	}
	return errs
}

// Holds reports whether v keeps to the limit.
func (l Limit) Holds(v any) bool {
	switch l.Kind {
	case LimitInteger:
		n, ok := intValue(v)
		return ok && l.Min != nil && n >= *l.Min && (l.Max == nil || n <= *l.Max)
	case LimitFraction:
		f, ok := numberValue(v)
		return ok && f > 0 && f <= 1
	case LimitBool:
		_, ok := v.(bool)
		return ok
	}
	return false
}

// Rule is what a value breaking the limit is told it must be.
func (l Limit) Rule() string {
	switch {
	case l.Kind == LimitInteger && l.Min != nil && l.Max != nil:
		return fmt.Sprintf("must be an integer from %d to %d", *l.Min, *l.Max)
	case l.Kind == LimitInteger && l.Min != nil && *l.Min == 1:
		return "must be a positive integer"
	case l.Kind == LimitInteger && l.Min != nil:
		return fmt.Sprintf("must be an integer of at least %d", *l.Min)
	case l.Kind == LimitFraction && l.What != "":
		return "must be a number above 0 and at most 1 (" + l.What + ")"
	case l.Kind == LimitFraction:
		return "must be a number above 0 and at most 1"
	case l.Kind == LimitBool:
		return "must be true or false"
	}
	return "has a limit of unknown kind " + l.Kind
}

// Overrides extracts the settings the user fixed, which a plan must keep.
func (c TrainingConfig) Overrides() Overrides {
	var o Overrides
	if n, ok := intValue(c["TrainingArguments"]["per_device_train_batch_size"]); ok {
		o.BatchSize = &n
	}
	if n, ok := intValue(c["DatasetConfig"]["max_seq_length"]); ok {
		o.SeqLen = &n
	}
	if b, ok := c["TrainingArguments"]["gradient_checkpointing"].(bool); ok {
		o.GradientCheckpointing = &b
	}
	if n, ok := intValue(c["LoraConfig"]["r"]); ok {
		o.LoRARank = &n
	}
	switch t := c["LoraConfig"]["target_modules"].(type) {
	case string:
		o.LoRATargets = strings.Split(t, ",")
	case []any:
		for _, v := range t {
			if s, ok := v.(string); ok {
				o.LoRATargets = append(o.LoRATargets, s)
			}
		}
	}
	return o
}

// Apply writes a plan's choices into the configuration the trainer will read: the compute dtype
// (fp16 where the GPU has no bf16), batch size, sequence length, gradient checkpointing and the
// preset's LoRA targets when the user named none.
func (c TrainingConfig) Apply(p *TuningPlan) TrainingConfig {
	out := Merge(c, TrainingConfig{
		"ModelConfig": {"torch_dtype": p.DType},
		"TrainingArguments": {"per_device_train_batch_size": p.BatchSize, "gradient_checkpointing": p.GradientCheckpointing,
			"bf16": p.DType == "bfloat16", "fp16": p.DType == "float16"},
		"DatasetConfig": {"max_seq_length": p.SeqLen},
		"LoraConfig":    {"r": p.LoRARank},
	})
	if _, ok := out["LoraConfig"]["target_modules"]; !ok {
		out["LoraConfig"]["target_modules"] = p.LoRATargets
	}
	if q := out["QuantizationConfig"]; q != nil && truthy(q["load_in_4bit"]) {
		q["bnb_4bit_compute_dtype"] = p.DType
	}
	return out
}

// Render writes the configuration as Kaito's training_config.yaml.
func (c TrainingConfig) Render() ([]byte, error) {
	return yaml.Marshal(map[string]any{"training_config": c})
}

func truthy(v any) bool {
	b, ok := v.(bool)
	return ok && b
}

func numberValue(v any) (float64, bool) {
	switch n := v.(type) {
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}

func intValue(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case int64:
		return int(n), true
	case float64:
		if n == float64(int(n)) {
			return int(n), true
		}
	}
	return 0, false
}
