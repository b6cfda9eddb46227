package presets

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestDefaultTrainingConfigIsKaitos(t *testing.T) {
	q := DefaultTrainingConfig("qlora")
	// Numbers read as JSON's, float64, like a workspace's own training config.
	if q["LoraConfig"]["r"] != 8.0 || q["LoraConfig"]["lora_alpha"] != 8.0 || q["LoraConfig"]["lora_dropout"] != 0.0 {
		t.Errorf("lora defaults %v", q["LoraConfig"])
	}
	if q["QuantizationConfig"]["bnb_4bit_quant_type"] != "nf4" || q["QuantizationConfig"]["bnb_4bit_use_double_quant"] != true {
		t.Errorf("qlora quantization %v", q["QuantizationConfig"])
	}
	if _, ok := DefaultTrainingConfig("lora")["QuantizationConfig"]; ok {
		t.Error("lora must not quantize")
	}
	for _, m := range []string{"lora", "qlora"} {
		if errs := DefaultTrainingConfig(m).Validate(m); len(errs) > 0 {
			t.Errorf("%s defaults invalid: %v", m, errs)
		}
	}
}

func TestTrainingConfigValidation(t *testing.T) {
	tests := []struct {
		name, method, user, wantField string
	}{
		{"lora with 4-bit", "lora", "QuantizationConfig: {load_in_4bit: true}", "training_config.QuantizationConfig.load_in_4bit"},
		{"lora with 8-bit", "lora", "QuantizationConfig: {load_in_8bit: true}", "training_config.QuantizationConfig.load_in_8bit"},
		{"qlora without quantization", "qlora", "QuantizationConfig: {load_in_4bit: false}", "training_config.QuantizationConfig.load_in_4bit"},
		{"output outside /mnt", "qlora", "TrainingArguments: {output_dir: /tmp/out}", "training_config.TrainingArguments.output_dir"},
		{"output escaping /mnt", "lora", "TrainingArguments: {output_dir: /mnt/../etc}", "training_config.TrainingArguments.output_dir"},
		{"relative output", "lora", "TrainingArguments: {output_dir: results}", "training_config.TrainingArguments.output_dir"},
		{"zero batch", "lora", "TrainingArguments: {per_device_train_batch_size: 0}", "training_config.TrainingArguments.per_device_train_batch_size"},
		{"rank too high", "lora", "LoraConfig: {r: 1024}", "training_config.LoraConfig.r"},
		{"fractional sequence", "lora", "DatasetConfig: {max_seq_length: 10.5}", "training_config.DatasetConfig.max_seq_length"},
		{"nothing to train on", "lora", "DatasetConfig: {train_test_split: 0}", "training_config.DatasetConfig.train_test_split"},
		{"split above one", "lora", "DatasetConfig: {train_test_split: 1.5}", "training_config.DatasetConfig.train_test_split"},
		{"split as text", "lora", "DatasetConfig: {train_test_split: \"0.9\"}", "training_config.DatasetConfig.train_test_split"},
		{"remote code", "lora", "ModelConfig: {trust_remote_code: true}", "training_config.ModelConfig.trust_remote_code"},
		{"hub push", "lora", "TrainingArguments: {push_to_hub: true}", "training_config.TrainingArguments.push_to_hub"},
		{"hub token", "lora", "TrainingArguments: {hub_token: hf_x}", "training_config.TrainingArguments.hub_token"},
		{"report to a service", "lora", "TrainingArguments: {report_to: wandb}", "training_config.TrainingArguments.report_to"},
		{"report to a list", "lora", "TrainingArguments: {report_to: [none, mlflow]}", "training_config.TrainingArguments.report_to"},
		{"logging dir", "lora", "TrainingArguments: {logging_dir: /var/log}", "training_config.TrainingArguments.logging_dir"},
		{"deepspeed config path", "lora", "TrainingArguments: {deepspeed: /etc/ds.json}", "training_config.TrainingArguments.deepspeed"},
		{"model revision", "lora", "ModelConfig: {revision: main}", "training_config.ModelConfig.revision"},
		{"train_on_prompt as text", "lora", "DatasetConfig: {train_on_prompt: \"yes\"}", "training_config.DatasetConfig.train_on_prompt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			user, err := ParseTrainingConfig([]byte("training_config:\n  " + strings.ReplaceAll(tc.user, "\n", "\n  ")))
			if err != nil {
				t.Fatal(err)
			}
			errs := Merge(DefaultTrainingConfig(tc.method), user).Validate(tc.method)
			for _, e := range errs {
				if e.Field == tc.wantField {
					return
				}
			}
			t.Errorf("want an error on %s, got %v", tc.wantField, errs)
		})
	}
}

// limitCases are, for a limit of the contract, values just outside its bounds (and of the wrong
// type, or null), which must be refused, and values at them, which must be accepted. Numbers are
// float64, as a workspace's training config has them.
func limitCases(t *testing.T, l Limit) (refused, accepted []any) {
	switch l.Kind {
	case LimitInteger:
		lo := float64(*l.Min)
		refused, accepted = []any{lo - 1, lo + 0.5, fmt.Sprint(*l.Min), true, nil}, []any{lo}
		if l.Max != nil {
			hi := float64(*l.Max)
			refused, accepted = append(refused, hi+1), append(accepted, hi)
		}
	case LimitFraction:
		refused = []any{0.0, math.Nextafter(1, 2), -0.5, "0.5", true, nil}
		accepted = []any{1.0, math.Nextafter(0, 1), 0.5}
	case LimitBool:
		refused, accepted = []any{"true", 1.0, nil}, []any{true, false}
	default:
		t.Fatalf("limit of unknown kind %q", l.Kind)
	}
	return refused, accepted
}

// Every limit the contract sets (the trainer applies the same ones) is what Validate enforces:
// a value just outside is refused naming the field and the rule, one at the bound is accepted.
func TestTrainingConfigLimits(t *testing.T) {
	limits := Contract().TrainingConfig.Limits
	if len(limits) == 0 {
		t.Fatal("the contract sets no limits")
	}
	for _, name := range slices.Sorted(maps.Keys(limits)) {
		l := limits[name]
		section, key, _ := strings.Cut(name, ".")
		want := "training_config." + name
		refused, accepted := limitCases(t, l)
		for _, method := range []string{"lora", "qlora"} {
			for _, v := range refused {
				t.Run(fmt.Sprintf("%s/%s/refuses %#v", name, method, v), func(t *testing.T) {
					errs := Merge(DefaultTrainingConfig(method), TrainingConfig{section: {key: v}}).Validate(method)
					for _, e := range errs {
						if e.Field == want && e.Detail == l.Rule() {
							return
						}
					}
					t.Errorf("want %s refused (%s), got %v", want, l.Rule(), errs)
				})
			}
			for _, v := range accepted {
				t.Run(fmt.Sprintf("%s/%s/accepts %#v", name, method, v), func(t *testing.T) {
					if errs := Merge(DefaultTrainingConfig(method), TrainingConfig{section: {key: v}}).Validate(method); len(errs) > 0 {
						t.Errorf("%s = %#v refused: %v", want, v, errs)
					}
				})
			}
		}
	}
}

// The rules read as they did when each was written out by hand.
func TestLimitRules(t *testing.T) {
	one, sixteen, top := 1, 16, 256
	for l, want := range map[Limit]string{
		{Kind: LimitInteger, Min: &one}:                             "must be a positive integer",
		{Kind: LimitInteger, Min: &sixteen}:                         "must be an integer of at least 16",
		{Kind: LimitInteger, Min: &one, Max: &top}:                  "must be an integer from 1 to 256",
		{Kind: LimitFraction, What: "the share of rows trained on"}: "must be a number above 0 and at most 1 (the share of rows trained on)",
		{Kind: LimitBool}:                                           "must be true or false",
	} {
		if got := l.Rule(); got != want {
			t.Errorf("%+v: rule %q, want %q", l, got, want)
		}
	}
}

func TestParseTrainingConfigRefusesUnknownSections(t *testing.T) {
	_, err := ParseTrainingConfig([]byte("training_config:\n  LoraConfig: {r: 16}\n  Optimiser: {lr: 1}\n"))
	if err == nil || !strings.Contains(err.Error(), "training_config.Optimiser") {
		t.Fatalf("got %v", err)
	}
	// Without Kaito's wrapper key too.
	c, err := ParseTrainingConfig([]byte("LoraConfig: {r: 16, target_modules: [qkv_proj]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := c.Overrides()
	if *o.LoRARank != 16 || o.LoRATargets[0] != "qkv_proj" || o.BatchSize != nil {
		t.Errorf("overrides %+v", o)
	}
}

func TestApplyWritesThePlan(t *testing.T) {
	p, err := catalog(t).PlanTuning("phi-3-mini-128k-instruct", "qlora", "Standard_NC6s_v3", Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	c := DefaultTrainingConfig("qlora").Apply(p)
	if c["ModelConfig"]["torch_dtype"] != "float16" || c["QuantizationConfig"]["bnb_4bit_compute_dtype"] != "float16" ||
		c["TrainingArguments"]["fp16"] != true || c["TrainingArguments"]["bf16"] != false {
		t.Errorf("V100 config still asks for bf16: %v", c)
	}
	if c["DatasetConfig"]["max_seq_length"] != p.SeqLen || c["TrainingArguments"]["per_device_train_batch_size"] != p.BatchSize {
		t.Errorf("plan not applied: %v", c)
	}
	out, err := c.Render()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseTrainingConfig(out)
	if err != nil || len(back.Validate("qlora")) > 0 {
		t.Fatalf("rendered config does not read back: %v\n%s", err, out)
	}
}
