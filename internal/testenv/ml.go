package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/pflag"

	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
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
	return []string{
		"PYTHONPATH=" + TrainerDir(t),
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

// Serve serves the tiny dataset's parquet over HTTP on loopback until the test ends and returns
// its URL: a dataset URL as a workspace names one.
func (tiny Tiny) Serve(t testing.TB) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(tiny.Data, "*.parquet"))
	if len(files) != 1 {
		t.Fatalf("the tiny dataset: %v", files)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(tiny.Data)))
	t.Cleanup(srv.Close)
	return srv.URL + "/" + filepath.Base(files[0])
}

// TrainingConfig is a training_config.yaml for a tiny run on a CPU: a few steps at a high rate
// (so the loss moves well beyond noise), short sequences, and the data's columns.
func (tiny Tiny) TrainingConfig(steps int) string {
	dataset := map[string]any{"max_seq_length": 64}
	for k, v := range tiny.DatasetConfig {
		dataset[k] = v
	}
	cfg, _ := json.Marshal(map[string]any{"training_config": map[string]any{
		"TrainingArguments": map[string]any{"max_steps": steps, "learning_rate": 0.01, "logging_steps": 2, "seed": 0},
		"DatasetConfig":     dataset,
	}})
	return string(cfg)
}

// TrainerDir is the trainer's source directory (presets/trainer): what the local trainer puts on
// PYTHONPATH, as the trainer image's working directory holds it.
func TrainerDir(t testing.TB) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "presets", "trainer")
}

// JobRunOf parses a tuning container's command — `job-run FLAGS -- TRAINER...` as
// jobs.Build writes it — with job-run's own flags, and returns the configuration and the trainer's
// command line.
func JobRunOf(t testing.TB, command []string) (jobrun.Config, []string) {
	t.Helper()
	i := slices.IndexFunc(command, func(c string) bool { return path.Base(c) == "job-run" })
	j := slices.Index(command, "--")
	if i < 0 || j < i {
		t.Fatalf("the tuning container does not run job-run: %q", command)
	}
	var c jobrun.Config
	var allow []string
	fs := pflag.NewFlagSet("job-run", pflag.ContinueOnError)
	jobrun.RegisterFlags(fs, &c, &allow)
	if err := fs.Parse(command[i+1 : j]); err != nil {
		t.Fatal(err)
	}
	c.Policy = netguard.AddressPolicy{Allow: allow} // as job-run itself takes --allow-host
	return c, slices.Clone(command[j+1:])
}

// ConfigMap is a ConfigMap named name holding the tiny run's training config (TrainingConfig), as
// a workspace's tuning.config names one.
func (tiny Tiny) ConfigMap(name string, steps int) string {
	return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s}\ndata:\n  training_config.yaml: %q\n", name, tiny.TrainingConfig(steps))
}

// SeedManifest is the seed workspace (Kaito's quickstart manifest) made to train on the tiny
// model's data at dataURL with LoRA and the training config in ConfigMap config: the shape of the
// seed, on what this machine can run.
func SeedManifest(t testing.TB, config, dataURL string) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := os.ReadFile(filepath.Join(root, "examples", "fine-tuning", "kaito_workspace_tuning_phi_3.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.NewReplacer(
		"method: qlora", "method: lora\n  config: "+config,
		"https://huggingface.co/datasets/philschmid/dolly-15k-oai-style/resolve/main/data/train-00000-of-00001-54e3756291ca09c6.parquet?download=true",
		dataURL,
	).Replace(string(seed))
}

// SyncBuffer is a log that goroutines write to while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// Reset empties the log.
func (s *SyncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
