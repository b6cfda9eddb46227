package presets

import (
	"encoding/json"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/internal/jobrun"
)

// The trainer keeps its own copy of Kaito's defaults (it also runs on its own); they must not drift
// from the ones kaitoflow renders.
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
	for section, keys := range trainingKeys {
		fromGo[section] = slices.Sorted(slices.Values(keys))
	}
	if !reflect.DeepEqual(fromPython, fromGo) {
		t.Errorf("allowlists differ:\n python %v\n     go %v", fromPython, fromGo)
	}
}

// job-run recognises the trainer's progress lines by their prefix: the two must agree.
func TestTrainerProgressPrefixMatchesJobRun(t *testing.T) {
	src, err := os.ReadFile("trainer/kaitoflow_trainer/train.py")
	if err != nil {
		t.Fatal(err)
	}
	if want := `PROGRESS_PREFIX = "` + jobrun.ProgressPrefix + `"`; !strings.Contains(string(src), want) {
		t.Errorf("train.py does not define %s", want)
	}
}
