package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/internal/vllmproc"
)

// VLLMRequired reports whether the tests against a real vLLM must run (KAITOFLOW_VLLM_REQUIRE=1):
// a missing environment fails them rather than skipping them, so a run that means to test against
// vLLM cannot pass by skipping.
func VLLMRequired() bool { return os.Getenv("KAITOFLOW_VLLM_REQUIRE") == "1" }

// VLLMPythons are the pythons the tests against a real vLLM need: vLLM's CPU environment's
// (KAITOFLOW_VLLM_PYTHON, from hack/ml-env.sh vllm) to serve, and the trainer's (MLPython) to make
// the tiny model and train its adapters. Either unset, the test skips saying how to get it, or
// fails when VLLMRequired.
func VLLMPythons(t testing.TB) (vllm, ml string) {
	t.Helper()
	vllm, ml = os.Getenv("KAITOFLOW_VLLM_PYTHON"), os.Getenv("KAITOFLOW_ML_PYTHON")
	var missing []string
	if vllm == "" {
		missing = append(missing, "KAITOFLOW_VLLM_PYTHON=$(hack/ml-env.sh vllm)")
	}
	if ml == "" {
		missing = append(missing, "KAITOFLOW_ML_PYTHON=$(hack/ml-env.sh)")
	}
	if len(missing) > 0 {
		msg := "no vLLM or ML environment: run with " + strings.Join(missing, " ") +
			" (each script makes its environment once and prints its python); KAITOFLOW_VLLM_REQUIRE=1 makes this a failure"
		if VLLMRequired() {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED, " + msg)
	}
	for _, p := range []string{vllm, ml} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("python %s: %v", p, err)
		}
	}
	return vllm, ml
}

// VLLM is a real vLLM OpenAI-compatible server (its CPU build) run as a child process, in its own
// process group with its engine processes: the model container of an inference pod, for the tests
// that hold kaitoflow's proxy and adapter reconciler against the real thing. It is the local
// deployer's own process runner (vllmproc).
type VLLM struct {
	*vllmproc.Process
}

// StartVLLM starts `vllm serve args...` with python (VLLMPythons' first) and env added to this
// process's environment, and stops it, with every process it started, when the test ends. It
// returns at once: the model loads for a minute or more on a CPU, which the caller may spend
// elsewhere before it calls Ready.
func StartVLLM(t testing.TB, python string, args, env []string) *VLLM {
	t.Helper()
	p, err := vllmproc.Start(python, args, env, filepath.Join(t.TempDir(), "vllm.log"))
	if err != nil {
		t.Fatal(err)
	}
	v := &VLLM{Process: p}
	t.Cleanup(func() {
		v.Stop()
		if t.Failed() {
			t.Logf("vLLM's log (the end):\n%s", v.Log(8000))
		}
	})
	return v
}

// Start starts the server again after Kill, with the same arguments (so on the same port).
func (v *VLLM) Start() error { return v.Restart() }
