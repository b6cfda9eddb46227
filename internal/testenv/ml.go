package testenv

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// MLPython is the python of the ML environment (torch, transformers, peft: hack/ml-env.sh makes it
// from the hashed lock and hack/test.sh exports it as KAITOFLOW_ML_PYTHON). Without it the test
// skips, saying how to get it, unless KAITOFLOW_ML_REQUIRE=1 (hack/test.sh, CI) makes that a
// failure: a real-trainer test cannot pass by skipping there.
func MLPython(t testing.TB) string {
	t.Helper()
	py := os.Getenv("KAITOFLOW_ML_PYTHON")
	if py == "" {
		msg := "no ML environment: KAITOFLOW_ML_PYTHON=$(hack/ml-env.sh) runs the real trainer"
		if os.Getenv("KAITOFLOW_ML_REQUIRE") == "1" {
			t.Fatal(msg + " (KAITOFLOW_ML_REQUIRE=1)")
		}
		t.Skip(msg)
	}
	return py
}

// Tiny is a model and a dataset the tests make (presets/trainer/tests/make_tiny.py): a randomly
// initialised Phi-3-shaped model with a trained tokenizer and chat template, and a parquet of
// rows shaped like dolly-15k's chat version. Nothing is downloaded.
type Tiny struct {
	// Model is the model's directory, Data the dataset's (one parquet file in it).
	Model string `json:"model"`
	Data  string `json:"data"`
	Shape string `json:"shape"`
	Rows  int    `json:"rows"`
	// DatasetConfig is what the trainer's DatasetConfig needs for the data's columns.
	DatasetConfig map[string]any `json:"dataset_config"`
}

// TinyModel makes a Tiny under a temporary directory with py.
func TinyModel(t testing.TB, py string) Tiny {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, filepath.Join(root, "presets", "trainer", "tests", "make_tiny.py"), "--out", t.TempDir())
	cmd.Env = append(os.Environ(), "HF_HUB_OFFLINE=1", "OMP_NUM_THREADS=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make the tiny model: %v\n%s", err, stderr.Bytes())
	}
	var tiny Tiny
	if err := json.Unmarshal(out, &tiny); err != nil {
		t.Fatalf("make_tiny's answer %q: %v", out, err)
	}
	return tiny
}

// TrainerEnv is the environment the trainer runs in outside a pod: the trainer package importable
// from the source tree (the image's working directory holds it), offline, writing under root (its
// output-root rule admits that instead of /mnt), one thread per process (the tiny model's matrices
// train fastest so, and two processes on two cores do not fight).
func TrainerEnv(t testing.TB, root string) []string {
	t.Helper()
	repo, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return []string{
		"PYTHONPATH=" + filepath.Join(repo, "presets", "trainer"),
		"HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "HF_HOME=" + filepath.Join(root, "hf"),
		"KAITOFLOW_OUTPUT_ROOT=" + root, "OMP_NUM_THREADS=1", "TOKENIZERS_PARALLELISM=false", "PYTHONUNBUFFERED=1",
	}
}

// adapterCheck loads the base model, then the adapter onto it with peft, and reports how far the
// adapter moved the logits of one prompt.
const adapterCheck = `
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tok("What is two plus three ?", return_tensors="pt").input_ids
with torch.no_grad():
    before = base(ids).logits
model = PeftModel.from_pretrained(base, sys.argv[2])
with torch.no_grad():
    after = model(ids).logits
print(json.dumps({"moved": (before - after).abs().max().item(), "r": model.peft_config["default"].r}))
`

// AssertAdapterChangesModel loads the adapter in dir onto model with peft (as an inference server
// would) and fails t unless it loads and changes the model's logits.
func AssertAdapterChangesModel(t testing.TB, py, model, dir string) {
	t.Helper()
	cmd := exec.Command(py, "-c", adapterCheck, model, dir)
	cmd.Env = append(os.Environ(), "HF_HUB_OFFLINE=1", "OMP_NUM_THREADS=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("load the adapter with peft: %v\n%s", err, stderr.Bytes())
	}
	var got struct {
		Moved float64 `json:"moved"`
		R     int     `json:"r"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out[bytes.LastIndexByte(bytes.TrimSpace(out), '\n')+1:]), &got); err != nil {
		t.Fatalf("peft check's answer %q: %v", out, err)
	}
	if got.Moved < 1e-4 || got.R < 1 {
		t.Fatalf("the adapter (rank %d) moved the logits by %g: it does nothing", got.R, got.Moved)
	}
}
