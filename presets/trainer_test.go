package presets

import (
	"encoding/json"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/events"
)

// Both sides read the defaults from the contract; what the trainer assembles from it (it also runs
// on its own) is what kaitoflow renders.
func TestPythonDefaultsMatch(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	for _, method := range []string{"lora", "qlora"} {
		cmd := exec.Command(py, "-m", "kaitoflow_trainer.config", "--defaults", method)
		cmd.Dir = "trainer"
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		var fromPython, fromGo map[string]map[string]any
		if err := json.Unmarshal(out, &fromPython); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(DefaultTrainingConfig(method))
		_ = json.Unmarshal(b, &fromGo)
		if !reflect.DeepEqual(fromPython, fromGo) {
			t.Errorf("%s defaults differ:\n python %v\n     go %v", method, fromPython, fromGo)
		}
	}
}

// The trainer refuses the same training-config arguments kaitoflow refuses at submit.
func TestPythonAllowlistMatches(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	cmd := exec.Command(py, "-m", "kaitoflow_trainer.config", "--allowed")
	cmd.Dir = "trainer"
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var fromPython map[string][]string
	if err := json.Unmarshal(out, &fromPython); err != nil {
		t.Fatal(err)
	}
	fromGo := map[string][]string{}
	for section, keys := range Contract().TrainingConfig.Allowed {
		fromGo[section] = slices.Sorted(slices.Values(keys))
	}
	if !reflect.DeepEqual(fromPython, fromGo) {
		t.Errorf("allowlists differ:\n python %v\n     go %v", fromPython, fromGo)
	}
}

// The trainer contract parses, names every permanent exit, and agrees with the reasons the
// pipeline reports under its own names (events' GPUOutOfMemory). The trainer reads the same file.
func TestTrainerContract(t *testing.T) {
	c := Contract()
	exits := c.PermanentExits()
	if len(exits) != 4 || c.Exit.Failed == 0 || exits[c.Exit.Failed] != "" {
		t.Fatalf("permanent exits %v, retried exit %d", exits, c.Exit.Failed)
	}
	for code, reason := range exits {
		if code == 0 || reason == "" {
			t.Errorf("exit %d: reason %q", code, reason)
		}
	}
	if c.Reasons.OOM != events.ReasonGPUOutOfMemory {
		t.Errorf("out of memory is %q to the trainer, %q to the pipeline", c.Reasons.OOM, events.ReasonGPUOutOfMemory)
	}
	if !strings.HasSuffix(c.Prefixes.Progress, " ") || !strings.HasSuffix(c.Prefixes.Checkpoint, " ") {
		t.Errorf("prefixes %q %q: a space separates them from the JSON", c.Prefixes.Progress, c.Prefixes.Checkpoint)
	}
}

// The contract's training config is whole: every allowed section is a section, and its output root
// is the one the Job mounts (TestDefaultTrainingConfigIsKaitos checks its defaults).
func TestContractTrainingConfig(t *testing.T) {
	tc := Contract().TrainingConfig
	if tc.OutputRoot != OutputRoot {
		t.Errorf("contract output root %q, the Job mounts %q", tc.OutputRoot, OutputRoot)
	}
	for section := range tc.Allowed {
		if !slices.Contains(tc.Sections, section) {
			t.Errorf("allowed arguments for %s, which is no section", section)
		}
	}
}
