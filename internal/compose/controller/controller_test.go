package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/compose/election"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

var (
	dyn     dynamic.Interface
	kube    kubernetes.Interface
	restCfg *rest.Config
	kubeErr error
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(cfg *rest.Config, err error) {
		if kubeErr = err; cfg != nil {
			restCfg = cfg
			dyn = dynamic.NewForConfigOrDie(cfg)
			kube = kubernetes.NewForConfigOrDie(cfg)
		}
	}, filepath.Join("..", "..", "..", "deploy", "knative", "crd")))
}

// pipeline is the bus, the status store with its projector, and the controller, against the API
// server.
type pipeline struct {
	js    jetstream.JetStream
	store *status.Store
	pub   events.Publisher
	ns    string
}

// start is the pipeline with one controller running.
func start(t *testing.T) *pipeline {
	t.Helper()
	p := startBus(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	recorder, stop := NewRecorder(ctx, kube)
	t.Cleanup(stop)
	c := p.controller()
	c.Recorder = recorder
	go func() { _ = c.Run(ctx, restCfg, RunOptions{Workers: 2}) }()
	return p
}

// controller is a Workspace controller on the pipeline's store and bus.
func (p *pipeline) controller() *Controller {
	return &Controller{Client: dyn, Store: p.store, Publisher: p.pub, Log: slog.New(slog.DiscardHandler), Kinds: []string{kaito.Kind, kaito.KindInferenceSet},
		Submitter: &ingress.Submitter{Store: p.store, Publisher: p.pub, Source: "kaitoflow/controller"}}
}

// startBus is the pipeline without a controller.
func startBus(t *testing.T) *pipeline {
	t.Helper()
	if dyn == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	if _, err := (runtime.Storage{Replicas: 1}).EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	store, err := status.Open(ctx, js, runtime.Storage{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	pub := runtime.JetStreamPublisher{JS: js}
	proj, err := runtime.NewJetStream(js, runtime.Function{Name: "status", Types: events.Types, Handler: &status.Projector{Store: store}}, runtime.Deps{Logger: slog.New(slog.DiscardHandler)}, runtime.JetStreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = proj.Run(ctx) }()

	ns := fmt.Sprintf("ctl-%d", time.Now().UnixNano())
	nsObj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
	if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Create(ctx, nsObj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return &pipeline{js: js, store: store, pub: pub, ns: ns}
}

func (p *pipeline) apply(t *testing.T, doc []byte) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(doc, &u.Object); err != nil {
		t.Fatal(err)
	}
	u.SetNamespace(p.ns)
	// At the manifest's own version (the seed is v1alpha1); the controller reads it at v1beta1.
	gvr := GVR("")
	gvr.Version = u.GroupVersionKind().Version
	out, err := dyn.Resource(gvr).Namespace(p.ns).Create(context.Background(), u, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (p *pipeline) get(t *testing.T, name string) *unstructured.Unstructured {
	t.Helper()
	u, err := dyn.Resource(GVR("")).Namespace(p.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// editMethod is kubectl edit of the workspace's tuning.method. The controller writes status
// meanwhile, so it retries on conflict as kubectl does.
func (p *pipeline) editMethod(t *testing.T, name, method string) {
	t.Helper()
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u := p.get(t, name)
		u.Object["tuning"].(map[string]any)["method"] = method
		_, err := dyn.Resource(GVR("")).Namespace(p.ns).Update(context.Background(), u, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func (p *pipeline) emit(t *testing.T, gen int64, typ string, data any) {
	t.Helper()
	p.emitFor(t, "workspace-tuning-phi-3", gen, typ, data)
}

// emitFor publishes an event of the pipeline for the workspace name.
func (p *pipeline) emitFor(t *testing.T, name string, gen int64, typ string, data any) {
	t.Helper()
	ref := events.Ref{Namespace: p.ns, Name: name, Generation: gen}
	if err := p.pub.Publish(context.Background(), events.Must(events.New("test", typ, typ, ref, data, nil))); err != nil {
		t.Fatal(err)
	}
}

func condition(u *unstructured.Unstructured, typ string) string {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == typ {
			return fmt.Sprint(m["status"])
		}
	}
	return ""
}

func seed(t *testing.T) []byte {
	t.Helper()
	doc, err := os.ReadFile("../../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// The seed's manifest, applied as a custom resource: a finalizer, workspace.requested, the
// pipeline's progress as the object's status, a spec change as generation 2, and a deletion that
// waits for the capacity to be released.
func TestWorkspaceCustomResource(t *testing.T) {
	p := start(t)
	ctx := context.Background()
	p.apply(t, seed(t))
	testenv.Eventually(t, 20*time.Second, "the finalizer and Provisioning", func() bool {
		u := p.get(t, "workspace-tuning-phi-3")
		ph, _, _ := unstructured.NestedString(u.Object, "status", "phase")
		return len(u.GetFinalizers()) == 1 && ph == string(status.Provisioning)
	})
	// Each pipeline event is a Kubernetes Event on the object: kubectl describe's timeline.
	testenv.Eventually(t, 20*time.Second, "the WorkspaceRequested Event", func() bool {
		l, err := kube.CoreV1().Events(p.ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=workspace-tuning-phi-3"})
		return err == nil && slices.ContainsFunc(l.Items, func(e corev1.Event) bool {
			return e.Reason == "WorkspaceRequested" && e.InvolvedObject.Kind == "Workspace" && strings.Contains(e.Message, "kaitoflow.workspace.requested")
		})
	})
	rec, err := p.store.Get(ctx, p.ns, "workspace-tuning-phi-3")
	if err != nil || rec.Generation != 1 || rec.Manifest.Tuning.Method != "qlora" {
		t.Fatalf("record %+v %v", rec, err)
	}

	// The pipeline's steps, as the functions would emit them.
	p.emit(t, 1, events.NodeReady, events.NodeReadyData{Nodes: []string{"gpu-0"}, InstanceType: "Standard_NC6s_v3", Provider: "byo"})
	p.emit(t, 1, events.TuningStarted, events.TuningStartedData{Job: "j"})
	p.emit(t, 1, events.TuningCompleted, events.TuningCompletedData{Job: "j"})
	p.emit(t, 1, events.ImagePushed, events.ImagePushedData{Image: "r/i:1", Reference: "r/i@sha256:1"})
	p.emit(t, 1, events.InferenceReady, events.InferenceReadyData{URL: "http://workspace-tuning-phi-3.example.com"})
	// The projector applies events in any order: wait for the record to hold them all.
	testenv.Eventually(t, 20*time.Second, "every condition True", func() bool {
		u := p.get(t, "workspace-tuning-phi-3")
		for _, c := range []string{status.CondResourceReady, status.CondJobStarted, status.CondWorkspaceSucceeded, status.CondInferenceReady, status.CondWorkspaceReady} {
			if condition(u, c) != "True" {
				return false
			}
		}
		return true
	})
	u := p.get(t, "workspace-tuning-phi-3")
	if ep, _, _ := unstructured.NestedString(u.Object, "status", "endpoint"); ep != "http://workspace-tuning-phi-3.example.com" {
		t.Errorf("endpoint %q", ep)
	}

	// kubectl edit: a changed spec is generation 2.
	p.editMethod(t, "workspace-tuning-phi-3", "lora")
	testenv.Eventually(t, 20*time.Second, "generation 2 admitted", func() bool {
		rec, err := p.store.Get(ctx, p.ns, "workspace-tuning-phi-3")
		return err == nil && rec.Generation == 2 && rec.Method == "lora"
	})

	// kubectl delete: workspace.deleted, and the object stays until capacity.released.
	if err := dyn.Resource(GVR("")).Namespace(p.ns).Delete(ctx, "workspace-tuning-phi-3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "Deleted in the store", func() bool {
		rec, err := p.store.Get(ctx, p.ns, "workspace-tuning-phi-3")
		return err == nil && rec.Phase == status.Deleted
	})
	time.Sleep(300 * time.Millisecond)
	if u := p.get(t, "workspace-tuning-phi-3"); u.GetDeletionTimestamp() == nil {
		t.Fatal("not being deleted")
	}
	p.emit(t, 2, events.CapacityReleased, events.CapacityReleasedData{Because: events.WorkspaceDeleted})
	testenv.Eventually(t, 20*time.Second, "the object gone", func() bool {
		_, err := dyn.Resource(GVR("")).Namespace(p.ns).Get(ctx, "workspace-tuning-phi-3", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})

	// Created again (metadata.generation 1 again): the pipeline's generation continues, so no
	// event id of the deleted generations is reused.
	p.apply(t, seed(t))
	testenv.Eventually(t, 20*time.Second, "generation 3 admitted", func() bool {
		rec, err := p.store.Get(ctx, p.ns, "workspace-tuning-phi-3")
		return err == nil && rec.Generation == 3 && rec.Phase == status.Provisioning
	})
}

// Kaito's versions round-trip through the API server: a v1beta1 manifest with v1beta1's own field
// (modelAccessSecret) read back as v1alpha1 and a v1alpha1 manifest read as v1beta1 keep every
// field, as Kaito's CRD (one schema, no conversion webhook) does.
func TestVersionsRoundTrip(t *testing.T) {
	if dyn == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ns := fmt.Sprintf("roundtrip-%d", time.Now().UnixNano())
	nsObj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
	if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Create(context.Background(), nsObj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, wrote, read string }{
		{"../../../examples/v1beta1/inference_llama_3.1_8b_instruct.yaml", "v1beta1", "v1alpha1"},
		{"../../../examples/v1beta1/tuning_phi_3_with_pvc_volume.yaml", "v1beta1", "v1alpha1"},
		{"../../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml", "v1alpha1", "v1beta1"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			doc, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(doc, &u.Object); err != nil {
				t.Fatal(err)
			}
			u.SetNamespace(ns)
			gvr := GVR("")
			gvr.Version = tc.wrote
			if _, err := dyn.Resource(gvr).Namespace(ns).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			gvr.Version = tc.read
			back, err := dyn.Resource(gvr).Namespace(ns).Get(context.Background(), u.GetName(), metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if back.GetAPIVersion() != "kaito.sh/"+tc.read {
				t.Errorf("read back as %s", back.GetAPIVersion())
			}
			for _, k := range []string{"resource", "tuning", "inference"} {
				if !reflect.DeepEqual(u.Object[k], back.Object[k]) {
					t.Errorf("%s changed:\n wrote %v\n  read %v", k, u.Object[k], back.Object[k])
				}
			}
		})
	}
}

// A custom resource the schema admits but kaitoflow refuses says why in its status, naming the field.
func TestInvalidWorkspaceSaysWhy(t *testing.T) {
	p := start(t)
	doc := strings.Replace(string(seed(t)), "https://huggingface.co/datasets", "http://169.254.169.254/datasets", 1)
	p.apply(t, []byte(doc))
	testenv.Eventually(t, 20*time.Second, "the refusal in the status", func() bool {
		u := p.get(t, "workspace-tuning-phi-3")
		f, _, _ := unstructured.NestedString(u.Object, "status", "failure")
		return condition(u, status.CondWorkspaceSucceeded) == "False" && strings.Contains(f, "tuning.input.urls[0]")
	})
	if _, err := p.store.Get(context.Background(), p.ns, "workspace-tuning-phi-3"); err == nil {
		t.Error("an invalid workspace was admitted")
	}
	// Deleting it needs no release: there is nothing to release.
	if err := dyn.Resource(GVR("")).Namespace(p.ns).Delete(context.Background(), "workspace-tuning-phi-3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "the object gone", func() bool {
		_, err := dyn.Resource(GVR("")).Namespace(p.ns).Get(context.Background(), "workspace-tuning-phi-3", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

// Two controller replicas: one leads and reconciles; when it stops, the other takes the Lease and
// reconciles within the lease's timings.
func TestLeaderElection(t *testing.T) {
	p := startBus(t)
	leader := func(id string) (context.CancelFunc, chan error) {
		e := &election.Lease{Namespace: p.ns, Identity: id, LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 250 * time.Millisecond}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		errs := make(chan error, 1)
		go func() { errs <- p.controller().Run(ctx, restCfg, RunOptions{Workers: 2, Election: e}) }()
		return cancel, errs
	}
	holder := func() string {
		l, err := kube.CoordinationV1().Leases(p.ns).Get(context.Background(), LeaseName, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	stopA, errsA := leader("replica-a")
	testenv.Eventually(t, 20*time.Second, "replica-a leading", func() bool { return holder() == "replica-a" })
	leader("replica-b")

	p.apply(t, seed(t))
	testenv.Eventually(t, 20*time.Second, "the leader's finalizer", func() bool { return len(p.get(t, "workspace-tuning-phi-3").GetFinalizers()) == 1 })
	if h := holder(); h != "replica-a" {
		t.Fatalf("the lease moved to %q while replica-a ran", h)
	}

	stopped := time.Now()
	stopA()
	if err := <-errsA; err != nil {
		t.Errorf("replica-a stopping: %v", err)
	}
	testenv.Eventually(t, 20*time.Second, "replica-b leading", func() bool { return holder() == "replica-b" })
	// replica-a released the Lease as it stopped: well within one lease duration.
	if took := time.Since(stopped); took > 3*time.Second {
		t.Errorf("takeover took %s", took)
	}
	doc := strings.Replace(string(seed(t)), "name: workspace-tuning-phi-3", "name: second", 1)
	p.apply(t, []byte(doc))
	testenv.Eventually(t, 20*time.Second, "the new leader reconciling", func() bool { return len(p.get(t, "second").GetFinalizers()) == 1 })
}

// kubectl annotate workspace … kaitoflow.io/rollback=1: the controller publishes
// kaitoflow.adapter.selected for generation 1's pushed adapter once per value, records a
// RollbackRequested Event, and refuses a generation that pushed nothing with a Warning saying so.
func TestRollbackAnnotation(t *testing.T) {
	p := start(t)
	ctx := context.Background()
	const name = "workspace-tuning-phi-3"
	p.apply(t, seed(t))
	testenv.Eventually(t, 20*time.Second, "generation 1 admitted", func() bool {
		rec, err := p.store.Get(ctx, p.ns, name)
		return err == nil && rec.Generation == 1
	})
	ready := func(gen int64, image string) {
		t.Helper()
		p.emit(t, gen, events.ImagePushed, events.ImagePushedData{Reference: image})
		p.emit(t, gen, events.InferenceReady, events.InferenceReadyData{URL: "http://" + name + ".example.com"})
	}
	ready(1, "r/i@sha256:1")
	// Generation 2, tuned and served.
	p.editMethod(t, name, "lora")
	testenv.Eventually(t, 20*time.Second, "generation 2 admitted", func() bool {
		rec, err := p.store.Get(ctx, p.ns, name)
		return err == nil && rec.Generation == 2
	})
	ready(2, "r/i@sha256:2")
	testenv.Eventually(t, 20*time.Second, "generation 2 ready", func() bool {
		rec, err := p.store.Get(ctx, p.ns, name)
		return err == nil && rec.Phase == status.Ready && len(rec.History) == 2
	})

	selected, err := p.js.CreateOrUpdateConsumer(ctx, runtime.StreamName, jetstream.ConsumerConfig{FilterSubject: events.AdapterSelected, DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		t.Fatal(err)
	}
	annotate := func(value string) {
		t.Helper()
		patch := []byte(`{"metadata":{"annotations":{"` + kaito.AnnotationRollback + `":"` + value + `"}}}`)
		if _, err := dyn.Resource(GVR("")).Namespace(p.ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 20*time.Second, "the annotation handled", func() bool {
			h, _, _ := unstructured.NestedString(p.get(t, name).Object, "status", "rollbackHandled")
			return h == value
		})
	}
	hasEvent := func(reason, says string) bool {
		l, err := kube.CoreV1().Events(p.ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		return err == nil && slices.ContainsFunc(l.Items, func(e corev1.Event) bool { return e.Reason == reason && strings.Contains(e.Message, says) })
	}

	annotate("1@a")
	testenv.Eventually(t, 20*time.Second, "RollbackRequested", func() bool { return hasEvent("RollbackRequested", "generation 1's adapter r/i@sha256:1") })
	msgs, err := selected.FetchNoWait(10)
	if err != nil {
		t.Fatal(err)
	}
	var got []events.AdapterSelectedData
	for m := range msgs.Messages() {
		var d events.AdapterSelectedData
		ev, err := events.DecodeNATS(m.Headers(), m.Data())
		if err != nil || events.Data(ev, &d) != nil {
			t.Fatalf("adapter.selected: %v", err)
		}
		got = append(got, d)
	}
	if len(got) != 1 || got[0].Generation != 1 || got[0].Reference != "r/i@sha256:1" || got[0].Ref.Generation != 2 {
		t.Fatalf("published %+v, want one selection of generation 1 for generation 2", got)
	}

	annotate("7@b")
	testenv.Eventually(t, 20*time.Second, "RollbackRefused", func() bool { return hasEvent("RollbackRefused", "generation 7 pushed no adapter") })
}

// Kaito's InferenceSet example, applied as it is: the set's finalizer, the inference workspace it
// is served as submitted with the set's bounds, and Kaito's status written back — the desired and
// ready replicas, the scale subresource's selector and InferenceSetReady — then deletion behind
// the finalizer until the capacity is released.
func TestInferenceSetCustomResource(t *testing.T) {
	p := start(t)
	ctx := context.Background()
	doc, err := os.ReadFile("../../../apis/kaito/testdata/kaito-inferenceset/kaito_inferenceset_llama-3.1_8b_instruct.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := kaito.SplitYAML(doc)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(docs[1], &u.Object); err != nil { // the InferenceSet after Kaito's Secret
		t.Fatal(err)
	}
	sets := dyn.Resource(schema.GroupVersionResource{Group: kaito.Group, Version: "v1alpha1", Resource: "inferencesets"}).Namespace(p.ns)
	if _, err := sets.Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const name = "llama-3-1-8b"
	get := func() *unstructured.Unstructured {
		t.Helper()
		u, err := sets.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	testenv.Eventually(t, 20*time.Second, "the finalizer and the workspace submitted", func() bool {
		rec, err := p.store.Get(ctx, p.ns, name)
		return len(get().GetFinalizers()) == 1 && err == nil && rec.Generation == 1
	})
	rec, _ := p.store.Get(ctx, p.ns, name)
	if a := rec.Manifest.Annotations; rec.Manifest.Inference == nil || a["autoscaling.knative.dev/min-scale"] != "2" || a["autoscaling.knative.dev/max-scale"] != "2" ||
		rec.Manifest.Labels[kaito.LabelInferenceSetCreatedBy] != name {
		t.Fatalf("the workspace the set is served as: %+v", rec.Manifest)
	}
	testenv.Eventually(t, 20*time.Second, "0/2 replicas ready", func() bool {
		cond, _ := setCondition(get())
		return cond["status"] == "False" && cond["message"] == "inferenceset is not ready, 0/2 replicas are ready"
	})

	p.emitFor(t, name, 1, events.NodeReady, events.NodeReadyData{Nodes: []string{"gpu-0", "gpu-1"}, InstanceType: "Standard_NC24ads_A100_v4", Provider: "byo"})
	p.emitFor(t, name, 1, events.InferenceReady, events.InferenceReadyData{URL: "http://llama-3-1-8b.example.com"})
	testenv.Eventually(t, 20*time.Second, "InferenceSetReady", func() bool {
		cond, st := setCondition(get())
		return cond["status"] == "True" && cond["reason"] == "inferencesetReady" && st["readyReplicas"] == int64(2) && st["replicas"] == int64(2) &&
			st["selector"] == events.LabelWorkspace+"="+name+","+events.LabelNamespace+"="+p.ns && st["endpoint"] == "http://llama-3-1-8b.example.com"
	})

	// kubectl scale: generation 2 of the workspace, whose replicas are not ready yet — the ready
	// count the status had is gone, not left behind.
	if _, err := sets.Patch(ctx, name, types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), metav1.PatchOptions{}, "scale"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "generation 2, 0/3 ready", func() bool {
		rec, err := p.store.Get(ctx, p.ns, name)
		cond, st := setCondition(get())
		_, stale := st["readyReplicas"]
		return err == nil && rec.Generation == 2 && rec.Manifest.Annotations["autoscaling.knative.dev/min-scale"] == "3" && !stale &&
			cond["message"] == "inferenceset is not ready, 0/3 replicas are ready"
	})

	// A Workspace of the set's name would share its record: it is refused, submits nothing, and its
	// deletion releases nothing of the set's.
	ws := strings.Replace(string(seed(t)), "name: workspace-tuning-phi-3", "name: "+name, 1)
	p.apply(t, []byte(ws))
	testenv.Eventually(t, 20*time.Second, "the Workspace refused", func() bool {
		u := p.get(t, name)
		failure, _, _ := unstructured.NestedString(u.Object, "status", "failure")
		return strings.Contains(failure, "is the InferenceSet's of that name")
	})
	if err := dyn.Resource(GVR("")).Namespace(p.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "the Workspace gone", func() bool {
		_, err := dyn.Resource(GVR("")).Namespace(p.ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if rec, err := p.store.Get(ctx, p.ns, name); err != nil || rec.Generation != 2 || rec.Phase == status.Deleted {
		t.Fatalf("the set's record after the Workspace came and went: %+v %v", rec, err)
	}

	if err := sets.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "Deleted in the store", func() bool {
		rec, err := p.store.Get(ctx, p.ns, name)
		return err == nil && rec.Phase == status.Deleted
	})
	p.emitFor(t, name, 2, events.CapacityReleased, events.CapacityReleasedData{Because: events.WorkspaceDeleted})
	testenv.Eventually(t, 20*time.Second, "the set gone", func() bool {
		_, err := sets.Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

// setCondition is an InferenceSet's InferenceSetReady condition and its status block.
func setCondition(u *unstructured.Unstructured) (map[string]any, map[string]any) {
	st, _, _ := unstructured.NestedMap(u.Object, "status")
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == CondInferenceSetReady {
			return m, st
		}
	}
	return nil, st
}

// Where Kaito runs, its CRD is not kaitoflow's: the controller refuses to reconcile another
// operator's Workspaces and says how to install beside it; a CRD kaitoflow installed (its label)
// is reconciled. The other operator's CRD is a stand-in: kaitoflow's own schema under a group of
// the test's, created without kaitoflow's label and with Helm's, as Kaito's chart installs it.
func TestRefusesAnotherOperatorsCRD(t *testing.T) {
	p := startBus(t)
	b, err := os.ReadFile("../../../deploy/knative/crd/workspaces.kaito.sh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	crd := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(b, &crd.Object); err != nil {
		t.Fatal(err)
	}
	const group = "other-operator.example"
	crd.SetName("workspaces." + group)
	crd.SetLabels(map[string]string{"app.kubernetes.io/managed-by": "Helm"})
	if err := unstructured.SetNestedField(crd.Object, group, "spec", "group"); err != nil {
		t.Fatal(err)
	}
	crds := dyn.Resource(CRDResource)
	ctx := context.Background()
	if _, err := crds.Create(ctx, crd, metav1.CreateOptions{FieldManager: "helm"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = crds.Delete(context.Background(), crd.GetName(), metav1.DeleteOptions{}) })
	testenv.Eventually(t, 30*time.Second, "the CRD to be established", func() bool {
		u, err := crds.Get(ctx, crd.GetName(), metav1.GetOptions{})
		if err != nil {
			return false
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		return slices.ContainsFunc(conds, func(c any) bool {
			m, _ := c.(map[string]any)
			return m["type"] == "Established" && m["status"] == "True"
		})
	})

	c := p.controller()
	c.Group, c.Kinds = group, []string{kaito.Kind}
	run := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return c.Run(ctx, restCfg, RunOptions{Workers: 1})
	}
	err = run()
	if !errors.Is(err, ErrForeignCRD) {
		t.Fatalf("Run on another operator's CRD: %v, want ErrForeignCRD", err)
	}
	for _, want := range []string{"workspaces." + group, "--crd-group kaitoflow.io", "kaitoflow-group"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal %q does not say %q", err, want)
		}
	}

	// The same CRD, installed by kaitoflow (its kustomization's label): reconciled until stopped.
	u, err := crds.Get(ctx, crd.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.SetLabels(map[string]string{PartOf: "kaitoflow"})
	if _, err := crds.Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := run(); err != nil {
		t.Fatalf("Run on kaitoflow's CRD: %v", err)
	}
}
