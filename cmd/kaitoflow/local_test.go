package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tunelocal "github.com/kaitoflow/kaitoflow/functions/tune/local"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/serve/local"
	"github.com/kaitoflow/kaitoflow/functions/serve/sim"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// `up` with the real local drivers end to end: a seed-shaped workspace naming a tiny model the
// test makes (mapped to the seed's preset) and a local parquet → kaitoflow's Python trainer on this
// machine's CPU → the adapter image in the embedded registry → a real vLLM (its CPU build) behind
// kaitoflow's chat-proxy and adapter reconciler → `kaitoflow chat` answers through the adapter.
// Then the next generation goes live in the same vLLM process, which is not restarted.
func TestUpTrainsAndServesForReal(t *testing.T) {
	vllmPython, py := testenv.VLLMPythons(t)
	tiny := testenv.TinyModel(t, py)
	dataURL := tiny.Serve(t)
	dataDir := t.TempDir()
	models := map[string]string{"phi-3-mini-128k-instruct": tiny.Model}
	start, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := embedded.Start(start, embedded.Config{
		DataDir: dataDir, Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
		Delivery: runtime.JetStreamOptions{AckWait: 5 * time.Second, Backoff: []time.Duration{50 * time.Millisecond}},
		Functions: assembly.Config{
			Policy: netguard.AddressPolicy{Allow: []string{"127.0.0.1"}},
			Drivers: assembly.Drivers{Trainer: "local", Deployer: "local",
				Local: tunelocal.Python{Interpreter: py, TrainerDir: testenv.TrainerDir(t), Models: models, CPU: true},
				VLLM:  local.VLLM{Python: vllmPython, Models: models, CPU: true}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	cm := tiny.ConfigMap("tiny-cpu", 16)
	cmFile := filepath.Join(t.TempDir(), "cm.yaml")
	if err := os.WriteFile(cmFile, []byte(cm), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, err := cli(t, p.URL, "submit", "-f", cmFile); err != nil {
		t.Fatalf("ConfigMap: %v %s %s", err, out, errOut)
	}
	doc := testenv.SeedManifest(t, "tiny-cpu", dataURL)
	manifest := filepath.Join(t.TempDir(), "ws.yaml")
	submit := func(doc string) {
		t.Helper()
		if err := os.WriteFile(manifest, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, errOut, err := cli(t, p.URL, "submit", "-f", manifest); err != nil {
			t.Fatalf("submit: %v %s %s", err, out, errOut)
		}
	}
	const name = "workspace-tuning-phi-3"
	ready := func(gen int64) *status.Workspace {
		t.Helper()
		deadline := time.Now().Add(10 * time.Minute)
		for {
			w, err := p.Store.Get(context.Background(), "default", name)
			if err == nil && w.Generation == gen && w.Phase == status.Ready && w.Live == gen {
				return w
			}
			if err == nil && w.Generation == gen && w.Phase == status.Failed {
				t.Fatalf("generation %d failed: %+v\nvLLM: %s", gen, w.Failure, vllmLogs(t, dataDir))
			}
			if time.Now().After(deadline) {
				t.Fatalf("generation %d not Ready: %+v %v\nvLLM: %s", gen, w, err, vllmLogs(t, dataDir))
			}
			time.Sleep(time.Second)
		}
	}
	submit(doc)
	w := ready(1)

	// kaitoflow chat, as a user types it, answers: with the real model's words, not the sim's.
	out, errOut, err := cli(t, p.URL, "chat", name, "What is two plus three ?", "--max-tokens", "8")
	if err != nil || strings.TrimSpace(out) == "" || strings.Contains(out, "[sim]") {
		t.Fatalf("chat: %q %q %v", out, errOut, err)
	}
	// Through the adapter: the workspace's model name routes to the adapter vLLM loaded for it.
	first, replica := completion(t, w.Endpoint, name)
	if !strings.HasPrefix(first, serve.AdapterName(name)) {
		t.Fatalf("answered by %q, not the workspace's adapter", first)
	}

	// The next generation (a new output tag): trained, pushed, loaded into the same vLLM.
	submit(strings.Replace(doc, ":0.0.1", ":0.0.2", 1))
	w = ready(2)
	second, replica2 := completion(t, w.Endpoint, name)
	if second == first || !strings.HasPrefix(second, serve.AdapterName(name)) {
		t.Fatalf("generation 2 answered by %q (generation 1: %q)", second, first)
	}
	if replica2 != replica {
		t.Errorf("another replica answered generation 2 (%s, was %s): a restart", replica2, replica)
	}
	// The first adapter stays loaded a while after the route moved (for requests in flight),
	// then goes.
	for deadline := time.Now().Add(sim.UnloadAfter + 15*time.Second); ; time.Sleep(200 * time.Millisecond) {
		var served chatproxy.ReplicaAdapters
		getJSON(t, w.Endpoint+"/replicas/"+replica+"/admin/adapters", &served)
		if slices.Contains(served.Loaded, second) && !slices.Contains(served.Loaded, first) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("vLLM holds %v: want %s and not %s", served.Loaded, second, first)
			break
		}
	}
	logs, _ := filepath.Glob(filepath.Join(dataDir, "adapters", "vllm", "*.log"))
	if len(logs) != 1 {
		t.Fatalf("vLLM logs %v: want one replica's", logs)
	}
	b, _ := os.ReadFile(logs[0])
	if n := strings.Count(string(b), ": vllm serve "); n != 1 {
		t.Errorf("vLLM started %d times: the next generation must go live without a restart", n)
	}
}

// completion asks the endpoint for one token by the workspace's model name and returns the model
// that answered (the adapter vLLM routed to) and the replica.
func completion(t *testing.T, endpoint, model string) (string, string) {
	t.Helper()
	body := fmt.Sprintf(`{"model": %q, "messages": [{"role": "user", "content": "What is one plus one ?"}], "max_tokens": 1}`, model)
	resp, err := http.Post(endpoint+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Model string `json:"model"`
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &out) != nil {
		t.Fatalf("completion: %d %s", resp.StatusCode, b)
	}
	return out.Model, resp.Header.Get(sim.HeaderReplica)
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func vllmLogs(t *testing.T, dataDir string) string {
	logs, _ := filepath.Glob(filepath.Join(dataDir, "adapters", "vllm", "*.log"))
	var s strings.Builder
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 3000 {
			b = b[len(b)-3000:]
		}
		fmt.Fprintf(&s, "%s:\n%s\n", l, b)
	}
	return s.String()
}
