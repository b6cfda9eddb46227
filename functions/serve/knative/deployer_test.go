package knative

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// servingVersion is the knative.dev/serving module whose CRDs the tests install (from the Go
// module cache); go.mod pins the same version. inferenceExtensionVersion is the Gateway API
// Inference Extension's, whose InferencePool (v1) and InferenceObjective (v1alpha2) CRDs the
// published objects are held against.
const (
	servingVersion            = "v0.50.0"
	inferenceExtensionVersion = "v1.5.0"
)

var (
	dyn     dynamic.Interface
	kube    kubernetes.Interface
	kubeErr error
	// client is the typed client the deployer runs with; kube, the generated clientset, is the
	// test's own view of the API server.
	client *kubeclient.Client
)

func TestMain(m *testing.M) {
	dir, err := testenv.ModuleDir("knative.dev/serving", servingVersion)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gie, err := testenv.ModuleDir("sigs.k8s.io/gateway-api-inference-extension", inferenceExtensionVersion)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(testenv.Main(m, func(cfg *rest.Config, err error) {
		if kubeErr = err; cfg != nil {
			dyn, kube = dynamic.NewForConfigOrDie(cfg), kubernetes.NewForConfigOrDie(cfg)
			if client, err = kubeclient.New(cfg); err != nil {
				kubeErr, kube, dyn = err, nil, nil
			}
		}
	}, filepath.Join(dir, "config", "core", "300-resources"), filepath.Join(gie, "config", "crd", "bases")))
}

func setup(t *testing.T) (*Deployer, string) {
	t.Helper()
	if dyn == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ns := fmt.Sprintf("serve-%d", time.Now().UnixNano())
	nsObj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
	if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Create(context.Background(), nsObj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return &Deployer{Client: dyn, Kube: client, Catalog: catalog(t), Options: testOptions(), Log: slog.New(slog.DiscardHandler)}, ns
}

func imagePushed(t *testing.T, d serve.Deployment) cloudevents.Event {
	t.Helper()
	return events.Must(events.New("test", events.ImagePushed, events.ImagePushed, d.Ref, events.ImagePushedData{
		Workspace: d.Workspace, Reference: d.Adapters[0].Image, Plan: d.Plan}, nil))
}

// setStatus plays Knative's controller: it writes the Service's status for its current spec.
func setStatus(t *testing.T, ns, name string, ready corev1.ConditionStatus, reason, message, url string) {
	t.Helper()
	ctx := context.Background()
	client := dyn.Resource(Services).Namespace(ns)
	u, err := client.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rev := fmt.Sprintf("%s-%05d", name, u.GetGeneration())
	st := servingv1.ServiceStatus{Status: duckv1.Status{ObservedGeneration: u.GetGeneration(),
		Conditions: duckv1.Conditions{{Type: apis.ConditionReady, Status: ready, Reason: reason, Message: message}}}}
	st.LatestCreatedRevisionName = rev
	if ready == corev1.ConditionTrue {
		st.LatestReadyRevisionName = rev
		st.URL = apis.HTTP(name + "." + ns + ".example.com")
		if url != "" {
			st.URL, _ = apis.ParseURL(url)
		}
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&st)
	if err != nil {
		t.Fatal(err)
	}
	u.Object["status"] = m
	if _, err := client.UpdateStatus(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func only(t *testing.T, out []cloudevents.Event, typ string) cloudevents.Event {
	t.Helper()
	if len(out) != 1 || out[0].Type() != typ {
		t.Fatalf("want one %s, got %v", typ, out)
	}
	return out[0]
}

// The seed's tuned adapter through serve on a real API server with Knative's CRDs: the Service is
// accepted as built (the CRD's schema prunes nothing), readiness becomes inference.ready once per
// generation, a new generation rolls the template, deletion removes it.
func TestSeedServiceLifecycle(t *testing.T) {
	k, ns := setup(t)
	ctx := context.Background()
	fn := serve.New(k, slog.New(slog.DiscardHandler))
	d := seedDeployment(t, ns, 1)

	rec := &testenv.Recorder{}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = Watch(wctx, dyn, rec, slog.New(slog.DiscardHandler)) }()

	out, err := fn.Handle(ctx, imagePushed(t, d))
	if err != nil || len(out) != 0 {
		t.Fatalf("image.pushed before the Service is ready: %v %v", out, err)
	}
	stored, err := dyn.Resource(Services).Namespace(ns).Get(ctx, d.Service, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rt, _ := k.Runtime(d)
	built, _ := BuildService(d, rt, k.Options)
	want, _ := toUnstructured(built)
	if got, w := stored.Object["spec"].(map[string]any)["template"], want.Object["spec"].(map[string]any)["template"]; !reflect.DeepEqual(got, w) {
		t.Errorf("the API server changed the template:\n got %v\nwant %v", got, w)
	}

	// Knative marks it Ready: the watch says so, and serve answers with inference.ready.
	n := rec.Len()
	setStatus(t, ns, d.Service, corev1.ConditionTrue, "", "", "")
	// The watch covers every namespace: earlier tests' Services (envtest runs no namespace
	// controller to remove them) are listed too, so only this Service's change counts.
	var changed cloudevents.Event
	for found := false; !found; {
		evs := rec.Wait(t, n)
		for _, e := range evs[n:] {
			if e.Type() == events.ServiceChanged && e.Subject() == ns+"/"+d.Ref.Name {
				changed, found = e, true
				break
			}
		}
		n = len(evs)
	}
	out, err = fn.Handle(ctx, changed)
	if err != nil {
		t.Fatal(err)
	}
	ready := only(t, out, events.InferenceReady)
	var rd events.InferenceReadyData
	if err := events.Data(ready, &rd); err != nil {
		t.Fatal(err)
	}
	if rd.URL != "http://"+d.Service+"."+ns+".example.com" || rd.Revision != d.Service+"-00001" || rd.Driver != "knative" ||
		len(rd.Adapters) != 1 || rd.Adapters[0] != "workspace-tuning-phi-3" {
		t.Errorf("inference.ready %+v", rd)
	}
	again, _ := fn.Handle(ctx, imagePushed(t, d))
	if len(again) != 1 || again[0].ID() != ready.ID() {
		t.Errorf("a redelivered image.pushed must yield the same inference.ready id: %v", again)
	}

	// Until its inference.ready is stored, ticks look at it; then not.
	if refs, _ := k.List(ctx); !containsRef(refs, d.Ref) {
		t.Errorf("unacknowledged service not listed: %v", refs)
	}
	if _, err := fn.Handle(ctx, ready); err != nil {
		t.Fatal(err)
	}
	if refs, _ := k.List(ctx); containsRef(refs, d.Ref) {
		t.Errorf("acknowledged service still listed: %v", refs)
	}

	// A changed workspace (generation 2) whose pods change too (other runtime arguments) rolls a
	// new revision: the template changes, the old readiness does not count for it.
	d2 := seedDeployment(t, ns, 2)
	plan := *d2.Plan
	plan.RuntimeArgs = append(slices.Clone(plan.RuntimeArgs), "--enforce-eager")
	d2.Plan = &plan
	out, err = fn.Handle(ctx, imagePushed(t, d2))
	if err != nil || len(out) != 0 {
		t.Fatalf("generation 2 before Knative observed it: %v %v", out, err)
	}
	stored, _ = dyn.Resource(Services).Namespace(ns).Get(ctx, d.Service, metav1.GetOptions{})
	if stored.GetLabels()[events.LabelGeneration] != "2" || stored.GetGeneration() != 2 || stored.GetAnnotations()[events.AnnotationAcked] != "" {
		t.Errorf("generation 2 not applied: generation %d labels %v annotations %v", stored.GetGeneration(), stored.GetLabels(), stored.GetAnnotations())
	}
	if out, _ := fn.Handle(ctx, imagePushed(t, d)); len(out) != 0 {
		t.Errorf("a late generation-1 event must not report generation 2: %v", out)
	}
	setStatus(t, ns, d.Service, corev1.ConditionTrue, "", "", "")
	out, _ = fn.Handle(ctx, imagePushed(t, d2))
	if e := only(t, out, events.InferenceReady); e.ID() == ready.ID() || e.Extensions()[events.ExtGeneration] != "2" {
		t.Errorf("generation 2's inference.ready %v", e)
	}

	// workspace.deleted removes the Service.
	del := events.Must(events.New("test", events.WorkspaceDeleted, events.WorkspaceDeleted, d2.Ref, events.WorkspaceDeletedData{}, nil))
	if _, err := fn.Handle(ctx, del); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(Services).Namespace(ns).Get(ctx, d.Service, metav1.GetOptions{}); err == nil {
		t.Error("Service still there after workspace.deleted")
	}
}

func containsRef(refs []events.Ref, r events.Ref) bool {
	for _, x := range refs {
		if x == r {
			return true
		}
	}
	return false
}

// A revision that cannot start fails the workspace with the revision's own reason.
func TestRevisionFailure(t *testing.T) {
	k, ns := setup(t)
	ctx := context.Background()
	fn := serve.New(k, slog.New(slog.DiscardHandler))
	d := seedDeployment(t, ns, 1)
	if _, err := fn.Handle(ctx, imagePushed(t, d)); err != nil {
		t.Fatal(err)
	}
	// Knative's Revision, as its controller reports an image that cannot be pulled.
	rev := &servingv1.Revision{TypeMeta: metav1.TypeMeta{APIVersion: "serving.knative.dev/v1", Kind: "Revision"},
		ObjectMeta: metav1.ObjectMeta{Name: d.Service + "-00001", Namespace: ns},
		Spec:       servingv1.RevisionSpec{PodSpec: corev1.PodSpec{Containers: []corev1.Container{{Image: "x/y:1"}}}}}
	m, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(rev)
	u := &unstructured.Unstructured{Object: m}
	delete(u.Object, "status")
	created, err := dyn.Resource(Revisions).Namespace(ns).Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Object["status"] = map[string]any{"conditions": []any{
		map[string]any{"type": "Ready", "status": "False", "reason": "ImagePullBackOff", "message": "pulling the adapter image failed"},
		map[string]any{"type": "ContainerHealthy", "status": "False", "reason": "ImagePullBackOff", "message": `Back-off pulling image "acr_repo_here.azurecr.io/image_name_here"`},
	}}
	if _, err := dyn.Resource(Revisions).Namespace(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	setStatus(t, ns, d.Service, corev1.ConditionFalse, "RevisionFailed", `Revision "`+d.Service+`-00001" failed with message: Back-off pulling image.`, "")

	changed := events.Must(events.New("test", events.ServiceChanged, events.ServiceChanged, d.Ref, events.ServiceChangedData{Service: d.Service}, nil))
	out, err := fn.Handle(ctx, changed)
	if err != nil {
		t.Fatal(err)
	}
	var fd events.WorkspaceFailedData
	if err := events.Data(only(t, out, events.WorkspaceFailed), &fd); err != nil {
		t.Fatal(err)
	}
	if fd.Function != serve.Name || fd.Reason != "ImagePullBackOff" || fd.Message == "" {
		t.Errorf("workspace.failed %+v", fd)
	}
}

// A Service of the same name that kaitoflow did not create is left alone, and the workspace fails
// saying why.
func TestForeignServiceIsNotTouched(t *testing.T) {
	k, ns := setup(t)
	ctx := context.Background()
	d := seedDeployment(t, ns, 1)
	foreign := &servingv1.Service{TypeMeta: metav1.TypeMeta{APIVersion: "serving.knative.dev/v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: d.Service, Namespace: ns},
		Spec: servingv1.ServiceSpec{ConfigurationSpec: servingv1.ConfigurationSpec{Template: servingv1.RevisionTemplateSpec{
			Spec: servingv1.RevisionSpec{PodSpec: corev1.PodSpec{Containers: []corev1.Container{{Image: "someone/else:1"}}}}}}}}
	u, _ := toUnstructured(foreign)
	if _, err := dyn.Resource(Services).Namespace(ns).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := k.Apply(ctx, d)
	var perm *events.PermanentError
	if !errors.As(err, &perm) {
		t.Fatalf("want a permanent error, got %v", err)
	}
	if err := k.Delete(ctx, d.Ref); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(Services).Namespace(ns).Get(ctx, d.Service, metav1.GetOptions{}); err != nil {
		t.Errorf("the foreign Service was deleted: %v", err)
	}
}
