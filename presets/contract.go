package presets

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
)

//go:embed trainer/kaitoflow_trainer/contract.json
var contractJSON []byte

// TrainerContract is what the trainer (presets/trainer) and kaitoflow agree on: its exit codes,
// the reasons a failed run reports for the permanent ones, and the prefixes of the lines job-run
// reads from its stdout. The trainer reads the same file (kaitoflow_trainer/contract.json), so
// the two sides cannot drift.
type TrainerContract struct {
	Exit struct {
		// Failed may be retried; the others are permanent for the same settings.
		Failed, Config, Data, OOM, Model int32
	} `json:"exit"`
	// Reasons name the permanent exits, by the same keys as Exit.
	Reasons struct {
		Config, Data, OOM, Model string
	} `json:"reasons"`
	Prefixes struct {
		Progress, Checkpoint string
	} `json:"prefixes"`
	// TrainingConfig is training_config.yaml's shape: its sections, the arguments a workspace may
	// set in each, kaitoflow's defaults (and what qlora adds), and where the trainer may write.
	TrainingConfig struct {
		OutputRoot string              `json:"outputRoot"`
		Sections   []string            `json:"sections"`
		Defaults   json.RawMessage     `json:"defaults"`
		QLoRA      json.RawMessage     `json:"qlora"`
		Allowed    map[string][]string `json:"allowed"`
		// Limits are the value rules both sides' validation applies, by "Section.key".
		Limits map[string]Limit `json:"limits"`
	} `json:"trainingConfig"`
}

// Limit is one value rule of a training config argument (contract.json's trainingConfig.limits),
// applied only where the argument is set: Kind is LimitInteger (a whole number from Min, up to Max
// when there is one), LimitFraction (a number above 0 and at most 1; What says what it is the
// share of) or LimitBool.
type Limit struct {
	Kind string `json:"kind"`
	Min  *int   `json:"min,omitempty"`
	Max  *int   `json:"max,omitempty"`
	What string `json:"what,omitempty"`
}

// The kinds of Limit.
const (
	LimitInteger  = "integer"
	LimitFraction = "fraction"
	LimitBool     = "bool"
)

// Contract returns the trainer contract embedded in the binary.
var Contract = sync.OnceValue(func() TrainerContract {
	var c TrainerContract
	if err := json.Unmarshal(contractJSON, &c); err != nil {
		panic(fmt.Sprintf("embedded trainer contract: %v", err))
	}
	for name, l := range c.TrainingConfig.Limits {
		section, key, _ := strings.Cut(name, ".")
		known := l.Kind == LimitFraction || l.Kind == LimitBool || (l.Kind == LimitInteger && l.Min != nil)
		if !slices.Contains(c.TrainingConfig.Sections, section) || key == "" || !known {
			panic(fmt.Sprintf("embedded trainer contract: limit %s: want Section.key of a section, and a known kind "+
				"(integer with min, fraction, bool): %+v", name, l))
		}
	}
	return c
})

// PermanentExits maps the exit codes a Job must not retry to the reasons a failed run reports.
func (c TrainerContract) PermanentExits() map[int32]string {
	return map[int32]string{c.Exit.Config: c.Reasons.Config, c.Exit.Data: c.Reasons.Data, c.Exit.OOM: c.Reasons.OOM, c.Exit.Model: c.Reasons.Model}
}
