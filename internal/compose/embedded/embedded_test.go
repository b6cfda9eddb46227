package embedded

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"go.opentelemetry.io/otel/trace"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/serve/sim"
	"github.com/kaitoflow/kaitoflow/internal/compose/api"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

const seedPath = "../../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"

func start(t *testing.T, opts ...func(*assembly.Config)) *Pipeline {
	t.Helper()
	return startTraced(t, nil, opts...)
}

// startTraced is start with the pipeline's spans going to tp.
func startTraced(t *testing.T, tp trace.TracerProvider, opts ...func(*assembly.Config)) *Pipeline {
	t.Helper()
	return startWith(t, startOptions{tracer: tp}, opts...)
}

// startOptions are what startWith changes of start's pipeline: where its spans go, how often
// kaitoflow.tick comes (0: the default) and its logger (nil: none).
type startOptions struct {
	tracer trace.TracerProvider
	tick   time.Duration
	log    *slog.Logger
}

// startWith is start with so's tracer, tick and logger.
func startWith(t *testing.T, so startOptions, opts ...func(*assembly.Config)) *Pipeline {
	t.Helper()
	if so.log == nil {
		so.log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fns := assembly.Config{
		// Datasets (and the stand-in Hub) served by the tests themselves live on loopback.
		Policy: netguard.AddressPolicy{Allow: []string{"127.0.0.1"}},
		// More simulated trainer processes at once than CPUs: they mostly wait on I/O.
		Sim: assembly.Sim{Parallel: 8},
	}
	for _, o := range opts {
		o(&fns)
	}
	p, err := Start(ctx, Config{
		DataDir:      t.TempDir(),
		Listen:       "127.0.0.1:0",
		Logger:       so.log,
		Delivery:     runtime.JetStreamOptions{AckWait: 5 * time.Second, Backoff: []time.Duration{50 * time.Millisecond}},
		Functions:    fns,
		Tracer:       so.tracer,
		TickInterval: so.tick,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return p
}

func submit(t *testing.T, p *Pipeline, doc []byte) (int, []byte) {
	t.Helper()
	resp, err := http.Post(p.URL+"/v1/workspaces", "application/yaml", bytes.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// complete: the projector applies events concurrently, so inference.ready can land before
// image.pushed; a Ready record is complete once every step it started has ended.
func complete(w *status.Workspace) bool {
	if w.Phase != status.Ready {
		return true
	}
	for _, s := range w.Steps {
		if s.Ended == nil {
			return false
		}
	}
	return len(w.Steps) > 0
}

func waitTerminal(t *testing.T, p *Pipeline, ns, name string, timeout time.Duration) *status.Workspace {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		w, err := p.Store.Get(context.Background(), ns, name)
		if err == nil && w.Phase.Terminal() && w.Phase != status.Pending && complete(w) {
			return w
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s not finished after %s: %+v (err %v)", ns, name, timeout, w, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSeedWorkspaceReachesReady(t *testing.T) {
	p := start(t)
	doc, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	code, body := submit(t, p, doc)
	if code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, body)
	}
	w := waitTerminal(t, p, "default", "workspace-tuning-phi-3", 30*time.Second)
	if w.Phase != status.Ready {
		t.Fatalf("phase %s, failure %+v", w.Phase, w.Failure)
	}
	var got []string
	for _, e := range w.Events {
		// Progress depends on timing (with zero delays the run may finish before its halfway
		// report is looked at), and the tuning capacity's release races serving; every other step
		// must be there, once, in order.
		if e.Type != events.TuningProgress && e.Type != events.CapacityReleased {
			got = append(got, e.Type)
		}
	}
	want := []string{events.WorkspaceRequested, events.NodeReady, events.TuningStarted, events.TuningCompleted, events.ImagePushed, events.InferenceReady}
	if !slices.Equal(got, want) {
		t.Errorf("events:\n got %v\nwant %v", got, want)
	}
	for _, c := range []string{status.CondResourceReady, status.CondJobStarted, status.CondWorkspaceSucceeded, status.CondInferenceReady, status.CondWorkspaceReady} {
		if w.ConditionStatus(c) != "True" {
			t.Errorf("condition %s = %q", c, w.ConditionStatus(c))
		}
	}
	for _, s := range w.Steps {
		if s.Started == nil || s.Ended == nil {
			t.Errorf("step %s not timed: %+v", s.Name, s)
		}
	}

	// The adapter image is in the registry, laid out as Kaito's puller expects.
	ref, err := name.ParseReference(w.Image, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull %s: %v", w.Image, err)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
	layers, _ := img.Layers()
	if len(layers) != 1 {
		t.Fatalf("%d layers", len(layers))
	}
	if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
		t.Errorf("layer media type %s", mt)
	}
	cfg, _ := img.ConfigFile()
	diff, _ := layers[0].DiffID()
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != diff {
		t.Errorf("diff_ids %v, layer %v", cfg.RootFS.DiffIDs, diff)
	}
	rc, _ := layers[0].Uncompressed()
	defer rc.Close()
	tr := tar.NewReader(rc)
	var files []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, h.Name)
		if h.Name == "data/adapter_model.safetensors" {
			b, _ := io.ReadAll(tr)
			n := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
			var hdr map[string]any
			if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
				t.Errorf("safetensors header: %v", err)
			}
		}
	}
	if !slices.Equal(files, []string{"data/", "data/adapter_config.json", "data/adapter_model.safetensors"}) {
		t.Errorf("layer files %v", files)
	}
	m, _ := img.Manifest()
	if m.Annotations[`kaitoflow.io/base-model`] != "phi-3-mini-128k-instruct" {
		t.Errorf("annotations %v", m.Annotations)
	}
	if !strings.Contains(w.Provenance, "@sha256:") {
		t.Errorf("the status does not name the training record: %q", w.Provenance)
	}

	// The (sim) chat endpoint answers Kaito's /chat.
	resp, err := http.Post(w.Endpoint+"/chat", "application/json", strings.NewReader(`{"prompt":"hi"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "sim") {
		t.Errorf("chat: %d %s", resp.StatusCode, b)
	}

	// Submitting the same manifest again starts nothing.
	code, body = submit(t, p, doc)
	var res api.SubmitResult
	if err := json.Unmarshal(body, &res); err != nil || code != http.StatusOK || !res.Unchanged || res.Workspace.Generation != 1 {
		t.Errorf("resubmit: %d %s", code, body)
	}
}

// waitGeneration waits until the workspace's record is at generation gen and finished.
func waitGeneration(t *testing.T, p *Pipeline, ns, name string, gen int64, timeout time.Duration) *status.Workspace {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		w, err := p.Store.Get(context.Background(), ns, name)
		if err == nil && w.Generation == gen && w.Phase.Terminal() && w.Phase != status.Pending && complete(w) {
			return w
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s not finished at generation %d after %s: %+v (err %v)", ns, name, gen, timeout, w, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// chatAt asks an endpoint's /chat and returns the answer and the (sim) replica that gave it.
func chatAt(t *testing.T, endpoint string) (string, string) {
	t.Helper()
	resp, err := http.Post(endpoint+"/chat", "application/json", strings.NewReader(`{"prompt":"hi"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chat: %d %s", resp.StatusCode, b)
	}
	return string(b), resp.Header.Get(sim.HeaderReplica)
}

// Two generations of the seed in a row in the embedded pipeline: the second is tuned and pushed
// as its own image, and its adapter goes live in the replica that served the first — the same
// simulated pod, no new revision — and answers there.
func TestNextGenerationGoesLiveWithoutARestart(t *testing.T) {
	p := start(t)
	doc, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := submit(t, p, doc); code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, body)
	}
	const ns, name = "default", "workspace-tuning-phi-3"
	w1 := waitGeneration(t, p, ns, name, 1, 30*time.Second)
	if w1.Phase != status.Ready {
		t.Fatalf("generation 1: %s %+v", w1.Phase, w1.Failure)
	}
	answer1, pod1 := chatAt(t, w1.Endpoint)
	if !strings.Contains(answer1, serve.LoRAName(name, w1.Image)) {
		t.Fatalf("generation 1 answered %q", answer1)
	}
	// The next version of the adapter: a new output tag is a new generation.
	if code, body := submit(t, p, bytes.Replace(doc, []byte(":0.0.1"), []byte(":0.0.2"), 1)); code != http.StatusAccepted {
		t.Fatalf("submit generation 2: %d %s", code, body)
	}
	w2 := waitGeneration(t, p, ns, name, 2, 30*time.Second)
	if w2.Phase != status.Ready || w2.Image == w1.Image {
		t.Fatalf("generation 2: %s image %s (generation 1 %s) %+v", w2.Phase, w2.Image, w1.Image, w2.Failure)
	}
	answer2, pod2 := chatAt(t, w2.Endpoint)
	if !strings.Contains(answer2, serve.LoRAName(name, w2.Image)) || pod2 != pod1 || w2.Revision != w1.Revision {
		t.Errorf("generation 2 answered %q from %s (revision %s); want its adapter from %s (revision %s)", answer2, pod2, w2.Revision, pod1, w1.Revision)
	}

	// Roll back to generation 1 (the default: the one before the serving one), then forward to 2:
	// each time the same pod answers with the selected generation's adapter.
	client := &api.Client{BaseURL: p.URL}
	ctx := context.Background()
	for _, step := range []struct {
		ask, want int64
		image     string
	}{{0, 1, w1.Image}, {2, 2, w2.Image}} {
		if _, err := client.Rollback(ctx, name, step.ask); err != nil {
			t.Fatalf("rollback to %d: %v", step.ask, err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			w, err := p.Store.Get(ctx, ns, name)
			if err == nil && w.Serving() == step.want && w.Generation == 2 && w.Phase == status.Ready {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("rollback to %d: the record serves %d: %+v (%v)", step.want, w.Serving(), w, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		answer, pod := chatAt(t, w2.Endpoint)
		if !strings.Contains(answer, serve.LoRAName(name, step.image)) || pod != pod1 {
			t.Errorf("serving generation %d: %q from %s, want its adapter from %s", step.want, answer, pod, pod1)
		}
	}
	// A generation that pushed nothing, or the one serving, is refused with the reason.
	for _, gen := range []int64{2, 7} {
		if _, err := client.Rollback(ctx, name, gen); err == nil || !strings.Contains(err.Error(), "generation") {
			t.Errorf("rollback to %d: %v", gen, err)
		}
	}
}

func TestHundredWorkspacesAllReady(t *testing.T) {
	p := start(t)
	doc, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	// The sim trainer's wrapper really fetches the dataset: serve one here rather than wait on an
	// unreachable Hugging Face a hundred times.
	ds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}`+"\n")
	}))
	defer ds.Close()
	doc = []byte(strings.Replace(string(doc), "https://huggingface.co/datasets/philschmid/dolly-15k-oai-style/resolve/main/data/train-00000-of-00001-54e3756291ca09c6.parquet?download=true", ds.URL+"/dolly.jsonl", 1))
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := strings.Replace(string(doc), "name: workspace-tuning-phi-3", fmt.Sprintf("name: ws-%03d", i), 1)
			resp, err := http.Post(p.URL+"/v1/workspaces", "application/yaml", strings.NewReader(d))
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				errs <- fmt.Errorf("ws-%03d: status %d", i, resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// One deadline for all: under the race detector a hundred trainer processes take a while.
	deadline := time.Now().Add(4 * time.Minute)
	for i := range n {
		w := waitTerminal(t, p, "default", fmt.Sprintf("ws-%03d", i), time.Until(deadline))
		if w.Phase != status.Ready {
			t.Errorf("ws-%03d: %s %+v", i, w.Phase, w.Failure)
		}
	}
	l, err := p.Store.List(context.Background(), "default")
	if err != nil || len(l) != n {
		t.Fatalf("list: %d records, %v", len(l), err)
	}
	// Their dataset was fetched for real: the adapter names its digest.
	ref, _ := name.ParseReference(l[0].Image, name.Insecure)
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := img.Manifest(); !strings.HasPrefix(m.Annotations["kaitoflow.io/dataset-digest"], "sha256:") {
		t.Errorf("no dataset digest on the adapter: %v", m.Annotations)
	}
}

// A misspelt preset or SKU is refused at submit with the field and the name it was probably meant
// to be: before, submit answered 202 and the workspace failed a second later,
// counted as a dead letter.
func TestMistakesRefusedAtSubmit(t *testing.T) {
	p := start(t)
	doc, _ := os.ReadFile(seedPath)
	for _, tc := range []struct{ from, to, field, want string }{
		{"phi-3-mini-128k-instruct", "phi-3-mini-128k-instrct", "tuning.preset.name", "did you mean phi-3-mini-128k-instruct?"},
		{"Standard_NC6s_v3", "Standard_NC6s_v9", "resource.instanceType", "did you mean Standard_NC6s_v3?"},
	} {
		bad := []byte(strings.Replace(string(doc), tc.from, tc.to, 1))
		for _, path := range []string{"/v1/workspaces"} {
			resp, err := http.Post(p.URL+path, "application/yaml", bytes.NewReader(bad))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), tc.want) || !strings.Contains(string(body), `"field": "`+tc.field+`"`) {
				t.Errorf("%s with %s: %d %s", path, tc.to, resp.StatusCode, body)
			}
		}
	}
	if _, err := p.Store.Get(context.Background(), "default", "workspace-tuning-phi-3"); err == nil {
		t.Error("a refused workspace got a status record")
	}
}

func TestInvalidManifestRefusedWithFieldPath(t *testing.T) {
	p := start(t)
	doc, _ := os.ReadFile(seedPath)
	bad := strings.Replace(string(doc), "https://huggingface.co", "http://169.254.169.254", 1)
	code, body := submit(t, p, []byte(bad))
	if code != http.StatusUnprocessableEntity || !strings.Contains(string(body), "tuning.input.urls[0]") {
		t.Fatalf("got %d %s", code, body)
	}
	if _, err := p.Store.Get(context.Background(), "default", "workspace-tuning-phi-3"); err == nil {
		t.Error("an invalid workspace got a status record")
	}
}

// Sizes and shapes are refused when they are submitted, with the field, not accepted and failed
// later: a 300 KB annotation once answered 503 "maximum payload exceeded" (a permanent error as a
// retryable one), a ConfigMap near 1 MiB was admitted and failed the workspace a minute later, a
// multi-document body kept its first workspace and answered 202, and an unusable namespace
// parameter answered 503.
func TestSizesAndShapesRefusedAtSubmit(t *testing.T) {
	p := start(t)
	doc, _ := os.ReadFile(seedPath)
	post := func(path, contentType string, body []byte) (int, string) {
		resp, err := http.Post(p.URL+path, contentType, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	big := strings.Replace(string(doc), "  name: workspace-tuning-phi-3\n", "  name: workspace-tuning-phi-3\n  annotations:\n    note: "+strings.Repeat("x", 300<<10)+"\n", 1)
	for _, tc := range []struct {
		name, path, contentType string
		body                    []byte
		code                    int
		want                    string
	}{
		{"annotation over 256 KiB", "/v1/workspaces", "application/yaml", []byte(big), http.StatusUnprocessableEntity, "metadata.annotations"},
		{"two documents", "/v1/workspaces", "application/yaml", []byte(string(doc) + "\n---\n" + strings.Replace(string(doc), "name: workspace-tuning-phi-3", "name: second", 1)), http.StatusUnprocessableEntity, "2 YAML documents"},
		{"bad namespace parameter", "/v1/workspaces?namespace=a%20b", "application/yaml", doc, http.StatusBadRequest, "namespace"},
		{"ConfigMap over 256 KiB", "/v1/configmaps", "application/yaml", []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n  training_config.yaml: " + strings.Repeat("y", 300<<10) + "\n"), http.StatusUnprocessableEntity, "data"},
	} {
		if code, body := post(tc.path, tc.contentType, tc.body); code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %.300s, want %d naming %q", tc.name, code, body, tc.code, tc.want)
		}
	}
	if l, _ := p.Store.List(context.Background(), ""); len(l) != 0 {
		t.Errorf("refused submissions left %d records", len(l))
	}
}

// A Hugging Face id as an inference preset (Kaito since v0.9) goes to Ready: planned from the model's
// config.json, read through the planner's address policy from the stand-in Hub, pinned to its commit.
func TestHuggingFaceModelReachesReady(t *testing.T) {
	hub := testenv.NewHub(t)
	p := start(t, func(c *assembly.Config) { c.HubURL = hub.URL })
	doc := "apiVersion: kaito.sh/v1beta1\nkind: Workspace\nmetadata:\n  name: qwen3-06b\nresource:\n  instanceType: Standard_NC6s_v3\n  labelSelector:\n    matchLabels:\n      apps: qwen3-06b\ninference:\n  preset:\n    name: Qwen/Qwen3-0.6B\n"
	if code, body := submit(t, p, []byte(doc)); code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, body)
	}
	w := waitTerminal(t, p, "default", "qwen3-06b", 30*time.Second)
	if w.Phase != status.Ready {
		t.Fatalf("phase %s failure %+v", w.Phase, w.Failure)
	}
	// The projector folds events in any order: the plan (from node.ready) may land after Ready.
	for deadline := time.Now().Add(10 * time.Second); w.Plan == nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if w, _ = p.Store.Get(context.Background(), "default", "qwen3-06b"); w == nil {
			t.Fatal("the record went away")
		}
	}
	if w.Plan == nil || w.Plan.Model != "Qwen/Qwen3-0.6B" || w.Plan.Revision != testenv.QwenSHA {
		t.Errorf("plan %+v", w.Plan)
	}
}

// A request that cannot fit its GPUs is refused at workspace.requested, before anything is
// provisioned, as workspace.failed with the numbers.
func TestWorkspaceThatCannotFitFailsBeforeProvisioning(t *testing.T) {
	p := start(t)
	doc, _ := os.ReadFile(seedPath)
	big := strings.NewReplacer("phi-3-mini-128k-instruct", "phi-4", "method: qlora", "method: lora").Replace(string(doc))
	// The API runs the fit check at submit: refused there, with the numbers, and nothing kept.
	if code, body := submit(t, p, []byte(big)); code != http.StatusUnprocessableEntity || !strings.Contains(string(body), "phi-4 needs ~") {
		t.Fatalf("submit: %d %s", code, body)
	}
	if _, err := p.Store.Get(context.Background(), "default", "workspace-tuning-phi-3"); err == nil {
		t.Fatal("a workspace refused at submit got a status record")
	}
	// The same request from an entrance that does not plan (on the bus as the entrance role
	// publishes it): provision refuses it before buying anything.
	ws, err := kaito.DecodeWorkspace([]byte(big))
	if err != nil {
		t.Fatal(err)
	}
	ws.Namespace, ws.Generation = "default", 1
	ev, err := events.New("kaitoflow/test", events.WorkspaceRequested, events.WorkspaceRequested, events.WorkspaceRef(ws), ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Store.Admit(context.Background(), ws); err != nil {
		t.Fatal(err)
	}
	if err := (runtime.JetStreamPublisher{JS: p.JS}).Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	w := waitTerminal(t, p, "default", "workspace-tuning-phi-3", 30*time.Second)
	if w.Phase != status.Failed || w.Failure.Reason != events.ReasonInsufficientGPUMemory || w.Failure.Function != "provision" {
		t.Fatalf("phase %s failure %+v", w.Phase, w.Failure)
	}
	if !strings.Contains(w.Failure.Message, "phi-4 needs ~") || !strings.Contains(w.Failure.Message, "Standard_NC6s_v3 has 16 GiB") {
		t.Errorf("failure message lacks the numbers: %q", w.Failure.Message)
	}
	for _, e := range w.Events {
		if e.Type == events.NodeReady {
			t.Error("capacity was provisioned for a request that cannot fit")
		}
	}
	if w.ConditionStatus(status.CondWorkspaceReady) != "False" {
		t.Errorf("WorkspaceReady %q", w.ConditionStatus(status.CondWorkspaceReady))
	}
}

// `up` with a simulated GPU too small for the planned batch (kaitoflow.io/sim-max-batch: 2, the
// plan's 4): the first attempt runs out of GPU memory, tune re-plans with half the batch, provision gets the
// capacity for attempt 2, and the workspace reaches Ready with both attempts in its status.
func TestOutOfGPUMemoryRetriesToReady(t *testing.T) {
	p := start(t)
	doc, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	manifest := strings.Replace(string(doc), "  name: workspace-tuning-phi-3\n",
		"  name: workspace-tuning-phi-3\n  annotations:\n    kaitoflow.io/sim-max-batch: \"2\"\n", 1)
	if code, body := submit(t, p, []byte(manifest)); code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, body)
	}
	w := waitTerminal(t, p, "default", "workspace-tuning-phi-3", 30*time.Second)
	if w.Phase != status.Ready {
		t.Fatalf("phase %s, failure %+v, attempts %+v", w.Phase, w.Failure, w.Attempts)
	}
	if len(w.Attempts) != 2 || w.Attempts[0].Outcome != events.ReasonGPUOutOfMemory || w.Attempts[1].Outcome != "Succeeded" ||
		w.Attempts[0].BatchSize != 4 || w.Attempts[1].BatchSize != 2 {
		t.Fatalf("attempts: %+v", w.Attempts)
	}
	var retried bool
	for _, e := range w.Events {
		retried = retried || e.Type == events.TuningRetrying
	}
	if !retried || w.GPU == nil || w.GPU.TuningSeconds <= 0 {
		t.Errorf("retried %t, GPU time %+v", retried, w.GPU)
	}
}

// Kaito's InferenceSet example, submitted as it is, is served as one inference workspace of the
// set's name: planned, provisioned and Ready, its replicas the service's bounds.
func TestKaitoInferenceSetReachesReady(t *testing.T) {
	p := start(t)
	doc, err := os.ReadFile("../../../apis/kaito/testdata/kaito-inferenceset/kaito_inferenceset_phi_4_mini.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if code, body := submit(t, p, doc); code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, body)
	}
	w := waitTerminal(t, p, "default", "phi-4-mini", 30*time.Second)
	if w.Phase != status.Ready || w.Endpoint == "" {
		t.Fatalf("phase %s endpoint %q failure %+v", w.Phase, w.Endpoint, w.Failure)
	}
	// A set's own fields are refused in its own terms.
	bad := strings.Replace(string(doc), "replicas: 1", "replicas: -1", 1)
	if code, body := submit(t, p, []byte(bad)); code != http.StatusUnprocessableEntity || !strings.Contains(string(body), "spec.replicas") {
		t.Errorf("negative replicas: %d %s, want 422 naming spec.replicas", code, body)
	}
}
