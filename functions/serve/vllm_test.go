package serve_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/dataplane/vllmsim"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/serve/knative"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/presets"
)

// TestRealVLLM holds kaitoflow's serving path against a real vLLM (its CPU build) rather than the
// sim: vLLM started with the model container's arguments and environment as serve's Knative
// builder makes them, on a tiny model, with kaitoflow's chat-proxy and adapter reconciler in
// front, loading adapters the real trainer trained, pulled from a registry, through vLLM's runtime
// LoRA API. Then the sim's answers are held against vLLM's for the same calls.
//
//	KAITOFLOW_VLLM_PYTHON=$(hack/ml-env.sh vllm) KAITOFLOW_ML_PYTHON=$(hack/ml-env.sh) \
//	  go test ./functions/serve/ -run TestRealVLLM -v -timeout 20m
//
// One vLLM start and one restart (about a minute each on two cores) are most of its time; the
// adapters are trained while vLLM loads.
func TestRealVLLM(t *testing.T) {
	vllmPython, mlPython := testenv.VLLMPythons(t)
	// Everything is bounded, and ends before go test's own deadline would kill the binary and
	// leave no cleanup to stop vLLM.
	deadline := time.Now().Add(15 * time.Minute)
	if d, ok := t.Deadline(); ok && d.Add(-30*time.Second).Before(deadline) {
		deadline = d.Add(-30 * time.Second)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	began := time.Now()

	// The seed workspace's inference Service as serve's Knative builder makes it. The pod does not
	// depend on the adapter (a new adapter changes the set, not the pod), so it is built before
	// the adapters exist, with the tag they will be pushed under.
	registry := testenv.Registry(t)
	seed := seedDeployment(t)
	deployment := func(generation int64, image string) serve.Deployment {
		d := seed
		d.Ref.Generation = generation
		d.Adapters = []serve.Adapter{{Name: seed.Workspace.Name, Image: image, Strength: "1.0"}}
		return d
	}
	modelC, proxyC := builtContainers(t, deployment(1, registry+"/tuned:v1"))
	public := seed.Workspace.Name // the workspace's model name, which clients send

	tiny := testenv.TinyModel(t, mlPython)
	addr := testenv.FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	args := vllmArgs(t, modelC.Args, tiny.Model, port)
	served := argAfter(args, "--served-model-name")
	vllm := testenv.StartVLLM(t, vllmPython, args, vllmEnv(t, modelC.Env, t.TempDir()))
	vllmURL, _ := url.Parse(vllm.URL)
	t.Logf("vllm serve %s", strings.Join(args, " "))

	// While vLLM loads: two adapters of the rank the server takes (other seeds), and one of twice
	// that rank.
	maxRank, _ := strconv.Atoi(argAfter(args, "--max-lora-rank"))
	dirs := trainAdapters(t, ctx, mlPython, tiny, []int{maxRank, maxRank, 2 * maxRank})
	images := make([]string, len(dirs))
	for i, dir := range dirs {
		images[i] = pushAdapter(t, registry, "tuned", fmt.Sprintf("v%d", i+1), dir)
	}
	t.Logf("adapters trained and pushed after %s", time.Since(began).Round(time.Second))

	// chat-proxy as the builder runs it: its upstream and model from its command line (the
	// upstream's port is vLLM's here), reconciling the adapter set the deployer would write.
	upstream, err := url.Parse(argAfter(proxyC.Command, "--upstream"))
	if err != nil || upstream.Port() == "" {
		t.Fatalf("chat-proxy --upstream %q: %v", argAfter(proxyC.Command, "--upstream"), err)
	}
	upstream.Host = net.JoinHostPort(upstream.Hostname(), port)
	if upstream.String() != vllmURL.String() {
		t.Fatalf("chat-proxy's upstream %s is not vLLM's %s", upstream, vllmURL)
	}
	logs := &testenv.SyncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("chat-proxy's log:\n%s", logs.String())
		}
	})
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := &chatproxy.AdapterManager{Runtime: upstream, Dir: t.TempDir(), Pull: chatproxy.RegistryPuller(nil), Replica: "real-vllm", Log: log,
		// chat-proxy keeps an adapter no route names for a minute, for requests routed to it
		// just before the move; here it goes at once, so the test sees vLLM unload it.
		UnloadAfter: 0}
	proxy := &chatproxy.Proxy{Upstream: upstream, Model: argAfter(proxyC.Command, "--model"), Adapters: m, Log: log}
	front := httptest.NewServer(proxy.Handler())
	defer front.Close()
	admin := httptest.NewServer(proxy.AdminHandler())
	defer admin.Close()
	sets := make([]chatproxy.AdapterSet, len(images))
	loras := make([]string, len(images))
	for i, img := range images {
		sets[i] = knative.AdapterSet(deployment(int64(i+1), img), int64(i+1))
		loras[i] = sets[i].Routes[public]
	}
	var current atomic.Pointer[chatproxy.AdapterSet]
	current.Store(&sets[0])
	runCtx, stopRun := context.WithCancel(ctx)
	var running sync.WaitGroup
	running.Add(1)
	defer func() { stopRun(); running.Wait() }()
	go func() {
		defer running.Done()
		// chat-proxy reads the mounted set every 2 s (--adapter-poll); more often here.
		m.Run(runCtx, func(context.Context) (chatproxy.AdapterSet, error) { return *current.Load(), nil }, 500*time.Millisecond)
	}()

	if err := vllm.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	ready := time.Now()
	t.Logf("vLLM ready after %s", ready.Sub(began).Round(time.Second))

	c := &client{t: t, ctx: ctx}
	var coldStart time.Duration
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("adapter loaded, probed, routed", func(t *testing.T) {
		waitFor(t, ctx, 3*time.Minute, "the first set applied", func() (bool, string) { return m.Applied() == 1, m.Failure() })
		coldStart = time.Since(ready)
		t.Logf("set applied %s after vLLM was ready", coldStart.Round(100*time.Millisecond))
		if code, body := c.get(front.URL + "/health"); code != http.StatusOK {
			t.Errorf("chat-proxy /health: %d %s", code, body)
		}
		if st := adminStatus(t, c, admin.URL); st.Version != 1 || !slices.Equal(st.Loaded, loras[:1]) || st.Routes[public] != loras[0] || !st.ModelReady || st.Error != "" {
			t.Errorf("GET /adapters: %+v", st)
		}
		// vLLM lists the adapter under its name, loaded from where chat-proxy unpacked the image.
		held := vllmModels(t, c, vllm.URL)
		if e, ok := held[loras[0]]; !ok || e.Parent != served || e.Root != filepath.Join(m.Dir, loras[0]) {
			t.Errorf("vLLM /v1/models: %+v", held)
		}
		chatAnswersAs(t, c, front.URL, public, loras[0])
		// Kaito's /chat, by the default route.
		code, body := c.post(front.URL+"/chat", `{"prompt":"What is two plus two ?","generate_kwargs":{"max_new_tokens":6,"temperature":0}}`)
		var kaito struct{ Result *string }
		if code != http.StatusOK || json.Unmarshal([]byte(body), &kaito) != nil || kaito.Result == nil {
			t.Errorf("POST /chat: %d %s", code, body)
		}
		// The adapter, not the base model, answers: greedy next-token log-probabilities differ.
		adapted, base := topLogprobs(t, c, front.URL, public), topLogprobs(t, c, front.URL, served)
		if moved := maxDiff(adapted, base); moved < 1e-3 {
			t.Errorf("the adapter moves the log-probabilities by %g: %v vs the base model's %v", moved, adapted, base)
		}
		// The proxy's /v1/models adds the public name, rooted at the adapter answering for it.
		code, body = c.get(front.URL + "/v1/models")
		if code != http.StatusOK || !strings.Contains(body, `"id":"`+public+`"`) || !strings.Contains(body, `"root":"`+loras[0]+`"`) {
			t.Errorf("chat-proxy /v1/models: %d %s", code, body)
		}
	})

	step("second set version live, first unloaded", func(t *testing.T) {
		current.Store(&sets[1])
		m.Notify()
		waitFor(t, ctx, 2*time.Minute, "the second set applied", func() (bool, string) { return m.Applied() == 2, m.Failure() })
		waitFor(t, ctx, 30*time.Second, "the first adapter unloaded from vLLM", func() (bool, string) {
			held := vllmModels(t, c, vllm.URL)
			_, first := held[loras[0]]
			_, second := held[loras[1]]
			return !first && second, fmt.Sprint(keys(held))
		})
		chatAnswersAs(t, c, front.URL, public, loras[1])
		if _, err := os.Stat(filepath.Join(m.Dir, loras[0])); !os.IsNotExist(err) {
			t.Errorf("the first adapter's files are still there: %v", err)
		}
	})

	step("restarted vLLM noticed, set reloaded", func(t *testing.T) {
		vllm.Kill() // as a crashed container goes: at once, with its engine processes
		if code, body := c.get(front.URL + "/health"); code != http.StatusServiceUnavailable {
			t.Errorf("chat-proxy /health with vLLM down: %d %s", code, body)
		}
		if err := vllm.Start(); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		if err := vllm.Ready(ctx); err != nil {
			t.Fatal(err)
		}
		up := time.Now()
		t.Logf("vLLM restarted in %s", up.Sub(restarted).Round(time.Second))
		// Only the manager loads adapters: vLLM holding the second one again is its reload.
		waitFor(t, ctx, time.Minute, "the set reloaded into the restarted vLLM", func() (bool, string) {
			_, ok := vllmModels(t, c, vllm.URL)[loras[1]]
			return ok && m.Applied() == 2, m.Failure()
		})
		t.Logf("set reloaded %s after vLLM was ready again", time.Since(up).Round(100*time.Millisecond))
		if code, body := c.get(front.URL + "/health"); code != http.StatusOK {
			t.Errorf("chat-proxy /health: %d %s", code, body)
		}
		chatAnswersAs(t, c, front.URL, public, loras[1])
	})

	step("adapter above --max-lora-rank fails with vLLM's message", func(t *testing.T) {
		current.Store(&sets[2])
		m.Notify()
		// Reported once it has failed three times (a registry blip is retried, not reported).
		waitFor(t, ctx, time.Minute, "the set's failure reported", func() (bool, string) { return m.Failure() != "", "" })
		want := fmt.Sprintf("LoRA rank %d is greater than max_lora_rank %d.", 2*maxRank, maxRank)
		st := adminStatus(t, c, admin.URL)
		if !strings.Contains(st.Error, want) || st.Version != 2 || st.Pending != 3 {
			t.Errorf("GET /adapters: %+v, want the error to say %q", st, want)
		}
		t.Logf("the replica reports: %s", st.Error)
		if _, ok := vllmModels(t, c, vllm.URL)[loras[2]]; ok {
			t.Error("vLLM lists the adapter it refused")
		}
		// The previous set keeps answering.
		chatAnswersAs(t, c, front.URL, public, loras[1])
	})

	step("the sim answers as vLLM does", func(t *testing.T) {
		sim := httptest.NewServer(vllmsim.For(args).Handler())
		defer sim.Close()
		nowhere := filepath.Join(t.TempDir(), "no-adapter")
		lora := func(name, path string) string {
			b, _ := json.Marshal(map[string]string{"lora_name": name, "lora_path": path})
			return string(b)
		}
		completion := func(model string, chat, stream bool) string {
			req := map[string]any{"model": model, "max_tokens": 3, "temperature": 0, "stream": stream,
				// vLLM's: generation goes on past the end token, so every answer is max_tokens long
				// (the sim ignores it: its answers are longer than that).
				"ignore_eos": true}
			if chat {
				req["messages"] = []map[string]string{{"role": "user", "content": "What is two plus two ?"}}
			} else {
				req["prompt"] = "What is two plus"
			}
			b, _ := json.Marshal(req)
			return string(b)
		}
		for _, call := range []struct{ method, path, body string }{
			{"GET", "/health", ""},
			{"POST", "/v1/load_lora_adapter", lora("cmp-a", dirs[0])},
			{"POST", "/v1/load_lora_adapter", lora("cmp-a", dirs[0])},           // loaded already
			{"POST", "/v1/load_lora_adapter", lora("cmp-x", nowhere)},           // no adapter there
			{"POST", "/v1/load_lora_adapter", lora(served, dirs[0])},            // the base model's name
			{"POST", "/v1/load_lora_adapter", lora("cmp-c", dirs[2])},           // above --max-lora-rank
			{"POST", "/v1/load_lora_adapter", lora("", "")},                     // empty fields
			{"POST", "/v1/load_lora_adapter", `{"lora_name":"cmp-x"}`},          // a missing field
			{"POST", "/v1/load_lora_adapter", `{}`},                             // both missing
			{"POST", "/v1/load_lora_adapter", `not json`},                       // not JSON
			{"GET", "/v1/models", ""},                                           // base and cmp-a
			{"POST", "/v1/completions", completion("cmp-a", false, false)},      // an adapter
			{"POST", "/v1/completions", completion("", false, false)},           // no model: the base
			{"POST", "/v1/completions", completion("cmp-nope", false, false)},   // not served
			{"POST", "/v1/completions", completion("cmp-a", false, true)},       // streamed
			{"POST", "/v1/chat/completions", completion(served, true, false)},   // the base model
			{"POST", "/v1/chat/completions", completion("cmp-a", true, true)},   // streamed
			{"POST", "/v1/chat/completions", `{"model":"cmp-a","messages":[]}`}, // no message
			{"POST", "/v1/unload_lora_adapter", `{"lora_name":"cmp-a"}`},        // unloaded
			{"POST", "/v1/unload_lora_adapter", `{"lora_name":"cmp-a"}`},        // gone already
			{"POST", "/v1/unload_lora_adapter", `{"lora_name":""}`},             // empty
			{"POST", "/v1/unload_lora_adapter", `{}`},                           // missing
			{"POST", "/v1/load_lora_adapter", lora("cmp-a", dirs[0])},           // loads again after an unload
			{"POST", "/v1/no_such_route", `{}`},                                 // FastAPI's 404
			{"POST", "/v1/unload_lora_adapter", `{"lora_name":"cmp-a"}`},        // as it was
		} {
			real, simulated := c.do(call.method, vllm.URL+call.path, call.body), c.do(call.method, sim.URL+call.path, call.body)
			if call.path == "/v1/models" {
				// vLLM also holds the manager's adapter: compare the entries both hold.
				real.body = onlyModels(t, real.body, served, "cmp-a")
			}
			if diff := compareAnswers(real, simulated); diff != "" {
				t.Errorf("%s %s %s: the sim differs from vLLM: %s\n  vLLM: %d %q %s\n  sim:  %d %q %s", call.method, call.path, call.body, diff,
					real.code, real.contentType, real.body, simulated.code, simulated.contentType, simulated.body)
			}
		}
	})
	// chat-proxy starts beside a model server that loads for minutes; once the model answers, the
	// set should load at the next look (every 500 ms here). How long it took depends on when the
	// adapters were pushed, so it is reported, not checked: a replica that retries a loading model
	// with the back-off of a failing set stays unready for as long again.
	if coldStart > 5*time.Second {
		t.Logf("NOTE: the first set was applied %s after vLLM was ready: chat-proxy backed off from the model server while it loaded",
			coldStart.Round(100*time.Millisecond))
	}
	t.Logf("TestRealVLLM took %s", time.Since(began).Round(time.Second))
}

// The sim, set up from the model container's arguments as the builder makes them, answers the
// runtime LoRA API and a model it does not serve as vLLM 0.32.0 answered TestRealVLLM, byte for
// byte (that test holds the rest of its answers against a running vLLM).
func TestSimRuntimeAnswersAsVLLM(t *testing.T) {
	modelC, _ := builtContainers(t, seedDeployment(t))
	rt := vllmsim.For(modelC.Args)
	if rt.Base != "phi-3-mini-128k-instruct" || rt.Root != "microsoft/Phi-3-mini-128k-instruct" || rt.MaxModelLen == 0 || rt.MaxLoRARank != 8 {
		t.Fatalf("vllmsim.For(%v) = %+v", modelC.Args, rt)
	}
	srv := httptest.NewServer(rt.Handler())
	defer srv.Close()
	write := func(config string) string {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	ok, wide := write(`{"peft_type":"LORA","r":8}`), write(`{"peft_type":"LORA","r":16}`)
	c := &client{t: t, ctx: context.Background()}
	for _, step := range []struct {
		path, body string
		code       int
		want       string
	}{
		{"/v1/load_lora_adapter", `{"lora_name":"a","lora_path":"` + ok + `"}`, 200, `Success: LoRA adapter 'a' added successfully.`},
		{"/v1/load_lora_adapter", `{"lora_name":"a","lora_path":"` + ok + `"}`, 400,
			`{"error":{"message":"The lora adapter 'a' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True.","type":"InvalidUserInput","param":null,"code":400}}`},
		{"/v1/load_lora_adapter", `{"lora_name":"x","lora_path":"/mnt/adapters/x"}`, 404,
			`{"error":{"message":"Loading lora x failed: No adapter found for <path>","type":"NotFoundError","param":null,"code":404}}`},
		{"/v1/load_lora_adapter", `{"lora_name":"c","lora_path":"` + wide + `"}`, 500,
			`{"error":{"message":"Call to add_lora method failed: Worker failed with error 'LoRA rank 16 is greater than max_lora_rank 8.', please check the stack trace above for the root cause","type":"InternalServerError","param":null,"code":500}}`},
		{"/v1/load_lora_adapter", `{"lora_name":"x"}`, 400,
			`{"error":{"message":"1 validation error:\n  {'type': 'missing', 'loc': 'body.lora_path', 'msg': 'Field required', 'input': '<dict of 1 items>'}","type":"Bad Request","param":"body.lora_path","code":400}}`},
		{"/v1/completions", `{"model":"nope","prompt":"ping","max_tokens":1}`, 404,
			`{"error":{"message":"The model ` + "`nope`" + ` does not exist. Valid aliases: phi-3-mini-128k-instruct.","type":"NotFoundError","param":"model","code":404}}`},
		{"/v1/unload_lora_adapter", `{"lora_name":"a"}`, 200, `Success: LoRA adapter 'a' removed successfully.`},
		{"/v1/unload_lora_adapter", `{"lora_name":"a"}`, 404,
			`{"error":{"message":"The lora adapter 'a' cannot be found.","type":"NotFoundError","param":null,"code":404}}`},
	} {
		a := c.do(http.MethodPost, srv.URL+step.path, step.body)
		if a.code != step.code || a.body != step.want {
			t.Errorf("POST %s %s: %d %s\nwant %d %s", step.path, step.body, a.code, a.body, step.code, step.want)
		}
	}
}

// seedDeployment is the seed workspace's tuned adapter as serve deploys it.
func seedDeployment(t *testing.T) serve.Deployment {
	t.Helper()
	ws, plan := testenv.Seed(t, "default")
	ref := events.Ref{Namespace: "default", Name: ws.Name, Generation: 1}
	return serve.Deployment{Ref: ref, Service: serve.ServiceName(ref), Workspace: *ws, Plan: plan,
		Adapters: []serve.Adapter{{Name: ws.Name, Image: "registry.example/tuned@sha256:" + strings.Repeat("a", 64), Strength: "1.0"}}}
}

// builtContainers are the model server's and chat-proxy's containers of the Service serve's
// Knative builder makes for d.
func builtContainers(t *testing.T, d serve.Deployment) (model, proxy corev1.Container) {
	t.Helper()
	cat, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	rt, err := (&knative.Deployer{Catalog: cat}).Runtime(d)
	if err != nil {
		t.Fatal(err)
	}
	opts := knative.DefaultOptions()
	opts.ProxyImage = "example.azurecr.io/kaitoflow/kaitoflow:test" // required; nothing pulls it here
	svc, err := knative.BuildService(d, rt, opts)
	if err != nil {
		t.Fatal(err)
	}
	var found int
	for _, c := range svc.Spec.Template.Spec.Containers {
		switch c.Name {
		case "model":
			model, found = c, found+1
		case "chat-proxy":
			proxy, found = c, found+1
		}
	}
	if found != 2 {
		t.Fatalf("the built Service has no model and chat-proxy containers: %+v", svc.Spec.Template.Spec.Containers)
	}
	return model, proxy
}

// vllmArgs are the model container's arguments with what must differ on this machine replaced,
// each for the reason given; everything else (the served name, dtype, LoRA settings, host) is the
// builder's. A flag the builder stopped passing fails the test rather than passing unreplaced.
func vllmArgs(t *testing.T, built []string, modelDir, port string) []string {
	t.Helper()
	args := slices.Clone(built)
	set := func(flag, value string) {
		i := slices.Index(args, flag)
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("the model container's arguments %v have no %s", built, flag)
		}
		args[i+1] = value
	}
	// The model: the tiny model's directory in place of the preset's Hugging Face repository
	// (nothing is downloaded in a test)...
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		t.Fatalf("the model container's arguments %v do not start with the model", built)
	}
	args[0] = modelDir
	// ...and no --revision: a directory has none.
	i := slices.Index(args, "--revision")
	if i < 0 {
		t.Fatalf("the model container's arguments %v have no --revision", built)
	}
	args = slices.Delete(args, i, i+2)
	// The tiny model's context is far shorter than the preset's, and vLLM refuses a
	// --max-model-len above the model's.
	var cfg struct {
		MaxPositions int `json:"max_position_embeddings"`
	}
	if b, err := os.ReadFile(filepath.Join(modelDir, "config.json")); err != nil || json.Unmarshal(b, &cfg) != nil || cfg.MaxPositions == 0 {
		t.Fatalf("the tiny model's config.json: %v", err)
	}
	set("--max-model-len", strconv.Itoa(cfg.MaxPositions))
	// On a CPU vLLM reserves this share of the machine's memory for its KV cache: the GPU's
	// 0.90 fails ("Available memory on node 0 ... is less than desired CPU memory utilization").
	set("--gpu-memory-utilization", "0.05")
	// A free port: the pod's 8000 may be taken here.
	set("--port", port)
	return args
}

// vllmEnv is the model container's environment as this process's environment entries, with the
// weights cache in cache (the pod's cache volume) and the Hub offline.
func vllmEnv(t *testing.T, built []corev1.EnvVar, cache string) []string {
	t.Helper()
	var env []string
	for _, e := range built {
		if e.ValueFrom != nil {
			t.Fatalf("env %s comes from %+v, which a test cannot resolve", e.Name, e.ValueFrom)
		}
		if e.Name == "HF_HOME" {
			e.Value = cache // the pod's cache volume
		}
		env = append(env, e.Name+"="+e.Value)
	}
	if !slices.Contains(env, "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True") {
		t.Fatalf("the model container's environment %v does not enable runtime LoRA updating", env)
	}
	// Nothing is downloaded in a test: the model is a directory, and anything reaching for the Hub
	// fails at once instead of waiting on a network this machine may not have.
	return append(env, "HF_HUB_OFFLINE=1")
}

// trainAdapters trains a LoRA adapter of each rank on the tiny model with the trainer's own entry
// point (the tuning Job's command), each with its own seed; it returns their directories. One at a
// time: vLLM loads meanwhile, and on two cores more trainers at once only slow it down.
func trainAdapters(t *testing.T, ctx context.Context, python string, tiny testenv.Tiny, ranks []int) []string {
	t.Helper()
	root := t.TempDir()
	dirs := make([]string, len(ranks))
	for i, rank := range ranks {
		dirs[i] = filepath.Join(root, fmt.Sprintf("adapter-%d", i))
		dataset := map[string]any{"train_test_split": 0.8, "max_seq_length": 64}
		for k, v := range tiny.DatasetConfig {
			dataset[k] = v
		}
		cfg, _ := json.Marshal(map[string]any{"training_config": map[string]any{
			"ModelConfig": map[string]any{"torch_dtype": "float32", "device_map": "auto"},
			"LoraConfig": map[string]any{"r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
				"target_modules": []string{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}},
			// A few steps at a high rate move the adapter well away from the base model.
			"TrainingArguments": map[string]any{"output_dir": dirs[i], "max_steps": 12, "learning_rate": 0.01, "per_device_train_batch_size": 4,
				"logging_steps": 4, "save_strategy": "no", "seed": i},
			"DatasetConfig": dataset,
		}})
		cfgPath := filepath.Join(root, fmt.Sprintf("training_config-%d.yaml", i))
		if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		cmd := exec.CommandContext(cctx, python, "-m", "kaitoflow_trainer.train", "--method", "lora", "--model", tiny.Model,
			"--config", cfgPath, "--input-dir", tiny.Data)
		termination := filepath.Join(root, fmt.Sprintf("termination-log-%d", i))
		cmd.Env = append(append(os.Environ(), testenv.TrainerEnv(t, root)...), "KAITOFLOW_TERMINATION_LOG="+termination)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			reason, _ := os.ReadFile(termination)
			t.Fatalf("train the rank %d adapter: %v: %s\n%s", rank, err, reason, tail(out, 4000))
		}
	}
	return dirs
}

// pushAdapter lays the adapter in dir out as publish does (Kaito's image layout) and pushes it to
// registry/repo:tag; it returns the image's digest reference.
func pushAdapter(t *testing.T, registry, repo, tag, dir string) string {
	t.Helper()
	var files []events.AdapterFile
	for _, f := range []string{"adapter_config.json", "adapter_model.safetensors"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("the trainer left no %s: %v", f, err)
		}
		files = append(files, events.AdapterFile{Path: f, Size: st.Size()})
	}
	return testenv.PushAdapterFiles(t, registry, repo, tag, dir, files)
}

// chatAnswersAs checks that the public model name answers through chat-proxy with the adapter
// lora, streamed and not.
func chatAnswersAs(t *testing.T, c *client, front, public, lora string) {
	t.Helper()
	body := `{"model":"` + public + `","messages":[{"role":"user","content":"What is two plus two ?"}],"max_tokens":4,"temperature":0}`
	code, out := c.post(front+"/v1/chat/completions", body)
	var answer struct {
		Model   string
		Choices []struct{ Message struct{ Role string } }
	}
	if code != http.StatusOK || json.Unmarshal([]byte(out), &answer) != nil || answer.Model != lora || len(answer.Choices) != 1 || answer.Choices[0].Message.Role != "assistant" {
		t.Errorf("chat as %s: %d %s, want an answer from %s", public, code, out, lora)
	}
	a := c.do(http.MethodPost, front+"/v1/chat/completions", strings.Replace(body, `"temperature":0`, `"temperature":0,"stream":true`, 1))
	if a.code != http.StatusOK || !strings.HasPrefix(a.contentType, "text/event-stream") {
		t.Fatalf("streamed chat as %s: %d %q %s", public, a.code, a.contentType, a.body)
	}
	chunks, finished, done := 0, false, false
	for sc := bufio.NewScanner(strings.NewReader(a.body)); sc.Scan(); {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var chunk struct {
			Model   string
			Choices []struct {
				FinishReason *string `json:"finish_reason"`
			}
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil || chunk.Model != lora || len(chunk.Choices) != 1 {
			t.Errorf("streamed chat as %s: chunk %s, want one from %s", public, data, lora)
			continue
		}
		chunks++
		finished = finished || chunk.Choices[0].FinishReason != nil
	}
	if chunks < 2 || !finished || !done {
		t.Errorf("streamed chat as %s: %d chunks, finished %v, [DONE] %v:\n%s", public, chunks, finished, done, a.body)
	}
}

// topLogprobs are the log-probabilities of the five likeliest next tokens model gives a prompt,
// asked through chat-proxy.
func topLogprobs(t *testing.T, c *client, front, model string) map[string]float64 {
	t.Helper()
	code, body := c.post(front+"/v1/completions", `{"model":"`+model+`","prompt":"What is two plus two ?","max_tokens":1,"temperature":0,"logprobs":5}`)
	var out struct {
		Choices []struct {
			Logprobs struct {
				TopLogprobs []map[string]float64 `json:"top_logprobs"`
			}
		}
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &out) != nil || len(out.Choices) != 1 || len(out.Choices[0].Logprobs.TopLogprobs) != 1 {
		t.Fatalf("completion from %s with logprobs: %d %s", model, code, body)
	}
	return out.Choices[0].Logprobs.TopLogprobs[0]
}

// maxDiff is how far apart two tokens-to-log-probability maps are: the largest difference of a
// token both hold, or infinity-like when they hold different tokens.
func maxDiff(a, b map[string]float64) float64 {
	d := 0.0
	for tok, p := range a {
		q, ok := b[tok]
		if !ok {
			return 1e9
		}
		d = max(d, p-q, q-p)
	}
	return d
}

type modelEntry struct{ Root, Parent string }

// vllmModels are the models vLLM's GET /v1/models lists, by id.
func vllmModels(t *testing.T, c *client, vllmURL string) map[string]modelEntry {
	t.Helper()
	code, body := c.get(vllmURL + "/v1/models")
	var list struct {
		Data []struct {
			ID     string  `json:"id"`
			Root   string  `json:"root"`
			Parent *string `json:"parent"`
		}
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil {
		t.Fatalf("vLLM /v1/models: %d %s", code, body)
	}
	out := map[string]modelEntry{}
	for _, d := range list.Data {
		e := modelEntry{Root: d.Root}
		if d.Parent != nil {
			e.Parent = *d.Parent
		}
		out[d.ID] = e
	}
	return out
}

func adminStatus(t *testing.T, c *client, admin string) chatproxy.ReplicaAdapters {
	t.Helper()
	code, body := c.get(admin + "/adapters")
	var st chatproxy.ReplicaAdapters
	if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
		t.Fatalf("GET /adapters: %d %s", code, body)
	}
	return st
}

// onlyModels keeps the entries of a /v1/models answer with the given ids.
func onlyModels(t *testing.T, body string, ids ...string) string {
	t.Helper()
	var list map[string]any
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("/v1/models: %v: %s", err, body)
	}
	data, _ := list["data"].([]any)
	list["data"] = slices.DeleteFunc(data, func(e any) bool {
		m, _ := e.(map[string]any)
		id, _ := m["id"].(string)
		return !slices.Contains(ids, id)
	})
	b, _ := json.Marshal(list)
	return string(b)
}

// compareAnswers says how the sim's answer differs from vLLM's, empty when it does not: the same
// status and content type, and a body that is the same text, or JSON whose every field the sim
// sends vLLM sends alike (vLLM sends more, mostly nulls), values that vary from answer to answer
// (ids, times, generated text, token counts) aside. A stream is compared event by event, runs of
// events alike counting as one: the sim's words are not vLLM's tokens.
func compareAnswers(real, sim answer) string {
	if real.code != sim.code {
		return fmt.Sprintf("status %d, vLLM's %d", sim.code, real.code)
	}
	if real.contentType != sim.contentType {
		return fmt.Sprintf("content type %q, vLLM's %q", sim.contentType, real.contentType)
	}
	if strings.HasPrefix(real.contentType, "text/event-stream") {
		r, s := streamEvents(real.body), streamEvents(sim.body)
		if len(r) != len(s) {
			return fmt.Sprintf("%d kinds of events, vLLM's %d", len(s), len(r))
		}
		for i := range r {
			if d := subsumes(r[i], s[i], "event "+strconv.Itoa(i)); d != "" {
				return d
			}
		}
		return ""
	}
	var r, s any
	if json.Unmarshal([]byte(real.body), &r) != nil || json.Unmarshal([]byte(sim.body), &s) != nil {
		if real.body != sim.body {
			return "another body"
		}
		return ""
	}
	return subsumes(normal(r, ""), normal(s, ""), "body")
}

// streamEvents are a stream's events, normalised, runs of equal ones made one.
func streamEvents(stream string) []any {
	var out []any
	for sc := bufio.NewScanner(strings.NewReader(stream)); sc.Scan(); {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var v any = data
		if data != "[DONE]" {
			if err := json.Unmarshal([]byte(data), &v); err != nil {
				v = "not JSON: " + data
			}
			v = normal(v, "")
		}
		if len(out) > 0 {
			a, _ := json.Marshal(out[len(out)-1])
			b, _ := json.Marshal(v)
			if bytes.Equal(a, b) {
				continue
			}
		}
		out = append(out, v)
	}
	return out
}

// normal replaces what varies from one answer to the next with what kind of value it is.
func normal(v any, key string) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = normal(e, k)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normal(e, key)
		}
		return out
	case string:
		switch {
		case key == "id" && (strings.HasPrefix(x, "cmpl-") || strings.HasPrefix(x, "chatcmpl-") || strings.HasPrefix(x, "modelperm-")):
			return "<id>"
		case key == "system_fingerprint":
			return "<fingerprint>"
		case key == "text" || key == "content":
			return "<text>" // a token's text may be empty
		}
	case float64:
		switch key {
		case "created":
			return "<time>"
		case "prompt_tokens", "completion_tokens", "total_tokens":
			return "<count>"
		}
	}
	return v
}

// subsumes says where sim has a field real has not, or has otherwise; empty when it has none.
func subsumes(real, sim any, at string) string {
	switch s := sim.(type) {
	case map[string]any:
		r, ok := real.(map[string]any)
		if !ok {
			return fmt.Sprintf("%s: an object, vLLM's %v", at, real)
		}
		for k, v := range s {
			rv, ok := r[k]
			if !ok {
				return fmt.Sprintf("%s.%s: vLLM has no such field", at, k)
			}
			if d := subsumes(rv, v, at+"."+k); d != "" {
				return d
			}
		}
		return ""
	case []any:
		r, ok := real.([]any)
		if !ok || len(r) != len(s) {
			return fmt.Sprintf("%s: %d items, vLLM's %v", at, len(s), real)
		}
		for i := range s {
			if d := subsumes(r[i], s[i], at+"["+strconv.Itoa(i)+"]"); d != "" {
				return d
			}
		}
		return ""
	}
	a, _ := json.Marshal(real)
	b, _ := json.Marshal(sim)
	if !bytes.Equal(a, b) {
		return fmt.Sprintf("%s: %s, vLLM's %s", at, b, a)
	}
	return ""
}

// waitFor polls ok until it holds or within has passed (failing t with what ok last said).
func waitFor(t *testing.T, ctx context.Context, within time.Duration, what string, ok func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		done, why := ok()
		if done {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: not within %s (%s)", what, within, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type answer struct {
	code              int
	contentType, body string
}

// client makes the test's HTTP calls, each bounded.
type client struct {
	t   *testing.T
	ctx context.Context
}

func (c *client) do(method, url, body string) answer {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Minute)
	defer cancel()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{code: 0, body: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: string(b)}
}

func (c *client) get(url string) (int, string) {
	c.t.Helper()
	a := c.do(http.MethodGet, url, "")
	return a.code, a.body
}

func (c *client) post(url, body string) (int, string) {
	c.t.Helper()
	a := c.do(http.MethodPost, url, body)
	return a.code, a.body
}

func argAfter(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

func keys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
