package presets

import (
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// A training config is workspace content: whoever may submit a workspace writes it. The trainer
// hands ModelConfig, QuantizationConfig, LoraConfig and TrainingArguments to transformers and peft
// as keyword arguments, and some of their arguments do far more than tune a run:
// trust_remote_code runs the model repository's Python, push_to_hub/hub_token send the weights and
// a credential elsewhere, report_to ships metrics to a third party, logging_dir and deepspeed name
// paths on the node. So each section admits the arguments listed here and refuses the rest by name;
// a new argument is added here deliberately. DatasetConfig and DataCollator are read by the trainer
// itself and checked in Validate.
var trainingKeys = map[string][]string{
	"ModelConfig": {
		"torch_dtype", "dtype", "device_map", "local_files_only", "attn_implementation",
		"low_cpu_mem_usage", "use_cache",
	},
	"QuantizationConfig": {
		"load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype",
		"bnb_4bit_use_double_quant", "bnb_4bit_quant_storage", "llm_int8_threshold",
		"llm_int8_skip_modules", "llm_int8_enable_fp32_cpu_offload", "llm_int8_has_fp16_weight",
	},
	"LoraConfig": {
		"r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "bias", "task_type",
		"modules_to_save", "fan_in_fan_out", "use_rslora", "use_dora", "init_lora_weights",
		"layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
	},
	"TrainingArguments": {
		"output_dir", "overwrite_output_dir", "num_train_epochs", "max_steps",
		"per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
		"eval_accumulation_steps", "gradient_checkpointing", "gradient_checkpointing_kwargs",
		"learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
		"lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps",
		"logging_strategy", "logging_steps", "logging_first_step", "save_strategy", "save_steps",
		"save_total_limit", "save_only_model", "save_safetensors", "eval_strategy", "eval_steps",
		"eval_on_start", "prediction_loss_only", "load_best_model_at_end", "metric_for_best_model",
		"greater_is_better", "seed", "data_seed", "full_determinism", "bf16", "fp16", "tf32",
		"optim", "optim_args", "group_by_length", "length_column_name", "dataloader_num_workers",
		"dataloader_pin_memory", "dataloader_drop_last", "dataloader_prefetch_factor",
		"remove_unused_columns", "label_names", "label_smoothing_factor", "ddp_find_unused_parameters",
		"ddp_timeout", "ddp_backend", "torch_compile", "neftune_noise_alpha", "auto_find_batch_size",
		"include_num_input_tokens_seen", "average_tokens_across_devices", "torch_empty_cache_steps",
		"skip_memory_metrics", "disable_tqdm", "run_name", "report_to",
	},
}

// validateTrainingKeys refuses every argument not in trainingKeys, naming it.
func (c TrainingConfig) validateTrainingKeys(root *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, section := range slices.Sorted(maps.Keys(trainingKeys)) {
		for _, k := range slices.Sorted(maps.Keys(c[section])) {
			if !slices.Contains(trainingKeys[section], k) {
				errs = append(errs, field.Forbidden(root.Child(section, k),
					"not an argument a workspace may set (it is not in kaitoflow's list for "+section+"; see docs/configuration.md)"))
			}
		}
	}
	// report_to sends metrics to a third-party service with credentials from the environment.
	if v, ok := c["TrainingArguments"]["report_to"]; ok {
		switch r := v.(type) {
		case string:
			if r != "none" {
				errs = append(errs, field.NotSupported(root.Child("TrainingArguments", "report_to"), v, []string{"none"}))
			}
		case []any:
			if len(r) > 0 && !(len(r) == 1 && r[0] == "none") {
				errs = append(errs, field.NotSupported(root.Child("TrainingArguments", "report_to"), v, []string{"none"}))
			}
		default:
			errs = append(errs, field.NotSupported(root.Child("TrainingArguments", "report_to"), v, []string{"none"}))
		}
	}
	return errs
}
