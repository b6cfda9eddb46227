package jobrun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The wrapper is tested as what it is: a process (its own binary, cmd/job-run, as the tuning pod
// runs it) around a trainer process.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kaitoflow-jobrun")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "job-run")
	if out, err := exec.Command("go", "build", "-o", binary, "../../cmd/job-run").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fakeTrainer is a shell script standing in for presets/trainer: it checks the dataset arrived,
// then writes an adapter and metrics — or fails, or waits for a signal.
const fakeTrainer = `#!/bin/sh
set -e
mode=$1; data=$2; results=$3; mark=$4
case $mode in
ok)
  ls "$data"/*dolly* >/dev/null
  mkdir -p "$results"
  echo '{"peft_type":"LORA","r":8}' > "$results/adapter_config.json"
  printf 'safetensors-bytes' > "$results/adapter_model.safetensors"
  echo '{"train_loss": 1.5, "steps": 12, "loss_history": [1, 2]}' > "$results/metrics.json"
  ;;
fail)
  echo "kaitoflow-trainer: unrecognised row" >&2
  exit 3
  ;;
eval)
  # job-run appends --eval-data DIR: the eval set's rows, apart from the training data.
  [ "$5" = "--eval-data" ] && cat "$6"/* > "$mark" && ! ls "$data" | grep -q eval
  mkdir -p "$results"
  echo '{"peft_type":"LORA","r":8}' > "$results/adapter_config.json"
  printf 'safetensors-bytes' > "$results/adapter_model.safetensors"
  echo '{"train_loss": 1.5}' > "$results/metrics.json"
  ;;
wait)
  trap 'echo got-term > "$mark"; exit 143' TERM
  echo started > "$mark.started"
  while true; do sleep 0.05; done
  ;;
esac
`

type env struct {
	dir, data, results, termLog, trainer, secret string
	dataset                                      *httptest.Server
	reg                                          *httptest.Server
	uploads                                      atomic.Int32
}

func setup(t *testing.T) *env {
	t.Helper()
	e := &env{dir: t.TempDir()}
	e.data, e.results, e.termLog = filepath.Join(e.dir, "data"), filepath.Join(e.dir, "results"), filepath.Join(e.dir, "termination-log")
	e.trainer = filepath.Join(e.dir, "trainer.sh")
	if err := os.WriteFile(e.trainer, []byte(fakeTrainer), 0o755); err != nil {
		t.Fatal(err)
	}
	e.dataset = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "missing") {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}` + "\n"))
	}))
	t.Cleanup(e.dataset.Close)
	regHandler := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	e.reg = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
			e.uploads.Add(1)
		}
		regHandler.ServeHTTP(w, r)
	}))
	t.Cleanup(e.reg.Close)
	e.secret = filepath.Join(e.dir, ".dockerconfigjson")
	host := strings.TrimPrefix(e.reg.URL, "http://")
	secret := `{"auths":{"` + host + `":{"username":"kaitoflow","password":"s3cret","auth":"a2FpdG9mbG93OnMzY3JldA=="}}}`
	if err := os.WriteFile(e.secret, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) cmd(datasetPath, mode string) *exec.Cmd {
	host := strings.TrimPrefix(e.reg.URL, "http://")
	return exec.Command(binary,
		"--data", e.data, "--results", e.results, "--termination-log", e.termLog,
		"--input-url", e.dataset.URL+datasetPath, "--allow-host", "127.0.0.1",
		"--output-image", host+"/acr/adapter:0.0.1", "--push-secret", e.secret, "--insecure-registry",
		"--", "sh", e.trainer, mode, e.data, e.results, filepath.Join(e.dir, "mark"))
}

func TestFetchRunUploadSummarise(t *testing.T) {
	e := setup(t)
	out, err := e.cmd("/datasets/dolly.jsonl?download=true", "ok").CombinedOutput()
	if err != nil {
		t.Fatalf("job-run: %v\n%s", err, out)
	}
	var s Summary
	b, _ := os.ReadFile(e.termLog)
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("termination message %q: %v", b, err)
	}
	if len(s.Files) != 2 || s.Layer == nil || s.Metrics["train_loss"] != 1.5 || s.Metrics["steps"] != 12 || len(s.Datasets) != 1 || !strings.HasPrefix(s.Datasets[0], "sha256:") {
		t.Fatalf("summary %+v", s)
	}
	if _, ok := s.Metrics["loss_history"]; ok {
		t.Error("the summary must keep to scalars (4 KiB termination message)")
	}
	if len(b) > 4096 {
		t.Errorf("summary of %d bytes exceeds the termination message limit", len(b))
	}
	// The layer is in the output repository, by the digest the summary names.
	repo, _ := name.NewRepository(strings.TrimPrefix(e.reg.URL, "http://")+"/acr/adapter", name.Insecure)
	l, err := remote.Layer(repo.Digest(s.Layer.Digest))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := l.Digest(); err != nil || d.String() != s.Layer.Digest {
		t.Fatalf("layer %v %v", d, err)
	}
	if _, err := l.Compressed(); err != nil {
		t.Fatalf("the uploaded blob is not there: %v", err)
	}
}

func TestFailingTrainerUploadsNothing(t *testing.T) {
	e := setup(t)
	cmd := e.cmd("/dolly.jsonl", "fail")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err == nil || !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("want the trainer's exit code 3, got %v\n%s", err, out)
	}
	if n := e.uploads.Load(); n != 0 {
		t.Errorf("%d uploads after a failed run", n)
	}
	if b, _ := os.ReadFile(e.termLog); strings.Contains(string(b), `"files"`) {
		t.Errorf("a summary was written for a failed run: %s", b)
	}
}

func TestUnreachableDatasetFailsBeforeTraining(t *testing.T) {
	e := setup(t)
	out, err := e.cmd("/missing.parquet", "ok").CombinedOutput()
	if err == nil {
		t.Fatalf("a 404 dataset passed:\n%s", out)
	}
	b, _ := os.ReadFile(e.termLog)
	if !strings.Contains(string(b), "tuning.input.urls[0]") || !strings.Contains(string(b), "404") {
		t.Errorf("termination message %q", b)
	}
	if _, err := os.Stat(filepath.Join(e.results, "adapter_config.json")); err == nil {
		t.Error("the trainer ran without its dataset")
	}
}

func TestSIGTERMReachesTheTrainer(t *testing.T) {
	e := setup(t)
	cmd := e.cmd("/dolly.jsonl", "wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	mark := filepath.Join(e.dir, "mark")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(mark + ".started"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the trainer never started")
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 143 {
		t.Fatalf("exit %v, want the trainer's 143", err)
	}
	if b, _ := os.ReadFile(mark); strings.TrimSpace(string(b)) != "got-term" {
		t.Errorf("the trainer did not see SIGTERM (%q)", b)
	}
}

// A dataset server that answers and then stalls, or sends more than the limit, fails the fetch
// with the reason instead of holding the node: before, downloads had no time or size bound.
func TestDownloadBounds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stall":
			w.Header().Set("Content-Length", "1000")
			_, _ = w.Write([]byte("PAR1"))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case "/trickle":
			for range 100 {
				if _, err := w.Write([]byte("x")); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(20 * time.Millisecond)
			}
		case "/long":
			_, _ = w.Write(bytes.Repeat([]byte("x"), 4096)) // no Content-Length: chunked
		case "/declared":
			w.Header().Set("Content-Length", "999999")
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		path, want string
	}{
		{"/stall", "less than 64 KiB in 200ms"},
		{"/trickle", "less than 64 KiB in 200ms"}, // a byte every 20 ms is no transfer
		{"/long", "over the 1024-byte limit"},
		{"/declared", "999999 bytes is over the 1024-byte limit"},
	} {
		dst := filepath.Join(t.TempDir(), "d")
		start := time.Now()
		_, _, err := downloadWithin(context.Background(), http.DefaultClient, srv.URL+tc.path, dst, 1024, 200*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.path, err, tc.want)
		}
		if time.Since(start) > 10*time.Second {
			t.Errorf("%s took %s", tc.path, time.Since(start))
		}
		if _, err := os.Stat(dst + ".part"); err == nil {
			t.Errorf("%s left a partial file", tc.path)
		}
	}
}

// The output registry is reached through the address policy at connect, not only checked at
// submit: a registry on an internal address the pipeline does not admit (127.0.0.2 here, where
// --allow-host admits 127.0.0.1 for the dataset) gets no upload, and the reason is the policy's.
func TestRegistryOutsideThePolicyIsRefusedAtConnect(t *testing.T) {
	e := setup(t)
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 on this machine: %v", err)
	}
	var hits atomic.Int32
	reg := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		e.reg.Config.Handler.ServeHTTP(w, r)
	}))
	reg.Listener = ln
	reg.Start()
	defer reg.Close()
	cmd := e.cmd("/dolly.jsonl", "ok")
	for i, a := range cmd.Args {
		if strings.HasSuffix(a, "/acr/adapter:0.0.1") {
			cmd.Args[i] = ln.Addr().String() + "/acr/adapter:0.0.1"
		}
	}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("an upload to %s passed:\n%s", ln.Addr(), out)
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the registry outside the policy was asked %d times", n)
	}
	if b, _ := os.ReadFile(e.termLog); !strings.Contains(string(b), "loopback") {
		t.Errorf("termination message %q: want the address policy's reason", b)
	}
}

// The workspace's eval set is fetched beside the dataset, not into it, and the trainer is told
// where (--eval-data); one that cannot be fetched fails the run before the trainer starts, naming
// the annotation.
func TestEvalSetIsFetchedAndGivenToTheTrainer(t *testing.T) {
	e := setup(t)
	cmd := e.cmd("/dolly.jsonl", "eval")
	withEval := func(cmd *exec.Cmd, url string) *exec.Cmd {
		i := slices.Index(cmd.Args, "--")
		cmd.Args = slices.Insert(cmd.Args, i, "--eval-url", url)
		return cmd
	}
	if out, err := withEval(cmd, e.dataset.URL+"/eval.jsonl").CombinedOutput(); err != nil {
		t.Fatalf("job-run: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(e.dir, "mark")); err != nil || !strings.Contains(string(b), `"assistant","content":"hello"`) {
		t.Fatalf("the trainer did not read the eval set from --eval-data: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(e.results, ".eval-data")); !os.IsNotExist(err) {
		t.Errorf("the eval set stayed beside the adapter: %v", err)
	}

	e = setup(t)
	out, err := withEval(e.cmd("/dolly.jsonl", "eval"), e.dataset.URL+"/missing-eval.jsonl").CombinedOutput()
	if err == nil {
		t.Fatalf("a 404 eval set passed:\n%s", out)
	}
	if b, _ := os.ReadFile(e.termLog); !strings.Contains(string(b), "metadata.annotations[kaitoflow.io/eval-data][0]") || !strings.Contains(string(b), "404") {
		t.Errorf("termination message %q", b)
	}
	if _, err := os.Stat(filepath.Join(e.results, "adapter_config.json")); err == nil {
		t.Error("the trainer ran without its eval set")
	}
}

// The tuning pod's init container copies job-run into the trainer's container with install-self:
// the copy is executable and is job-run.
func TestInstallSelfCopiesTheBinary(t *testing.T) {
	to := filepath.Join(t.TempDir(), "bin", "job-run")
	if out, err := exec.Command(binary, "install-self", to).CombinedOutput(); err != nil {
		t.Fatalf("install-self: %v\n%s", err, out)
	}
	out, err := exec.Command(to, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "job-run [flags] -- TRAINER") {
		t.Errorf("the copy's --help: %v\n%s", err, out)
	}
}
