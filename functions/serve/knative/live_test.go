package knative

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/dataplane/vllmsim"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// replicaPods are a revision's pods as the API server holds them, each with its chat-proxy and
// model server running in the test: the Pod objects are real (created, marked Running and Ready
// as a kubelet would), while the containers are stand-ins — kaitoflow's real chat-proxy and adapter
// reconciler in front of the sim model server — and the kubelet's projection of the adapter set's
// ConfigMap into each pod is a loop that copies it into the file chat-proxy reads.
type replicaPods struct {
	t   *testing.T
	ns  string
	rev string

	// held stops the kubelet stand-in's projection: the replicas keep seeing the set they have.
	held atomic.Bool

	// running are the replicas' goroutines: each replica's directory is removed only once they
	// have stopped.
	running sync.WaitGroup

	mu     sync.Mutex
	urls   map[string]string // chat-proxy's routed port
	admins map[string]string // its admin port
	rts    map[string]*vllmsim.Server
}

func (r *replicaPods) address(p corev1.Pod) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.admins[p.Name]
}

// start runs a replica of the revision named pod.
func (r *replicaPods) start(ctx context.Context, pod, service string) {
	t := r.t
	t.Helper()
	rt := &vllmsim.Server{Base: "phi-3-mini-128k-instruct", Describe: "phi-3-mini-128k-instruct"}
	rtSrv := httptest.NewServer(rt.Handler())
	t.Cleanup(rtSrv.Close)
	upstream, _ := url.Parse(rtSrv.URL)
	dir := t.TempDir()
	// Cleanups run last first: the goroutines stop (the test's ctx ends before its cleanups) before
	// the directory they write goes.
	t.Cleanup(r.running.Wait)
	file, tokenFile := filepath.Join(dir, AdapterSetKey), filepath.Join(dir, AdminTokenKey)
	project := func() {
		if r.held.Load() {
			return
		}
		cm, err := kube.CoreV1().ConfigMaps(r.ns).Get(ctx, AdapterSetName(service), metav1.GetOptions{})
		if err != nil {
			return
		}
		for key, f := range map[string]string{AdapterSetKey: file, AdminTokenKey: tokenFile} {
			tmp := f + ".tmp"
			if os.WriteFile(tmp, []byte(cm.Data[key]), 0o644) == nil {
				_ = os.Rename(tmp, f) // atomic, as the kubelet swaps a ConfigMap volume's files
			}
		}
	}
	project()
	r.running.Add(2)
	go func() {
		defer r.running.Done()
		for ctx.Err() == nil {
			project()
			time.Sleep(30 * time.Millisecond)
		}
	}()
	m := &chatproxy.AdapterManager{Runtime: upstream, Dir: filepath.Join(dir, "adapters"), Pull: chatproxy.RegistryPuller(nil), Replica: pod, Log: slog.New(slog.DiscardHandler)}
	go func() {
		defer r.running.Done()
		m.Run(ctx, chatproxy.FileSource(file), 30*time.Millisecond)
	}()
	// The admin port requires the set's token, as in a pod: serve reads it from the ConfigMap.
	p := &chatproxy.Proxy{Upstream: upstream, Model: service, Adapters: m, Log: slog.New(slog.DiscardHandler), AdminTokenFile: tokenFile}
	proxy, admin := httptest.NewServer(p.Handler()), httptest.NewServer(p.AdminHandler())
	t.Cleanup(proxy.Close)
	t.Cleanup(admin.Close)
	r.mu.Lock()
	r.urls[pod], r.admins[pod], r.rts[pod] = proxy.URL, admin.URL, rt
	r.mu.Unlock()

	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: r.ns, Labels: map[string]string{LabelRevision: r.rev, LabelService: service}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "chat-proxy", Image: "stand-in"}}}}
	created, err := kube.CoreV1().Pods(r.ns).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1",
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if _, err := kube.CoreV1().Pods(r.ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// chat asks one replica's /chat and returns the answer.
func (r *replicaPods) chat(pod string) string {
	r.t.Helper()
	r.mu.Lock()
	u := r.urls[pod]
	r.mu.Unlock()
	resp, err := http.Post(u+"/chat", "application/json", strings.NewReader(`{"prompt":"hello"}`))
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Result, Error string }
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return out.Result + out.Error
}

// until handles service.changed for ref until serve answers with an event of type typ.
func until(ctx context.Context, t *testing.T, fn *serve.Function, ref events.Ref, service, typ string) cloudevents.Event {
	t.Helper()
	changed := events.Must(events.New("test", events.ServiceChanged, events.ServiceChanged, ref, events.ServiceChangedData{Service: service}, nil))
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out, err := fn.Handle(ctx, changed)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) == 1 && out[0].Type() == typ {
			return out[0]
		}
		if len(out) > 0 {
			t.Fatalf("want %s, got %v", typ, out)
		}
		time.Sleep(30 * time.Millisecond)
	}
	t.Fatalf("no %s for %s within 20s", typ, ref)
	return cloudevents.Event{}
}

// Two generations of the seed in a row with the Knative deployer against a real API server: the
// second adapter reaches the running replica through the adapter set's ConfigMap and answers there
// with no new revision (the Service's generation stays 1); inference.ready for it waits until the
// replica serves it; a replica started later serves the same set; a rollback to generation 1 goes
// live the same way; an adapter that cannot be pulled fails the generation while the one serving
// keeps answering.
func TestAdapterGoesLiveInRunningReplicas(t *testing.T) {
	k, ns := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host := testenv.Registry(t)
	v1, v2 := testenv.PushAdapter(t, host, "seed", "v1"), testenv.PushAdapter(t, host, "seed", "v2")
	d1 := seedDeployment(t, ns, 1)
	d1.Adapters[0].Image, d1.Adapters[0].PullSecrets = v1, nil
	pods := &replicaPods{t: t, ns: ns, rev: d1.Service + "-00001", urls: map[string]string{}, admins: map[string]string{}, rts: map[string]*vllmsim.Server{}}
	k.Replicas = PodReplicas{Kube: client, Address: pods.address}
	fn := serve.New(k, slog.New(slog.DiscardHandler))

	if out, err := fn.Handle(ctx, imagePushed(t, d1)); err != nil || len(out) != 0 {
		t.Fatalf("generation 1: %v %v", out, err)
	}
	setStatus(t, ns, d1.Service, corev1.ConditionTrue, "", "", "")
	pods.start(ctx, "pod-a", d1.Service)
	until(ctx, t, fn, d1.Ref, d1.Service, events.InferenceReady)
	if a := pods.chat("pod-a"); !strings.Contains(a, serve.LoRAName(d1.Service, v1)) {
		t.Fatalf("generation 1 answered %q", a)
	}

	d2 := seedDeployment(t, ns, 2)
	d2.Adapters[0].Image, d2.Adapters[0].PullSecrets = v2, nil
	// Until the replica sees the new set (the kubelet's projection is held here), generation 2
	// is not ready, and the status says what it waits for.
	pods.held.Store(true)
	if out, err := fn.Handle(ctx, imagePushed(t, d2)); err != nil || len(out) != 0 {
		t.Fatalf("generation 2 reported before the replica serves it: %v %v", out, err)
	}
	if st, err := k.Status(ctx, d2.Ref); err != nil || st.Phase != serve.Pending || !strings.Contains(st.Message, "waiting for pod-a") {
		t.Fatalf("status while the replica has the old set: %+v %v", st, err)
	}
	pods.held.Store(false)
	svc, err := dyn.Resource(Services).Namespace(ns).Get(ctx, d1.Service, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.GetGeneration() != 1 || svc.GetLabels()[events.LabelGeneration] != "2" {
		t.Fatalf("generation 2 rolled the template (metadata.generation %d) or was not recorded (%v)", svc.GetGeneration(), svc.GetLabels())
	}
	ready := until(ctx, t, fn, d2.Ref, d2.Service, events.InferenceReady)
	if ready.Extensions()[events.ExtGeneration] != "2" {
		t.Errorf("inference.ready %v", ready)
	}
	if a := pods.chat("pod-a"); !strings.Contains(a, serve.LoRAName(d1.Service, v2)) {
		t.Fatalf("generation 2 answered %q on the same pod", a)
	}
	if got := pods.rts["pod-a"].LoRAs(); len(got) != 1 || got[0] != serve.LoRAName(d1.Service, v2) {
		t.Errorf("the model server holds %v, want only generation 2's adapter", got)
	}

	// A replica that starts later loads the same set before it counts.
	pods.start(ctx, "pod-b", d1.Service)
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := k.Status(ctx, d2.Ref)
		if err != nil {
			t.Fatal(err)
		}
		if st.Phase == serve.Ready && st.Replicas == 2 && st.Serving == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the late replica never served the set: %+v", st)
		}
		time.Sleep(30 * time.Millisecond)
	}
	if a := pods.chat("pod-b"); !strings.Contains(a, serve.LoRAName(d1.Service, v2)) {
		t.Fatalf("the late replica answered %q", a)
	}

	// Roll back to generation 1's adapter: the same pods load it again, no revision.
	sel := events.Must(events.New("test", events.AdapterSelected, events.AdapterSelected+"/1", d2.Ref, events.AdapterSelectedData{
		Ref: d2.Ref, Workspace: d2.Workspace, Generation: 1, Reference: v1, Reason: "rollback"}, nil))
	out, err := fn.Handle(ctx, sel)
	if err != nil {
		t.Fatal(err)
	}
	// The replicas may already serve it when serve looks right after writing the set.
	if len(out) == 0 {
		out = []cloudevents.Event{until(ctx, t, fn, d2.Ref, d2.Service, events.InferenceReady)}
	}
	var rd events.InferenceReadyData
	if err := events.Data(only(t, out, events.InferenceReady), &rd); err != nil || rd.ServingGeneration != 1 || rd.Replicas != 2 {
		t.Fatalf("inference.ready after the rollback: %+v %v", rd, err)
	}
	for _, p := range []string{"pod-a", "pod-b"} {
		if a := pods.chat(p); !strings.Contains(a, serve.LoRAName(d1.Service, v1)) {
			t.Errorf("%s answered %q after the rollback", p, a)
		}
	}
	if svc, _ := dyn.Resource(Services).Namespace(ns).Get(ctx, d1.Service, metav1.GetOptions{}); svc.GetGeneration() != 1 {
		t.Errorf("the rollback rolled the template: metadata.generation %d", svc.GetGeneration())
	}

	// An adapter that is not in the registry: generation 3 fails with the replica's reason, and
	// generation 2's adapter keeps answering.
	d3 := seedDeployment(t, ns, 3)
	d3.Adapters[0].Image, d3.Adapters[0].PullSecrets = host+"/seed:missing", nil
	if _, err := fn.Handle(ctx, imagePushed(t, d3)); err != nil {
		t.Fatal(err)
	}
	failed := until(ctx, t, fn, d3.Ref, d3.Service, events.WorkspaceFailed)
	var fd events.WorkspaceFailedData
	if err := events.Data(failed, &fd); err != nil || fd.Reason != serve.ReasonAdapterLoad || !strings.Contains(fd.Message, "seed:missing") {
		t.Errorf("workspace.failed %+v %v", fd, err)
	}
	for _, p := range []string{"pod-a", "pod-b"} {
		if a := pods.chat(p); !strings.Contains(a, serve.LoRAName(d1.Service, v1)) {
			t.Errorf("%s answered %q after the failed load", p, a)
		}
	}
}

// ask sends one OpenAI chat completion for model to a replica's chat-proxy.
func (r *replicaPods) ask(pod, model string) string {
	r.t.Helper()
	r.mu.Lock()
	u := r.urls[pod]
	r.mu.Unlock()
	body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
	resp, err := http.Post(u+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.Status + " " + string(b)
}

// Two tuned workspaces that name one serving pool share one Knative Service and its replica: the
// second joins without a new revision, each answers by its own model name on the same pod, a
// member whose pods would differ is refused, one that leaves has its adapter unloaded while the
// other goes on, and the last to leave deletes the pool.
func TestServingPoolInRunningReplicas(t *testing.T) {
	k, ns := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host := testenv.Registry(t)
	const pool = "phi3-pool"
	member := func(name, image string) serve.Deployment {
		d := seedDeployment(t, ns, 1)
		d.Ref.Name, d.Workspace.Name = name, name
		d.Workspace.Annotations = map[string]string{kaito.AnnotationServingPool: pool}
		d.Adapters = []serve.Adapter{{Name: name, Image: image, Strength: "1.0"}}
		return d
	}
	support, billing := member("support", testenv.PushAdapter(t, host, "support", "v1")), member("billing", testenv.PushAdapter(t, host, "billing", "v1"))
	pods := &replicaPods{t: t, ns: ns, rev: pool + "-00001", urls: map[string]string{}, admins: map[string]string{}, rts: map[string]*vllmsim.Server{}}
	k.Replicas = PodReplicas{Kube: client, Address: pods.address}
	fn := serve.New(k, slog.New(slog.DiscardHandler))

	if _, err := fn.Handle(ctx, imagePushed(t, support)); err != nil {
		t.Fatal(err)
	}
	setStatus(t, ns, pool, corev1.ConditionTrue, "", "", "")
	pods.start(ctx, "pod-p", pool)
	until(ctx, t, fn, support.Ref, pool, events.InferenceReady)
	if _, err := fn.Handle(ctx, imagePushed(t, billing)); err != nil {
		t.Fatal(err)
	}
	var rd events.InferenceReadyData
	if err := events.Data(until(ctx, t, fn, billing.Ref, pool, events.InferenceReady), &rd); err != nil || rd.Service != pool || strings.Join(rd.Adapters, ",") != "billing" {
		t.Fatalf("billing's inference.ready: %+v %v", rd, err)
	}
	svc, err := dyn.Resource(Services).Namespace(ns).Get(ctx, pool, metav1.GetOptions{})
	if err != nil || svc.GetGeneration() != 1 || svc.GetLabels()[memberPrefix+"support"] != "1" || svc.GetLabels()[memberPrefix+"billing"] != "1" {
		t.Fatalf("pool Service: generation %d labels %v (%v)", svc.GetGeneration(), svc.GetLabels(), err)
	}
	for _, m := range []serve.Deployment{support, billing} {
		if a := pods.ask("pod-p", m.Ref.Name); !strings.Contains(a, serve.LoRAName(m.Ref.Name, m.Adapters[0].Image)) {
			t.Errorf("%s on the pool's pod: %s", m.Ref.Name, a)
		}
	}
	// A member whose pods would differ (other runtime arguments) cannot join.
	other := member("qwen", support.Adapters[0].Image)
	plan := *other.Plan
	plan.RuntimeArgs = append(slices.Clone(plan.RuntimeArgs), "--enforce-eager")
	other.Plan = &plan
	if _, err := fn.Handle(ctx, imagePushed(t, other)); err == nil || !strings.Contains(err.Error(), "serving pool "+pool+" runs another pod") {
		t.Errorf("a member with other pods: %v", err)
	}

	// support leaves: billing goes on, on the same pod; support's adapter is unloaded.
	del := func(ref events.Ref) {
		t.Helper()
		if _, err := fn.Handle(ctx, events.Must(events.New("test", events.WorkspaceDeleted, events.WorkspaceDeleted, ref, events.WorkspaceDeletedData{}, nil))); err != nil {
			t.Fatal(err)
		}
	}
	del(support.Ref)
	deadline := time.Now().Add(20 * time.Second)
	for slices.Contains(pods.rts["pod-p"].LoRAs(), serve.LoRAName("support", support.Adapters[0].Image)) {
		if time.Now().After(deadline) {
			t.Fatalf("support's adapter still loaded: %v", pods.rts["pod-p"].LoRAs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if a := pods.ask("pod-p", "billing"); !strings.Contains(a, serve.LoRAName("billing", billing.Adapters[0].Image)) {
		t.Errorf("billing after support left: %s", a)
	}
	if st, err := k.Status(ctx, support.Ref); err != nil || st != nil {
		t.Errorf("support's status after leaving: %+v %v", st, err)
	}
	del(billing.Ref)
	if _, err := dyn.Resource(Services).Namespace(ns).Get(ctx, pool, metav1.GetOptions{}); err == nil {
		t.Error("the pool's Service outlived its last member")
	}
}

// A canary with the Knative deployer against a real API server, the real chat-proxy in each
// replica (kaitoflow.io/promotion: canary:50%:1s): generation 2's candidate answers about half of
// both replicas' requests next to generation 1's adapter, and serve's tick after the window
// promotes it on the replicas' numbers (adapter.promoted with them), live in the same pods.
// Generation 3's candidate gets thumbs down from users and the tick rolls it back: generation 2's
// adapter alone answers again.
func TestCanaryInRunningReplicas(t *testing.T) {
	k, ns := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host := testenv.Registry(t)
	images := []string{"", testenv.PushAdapter(t, host, "seed", "v1"), testenv.PushAdapter(t, host, "seed", "v2"), testenv.PushAdapter(t, host, "seed", "v3")}
	d1 := seedDeployment(t, ns, 1)
	d1.Workspace.Annotations = map[string]string{kaito.AnnotationPromotion: "canary:50%:1s"}
	d1.Adapters[0].Image, d1.Adapters[0].PullSecrets = images[1], nil
	pods := &replicaPods{t: t, ns: ns, rev: d1.Service + "-00001", urls: map[string]string{}, admins: map[string]string{}, rts: map[string]*vllmsim.Server{}}
	k.Replicas = PodReplicas{Kube: client, Address: pods.address}
	fn := serve.New(k, slog.New(slog.DiscardHandler))
	if _, err := fn.Handle(ctx, imagePushed(t, d1)); err != nil {
		t.Fatal(err)
	}
	setStatus(t, ns, d1.Service, corev1.ConditionTrue, "", "", "")
	pods.start(ctx, "pod-a", d1.Service)
	pods.start(ctx, "pod-b", d1.Service)
	until(ctx, t, fn, d1.Ref, d1.Service, events.InferenceReady)

	// canary pushes generation gen's adapter, compared with generation gen-1's.
	canary := func(gen int64) events.Ref {
		t.Helper()
		ref := events.Ref{Namespace: ns, Name: d1.Ref.Name, Generation: gen}
		pushed := events.Must(events.New("test", events.ImagePushed, events.ImagePushed, ref, events.ImagePushedData{Workspace: d1.Workspace,
			Reference: images[gen], Plan: d1.Plan, Compared: &events.ComparedAdapter{Generation: gen - 1, Reference: images[gen-1]}}, nil))
		out, err := fn.Handle(ctx, pushed)
		if err != nil || len(out) == 0 || out[0].Type() != events.AdapterCanary {
			t.Fatalf("generation %d: %v %v", gen, out, err)
		}
		until(ctx, t, fn, ref, d1.Service, events.InferenceReady)
		return ref
	}
	// traffic asks both replicas n times each, judging each answer (by the adapter that gave it)
	// when judge is set, and returns how many gen's adapter answered.
	traffic := func(n int, gen int64, judge func(byGen bool) string) int {
		t.Helper()
		by := 0
		for i := range 2 * n {
			pod := []string{"pod-a", "pod-b"}[i%2]
			pods.mu.Lock()
			u := pods.urls[pod]
			pods.mu.Unlock()
			resp, err := http.Post(u+"/chat", "application/json", strings.NewReader(`{"prompt":"hello"}`))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			mine := strings.Contains(string(b), serve.LoRAName(d1.Service, images[gen]))
			if mine {
				by++
			}
			if judge == nil {
				continue
			}
			// Feedback reaches whichever replica Knative routes it to: here the other one.
			pods.mu.Lock()
			fbURL := pods.urls[[]string{"pod-b", "pod-a"}[i%2]]
			pods.mu.Unlock()
			body := `{"id":"` + resp.Header.Get(chatproxy.HeaderResponseID) + `","rating":"` + judge(mine) + `"}`
			fb, err := http.Post(fbURL+"/feedback", "application/json", strings.NewReader(body))
			if err != nil || fb.StatusCode != http.StatusNoContent {
				t.Fatalf("feedback: %v %v", fb, err)
			}
			fb.Body.Close()
		}
		return by
	}
	// judged ticks until the canary of ref is judged, and returns the decision.
	judged := func(ref events.Ref) (string, events.AdapterGateData) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			tick := events.Must(events.New("test", events.Tick, events.Tick+"/"+time.Now().String(), events.Ref{}, events.TickData{}, nil))
			out, err := fn.Handle(ctx, tick)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range out {
				if e.Type() == events.AdapterPromoted || e.Type() == events.AdapterHeld {
					var g events.AdapterGateData
					if err := events.Data(e, &g); err != nil || g.Ref.Generation != ref.Generation || g.Live == nil {
						t.Fatalf("decision %+v %v", g, err)
					}
					return e.Type(), g
				}
			}
		}
		t.Fatalf("generation %d's canary was never judged", ref.Generation)
		return "", events.AdapterGateData{}
	}
	// answersAll waits until every answer of both replicas is generation gen's adapter's.
	answersAll := func(gen int64) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); traffic(5, gen, nil) != 10; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("generation %d's adapter does not answer every request", gen)
			}
		}
	}

	ref2 := canary(2)
	if n := traffic(100, 2, nil); n < 70 || n > 130 {
		t.Fatalf("generation 2's canary answered %d of 200, want 100±30", n)
	}
	typ, g := judged(ref2)
	if typ != events.AdapterPromoted || g.Live.Canary.Requests < 70 || g.Live.Stable.Requests < 70 || g.Compared.Generation != 1 {
		t.Fatalf("generation 2's canary: %s %+v", typ, g)
	}
	answersAll(2)

	ref3 := canary(3)
	traffic(50, 3, func(byGen bool) string { return map[bool]string{true: "down", false: "up"}[byGen] })
	typ, g = judged(ref3)
	if typ != events.AdapterHeld || !strings.Contains(g.Reason, "thumbs up 0%") || g.Live.Canary.Down < 20 {
		t.Fatalf("generation 3's canary: %s %+v", typ, g)
	}
	answersAll(2)
	set, err := k.readSet(ctx, ns, d1.Service)
	if err != nil || set.Canaries != nil || len(set.Adapters) != 1 || set.Generations[set.Default] != 2 {
		t.Fatalf("the set after the rollback: %+v %v", set, err)
	}
}
