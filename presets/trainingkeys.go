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
// paths on the node. So each section admits the arguments the trainer contract lists
// (contract.json's trainingConfig.allowed, which the trainer reads too) and refuses the rest by
// name; a new argument is added there deliberately. DatasetConfig and DataCollator are read by
// the trainer itself and checked in Validate.

// validateTrainingKeys refuses every argument the contract does not allow, naming it.
func (c TrainingConfig) validateTrainingKeys(root *field.Path) field.ErrorList {
	var errs field.ErrorList
	allowed := Contract().TrainingConfig.Allowed
	for _, section := range slices.Sorted(maps.Keys(allowed)) {
		for _, k := range slices.Sorted(maps.Keys(c[section])) {
			if !slices.Contains(allowed[section], k) {
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
