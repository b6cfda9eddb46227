package sim_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/serve/sim"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

func TestHandleSim(t *testing.T) {
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	preset := &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-4k-instruct"}}
	strength := "0.5"
	host := testenv.Registry(t)
	tuned, other := testenv.PushAdapter(t, host, "ws", "v1"), testenv.PushAdapter(t, host, "x/a", "1")
	tests := []struct {
		name     string
		typ      string
		data     any
		adapters []string
		model    string
	}{
		{"tuned adapter", events.ImagePushed, events.ImagePushedData{Workspace: kaito.Workspace{Tuning: &kaito.TuningSpec{Preset: preset}}, Reference: tuned}, []string{"ws"}, "ws"},
		{"inference only", events.NodeReady, events.NodeReadyData{Workspace: kaito.Workspace{Inference: &kaito.InferenceSpec{Preset: preset,
			Adapters: []kaito.AdapterSpec{{Source: &kaito.DataSource{Name: "Adapter_A", Image: other}, Strength: &strength}}}}}, []string{"adapter-a"}, "adapter-a"},
		{"base model", events.NodeReady, events.NodeReadyData{Workspace: kaito.Workspace{Inference: &kaito.InferenceSpec{Preset: preset}}}, []string{}, "phi-3-mini-4k-instruct"},
		{"tuning workspace waits for its image", events.NodeReady, events.NodeReadyData{Workspace: kaito.Workspace{Tuning: &kaito.TuningSpec{}}}, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dep := &sim.Deployer{}
			srv := httptest.NewServer(dep.Handler())
			defer srv.Close()
			dep.BaseURL = srv.URL
			fn := serve.New(dep, nil)
			out, err := fn.Handle(context.Background(), events.Must(events.New("test", tc.typ, tc.typ, ref, tc.data, nil)))
			if err != nil {
				t.Fatal(err)
			}
			if tc.adapters == nil {
				if len(out) != 0 {
					t.Fatalf("emitted %v", out)
				}
				return
			}
			var d events.InferenceReadyData
			if len(out) != 1 || events.Data(out[0], &d) != nil {
				t.Fatalf("want inference.ready, got %v", out)
			}
			if d.URL != srv.URL+"/default/ws" || strings.Join(d.Adapters, ",") != strings.Join(tc.adapters, ",") || d.Driver != "sim" || d.Revision != "ws-00001" {
				t.Errorf("inference.ready %+v", d)
			}
			// The endpoint is chat-proxy in front of the simulated runtime: Kaito's /chat…
			resp, err := http.Post(d.URL+"/chat", "application/json", strings.NewReader(`{"prompt":"hello","generate_kwargs":{"max_new_tokens":100}}`))
			if err != nil {
				t.Fatal(err)
			}
			var res struct{ Result string }
			_ = json.NewDecoder(resp.Body).Decode(&res)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(res.Result, "[sim]") || !strings.HasSuffix(res.Result, "You said: hello") {
				t.Fatalf("chat: %d %q", resp.StatusCode, res.Result)
			}
			resp, _ = http.Post(d.URL+"/chat", "application/json", strings.NewReader(`{"nope":1}`))
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("bad chat body: %d", resp.StatusCode)
			}
			// …and OpenAI's streaming chat completions, one word per event.
			body := `{"model":"` + tc.model + `","stream":true,"messages":[{"role":"user","content":"hi there"}]}`
			resp, err = http.Post(d.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("stream: %d %s", resp.StatusCode, b)
			}
			var text strings.Builder
			chunks := 0
			for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
				data, ok := strings.CutPrefix(sc.Text(), "data: ")
				if !ok || data == "[DONE]" {
					continue
				}
				var c struct {
					Choices []struct{ Delta struct{ Content string } }
				}
				if err := json.Unmarshal([]byte(data), &c); err != nil || len(c.Choices) != 1 {
					t.Fatalf("chunk %q: %v", data, err)
				}
				text.WriteString(c.Choices[0].Delta.Content)
				chunks++
			}
			if chunks < 5 || !strings.HasSuffix(text.String(), "You said: hi there") {
				t.Errorf("%d chunks: %q", chunks, text.String())
			}
		})
	}
}

// startSim is a sim deployer behind its own endpoint, and serve on it.
func startSim(t *testing.T) (*sim.Deployer, *serve.Function) {
	t.Helper()
	dep := &sim.Deployer{}
	srv := httptest.NewServer(dep.Handler())
	t.Cleanup(srv.Close)
	dep.BaseURL = srv.URL
	return dep, serve.New(dep, nil)
}

func TestSimLifecycle(t *testing.T) {
	ctx := context.Background()
	dep, fn := startSim(t)
	ws := kaito.Workspace{Inference: &kaito.InferenceSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-4k-instruct"}}}}
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	out, _ := fn.Handle(ctx, events.Must(events.New("test", events.NodeReady, events.NodeReady, ref, events.NodeReadyData{Workspace: ws}, nil)))
	if refs, _ := dep.List(ctx); len(refs) != 1 {
		t.Fatalf("unacknowledged: %v", refs)
	}
	if _, err := fn.Handle(ctx, out[0]); err != nil {
		t.Fatal(err)
	}
	if refs, _ := dep.List(ctx); len(refs) != 0 {
		t.Fatalf("acknowledged but listed: %v", refs)
	}
	if out, _ := fn.Handle(ctx, events.Must(events.New("test", events.Tick, events.Tick, events.Ref{}, events.TickData{}, nil))); len(out) != 0 {
		t.Errorf("tick re-reported an acknowledged service: %v", out)
	}
	if _, err := fn.Handle(ctx, events.Must(events.New("test", events.WorkspaceDeleted, events.WorkspaceDeleted, ref, events.WorkspaceDeletedData{}, nil))); err != nil {
		t.Fatal(err)
	}
	if st, _ := dep.Status(ctx, ref); st != nil {
		t.Errorf("deleted service: %+v", st)
	}
}

// chatVia asks a sim service's /chat and returns the answer and the replica that gave it.
func chatVia(t *testing.T, url string) (string, string) {
	t.Helper()
	resp, err := http.Post(url+"/chat", "application/json", strings.NewReader(`{"prompt":"hello"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res struct{ Result string }
	_ = json.NewDecoder(resp.Body).Decode(&res)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chat: %d %q", resp.StatusCode, res.Result)
	}
	return res.Result, resp.Header.Get(sim.HeaderReplica)
}

// Two generations of a tuned workspace in a row: the second adapter is loaded into the replica
// that serves the first, with no new revision; a replica started later serves the same set.
func TestSimAdapterGoesLiveWithoutANewRevision(t *testing.T) {
	ctx := context.Background()
	host := testenv.Registry(t)
	dep := &sim.Deployer{Delay: 50 * time.Millisecond, Dir: t.TempDir()}
	srv := httptest.NewServer(dep.Handler())
	defer srv.Close()
	dep.BaseURL = srv.URL
	fn := serve.New(dep, nil)
	ws := kaito.Workspace{Tuning: &kaito.TuningSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-128k-instruct"}}}}
	ready := func(gen int64, image string) events.InferenceReadyData {
		t.Helper()
		ref := events.Ref{Namespace: "default", Name: "ws", Generation: gen}
		out, err := fn.Handle(ctx, events.Must(events.New("test", events.ImagePushed, events.ImagePushed, ref, events.ImagePushedData{Workspace: ws, Reference: image}, nil)))
		var d events.InferenceReadyData
		if err != nil || len(out) != 1 || out[0].Type() != events.InferenceReady || events.Data(out[0], &d) != nil {
			t.Fatalf("generation %d: %v %v", gen, err, out)
		}
		return d
	}
	v1, v2 := testenv.PushAdapter(t, host, "ws", "v1"), testenv.PushAdapter(t, host, "ws", "v2")
	first := ready(1, v1)
	answer, pod := chatVia(t, first.URL)
	if !strings.Contains(answer, serve.LoRAName("ws", v1)) {
		t.Fatalf("generation 1 answered %q", answer)
	}
	second := ready(2, v2)
	answer2, pod2 := chatVia(t, second.URL)
	if !strings.Contains(answer2, serve.LoRAName("ws", v2)) || pod2 != pod || second.Revision != first.Revision {
		t.Fatalf("generation 2: %q from %s (revision %s), want the new adapter from %s (revision %s)", answer2, pod2, second.Revision, pod, first.Revision)
	}
	// A replica started later reconciles the same set before it takes traffic.
	if err := dep.Scale(second.Ref, 2); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the new replica serving the set", func() bool {
		st, err := dep.Status(ctx, second.Ref)
		return err == nil && st != nil && st.Phase == serve.Ready
	})
	seen := map[string]bool{}
	for range 4 {
		a, p := chatVia(t, second.URL)
		if !strings.Contains(a, serve.LoRAName("ws", v2)) {
			t.Fatalf("replica %s answered %q", p, a)
		}
		seen[p] = true
	}
	if len(seen) != 2 {
		t.Errorf("answers came from %v, want both replicas", seen)
	}
	// Scaled to zero, the next request wakes a replica, which serves the same set.
	if err := dep.Scale(second.Ref, 0); err != nil {
		t.Fatal(err)
	}
	if a, p := chatVia(t, second.URL); !strings.Contains(a, serve.LoRAName("ws", v2)) || seen[p] {
		t.Errorf("woken replica %s answered %q", p, a)
	}
}

// Two tuned workspaces in one serving pool share one service and one replica (one GPU): each
// answers by its own model name there, /chat asks which; a member of another preset is refused;
// a member that leaves has its adapter unloaded while the other goes on; the last one removes it.
func TestSimServingPool(t *testing.T) {
	ctx := context.Background()
	host := testenv.Registry(t)
	dep := &sim.Deployer{Dir: t.TempDir()}
	srv := httptest.NewServer(dep.Handler())
	defer srv.Close()
	dep.BaseURL = srv.URL
	fn := serve.New(dep, nil)
	member := func(name, preset string) kaito.Workspace {
		ws := kaito.Workspace{Tuning: &kaito.TuningSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: preset}}}}
		ws.Name, ws.Annotations = name, map[string]string{kaito.AnnotationServingPool: "phi3-pool"}
		return ws
	}
	push := func(name, preset, image string) []cloudevents.Event {
		t.Helper()
		ref := events.Ref{Namespace: "default", Name: name, Generation: 1}
		out, err := fn.Handle(ctx, events.Must(events.New("test", events.ImagePushed, events.ImagePushed, ref, events.ImagePushedData{Workspace: member(name, preset), Reference: image}, nil)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return out
	}
	imgA, imgB := testenv.PushAdapter(t, host, "support", "v1"), testenv.PushAdapter(t, host, "billing", "v1")
	var ready []events.InferenceReadyData
	for _, m := range []struct{ name, image string }{{"support", imgA}, {"billing", imgB}} {
		out := push(m.name, "phi-3-mini-128k-instruct", m.image)
		var d events.InferenceReadyData
		if len(out) != 1 || events.Data(out[0], &d) != nil {
			t.Fatalf("%s: %v", m.name, out)
		}
		ready = append(ready, d)
	}
	if ready[0].URL != srv.URL+"/default/phi3-pool" || ready[1].URL != ready[0].URL || ready[1].Revision != ready[0].Revision ||
		strings.Join(ready[1].Adapters, ",") != "billing" {
		t.Fatalf("pool members' inference.ready: %+v", ready)
	}
	ask := func(model string) (string, string) {
		t.Helper()
		body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
		resp, err := http.Post(ready[0].URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Status + " " + string(b), resp.Header.Get(sim.HeaderReplica)
	}
	a, podA := ask("support")
	b, podB := ask("billing")
	if !strings.Contains(a, serve.LoRAName("support", imgA)) || !strings.Contains(b, serve.LoRAName("billing", imgB)) || podA != podB {
		t.Fatalf("support: %s (%s)\nbilling: %s (%s)", a, podA, b, podB)
	}
	resp, _ := http.Post(ready[0].URL+"/chat", "application/json", strings.NewReader(`{"prompt":"hi"}`))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("/chat without a model in a pool: %d", resp.StatusCode)
	}
	resp.Body.Close()
	// Another base model cannot join: it would need other pods.
	if _, err := fn.Handle(ctx, events.Must(events.New("test", events.ImagePushed, events.ImagePushed, events.Ref{Namespace: "default", Name: "qwen", Generation: 1},
		events.ImagePushedData{Workspace: member("qwen", "qwen2.5-7b-instruct"), Reference: imgA}, nil))); err == nil || !strings.Contains(err.Error(), "serving pool phi3-pool") {
		t.Errorf("a member of another preset: %v", err)
	}
	// support leaves: billing goes on in the same replica, support's adapter goes.
	if _, err := fn.Handle(ctx, events.Must(events.New("test", events.WorkspaceDeleted, events.WorkspaceDeleted, ready[0].Ref, events.WorkspaceDeletedData{}, nil))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, _ = ask("support")
		if strings.Contains(a, "404") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("support still answers after leaving: %s", a)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b, pod := ask("billing"); !strings.Contains(b, serve.LoRAName("billing", imgB)) || pod != podB {
		t.Errorf("billing after support left: %s (%s)", b, pod)
	}
	if _, err := fn.Handle(ctx, events.Must(events.New("test", events.WorkspaceDeleted, events.WorkspaceDeleted, ready[1].Ref, events.WorkspaceDeletedData{}, nil))); err != nil {
		t.Fatal(err)
	}
	if st, _ := dep.Status(ctx, ready[1].Ref); st != nil {
		t.Errorf("the pool is still there: %+v", st)
	}
}

// A Deployer without a Dir keeps its replicas' adapters in a directory of its own, and Close
// removes it: nothing is left under the system's temporary directory.
func TestSimTemporaryDirectoryGoesWithClose(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // the system's temporary directory, for this test alone
	ctx := context.Background()
	dep, fn := startSim(t)
	ws := kaito.Workspace{Inference: &kaito.InferenceSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-4k-instruct"}}}}
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	out, err := fn.Handle(ctx, events.Must(events.New("test", events.NodeReady, events.NodeReady, ref, events.NodeReadyData{Workspace: ws}, nil)))
	var d events.InferenceReadyData
	if err != nil || len(out) != 1 || events.Data(out[0], &d) != nil {
		t.Fatalf("deploy: %v %v", err, out)
	}
	chatVia(t, d.URL)
	made, _ := filepath.Glob(filepath.Join(tmp, "kaitoflow-sim-*"))
	if len(made) != 1 {
		t.Fatalf("replicas' directories under TMPDIR: %v, want one", made)
	}
	if fi, err := os.Stat(made[0]); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v %v, want owner-only", made[0], fi.Mode(), err)
	}
	dep.Close()
	if left, _ := filepath.Glob(filepath.Join(tmp, "*")); len(left) != 0 {
		t.Errorf("Close left %v", left)
	}
}
