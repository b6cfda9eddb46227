// Package deploy_test checks the manifests under deploy/: every object decodes strictly as its
// type (built-in, Knative Serving and Eventing, our CRD), passes Knative's own webhook validation,
// the Triggers ask for exactly what each function takes, and a real API server accepts all of it in
// a server-side dry-run apply.
package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	eventingv1alpha1 "knative.dev/eventing/pkg/apis/eventing/v1alpha1"
	eventingfeature "knative.dev/eventing/pkg/apis/feature"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	"knative.dev/pkg/apis"
	servingconfig "knative.dev/serving/pkg/apis/config"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	autoscalerconfig "knative.dev/serving/pkg/autoscaler/config"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/publish"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/serve/knative"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/compose/pipeline"
	"github.com/kaitoflow/kaitoflow/internal/compose/sources"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Versions of the modules whose CRDs the API server gets (go.mod pins the same).
const (
	servingVersion  = "v0.50.0"
	eventingVersion = "v0.50.0"
)

var (
	restCfg *rest.Config
	kubeErr error
)

func TestMain(m *testing.M) {
	// The box's tuning pods run job-run with the sim trainer: this binary, re-executed.
	tunesim.TrainerMain()
	serving, err := testenv.ModuleDir("knative.dev/serving", servingVersion)
	if err == nil {
		var eventing string
		if eventing, err = testenv.ModuleDir("knative.dev/eventing", eventingVersion); err == nil {
			os.Exit(testenv.Main(m, func(cfg *rest.Config, err error) { restCfg, kubeErr = cfg, err },
				filepath.Join("knative", "crd"),
				filepath.Join(serving, "config", "core", "300-resources"),
				filepath.Join(eventing, "config", "core", "resources")))
		}
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// object is one document of a manifest file.
type object struct {
	file string
	doc  []byte
	u    *unstructured.Unstructured
}

func (o object) String() string {
	return fmt.Sprintf("%s: %s %s", o.file, o.u.GetKind(), o.u.GetName())
}

// load reads the kustomization's resources (and fails on a manifest it does not list).
func load(t *testing.T, dir string) []object {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string           `json:"apiVersion"`
		Kind       string           `json:"kind"`
		Labels     []map[string]any `json:"labels"`
		Resources  []string         `json:"resources"`
	}
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	var listed []string
	var out []object
	for _, f := range k.Resources {
		listed = append(listed, filepath.Clean(f))
		raw, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, parseObjects(t, f, raw)...)
	}
	var found []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, _ error) error {
		if d.IsDir() && p != dir && fileExists(filepath.Join(p, "kustomization.yaml")) {
			return filepath.SkipDir // a kustomization of its own
		}
		if !d.IsDir() && strings.HasSuffix(p, ".yaml") && d.Name() != "kustomization.yaml" {
			rel, _ := filepath.Rel(dir, p)
			found = append(found, rel)
		}
		return nil
	})
	sort.Strings(found)
	sort.Strings(listed)
	if !slices.Equal(found, listed) {
		t.Errorf("%s: the kustomization lists %v, the directory holds %v", dir, listed, found)
	}
	return out
}

// parseObjects reads the documents of a YAML stream, skipping empty ones.
func parseObjects(t *testing.T, file string, raw []byte) []object {
	t.Helper()
	var out []object
	r := utilyaml.NewYAMLReader(bufioReader(raw))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		out = append(out, object{file: file, doc: doc, u: u})
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, l := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.Bytes()
}

// all is every manifest kaitoflow ships: the core, its optional parts (the Service Bus bridge and
// the upload webhook) and Knative Serving's features.
func all(t *testing.T) []object {
	var out []object
	for _, dir := range append([]string{"knative", filepath.Join("knative", "serving-features")}, optionalParts()...) {
		out = append(out, load(t, dir)...)
	}
	return out
}

// optionalParts are installed only when enabled, each its own kustomization and release file.
func optionalParts() []string {
	return []string{filepath.Join("knative", "servicebus"), filepath.Join("knative", "webhook")}
}

// knativeContext carries the configuration Knative's webhooks validate with: defaults, and the
// features serving-features/ enables.
func knativeContext(t *testing.T, features map[string]string) context.Context {
	t.Helper()
	return knativeContextWith(t, features, servingFeatures(t, "config-defaults.yaml"))
}

// servingFeatures is the data of a ConfigMap in deploy/knative/serving-features.
func servingFeatures(t *testing.T, file string) map[string]string {
	t.Helper()
	var cm struct {
		Data map[string]string `json:"data"`
	}
	b, err := os.ReadFile(filepath.Join("knative", "serving-features", file))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	return cm.Data
}

func knativeContextWith(t *testing.T, features, defaults map[string]string) context.Context {
	t.Helper()
	f, err := servingconfig.NewFeaturesConfigFromMap(features)
	if err != nil {
		t.Fatal(err)
	}
	d, err := servingconfig.NewDefaultsConfigFromMap(defaults)
	if err != nil {
		t.Fatal(err)
	}
	a, err := autoscalerconfig.NewConfigFromMap(nil)
	if err != nil {
		t.Fatal(err)
	}
	return servingconfig.ToContext(apis.WithinCreate(context.Background()), &servingconfig.Config{Defaults: d, Features: f, Autoscaler: a})
}

type validatable interface {
	Validate(context.Context) *apis.FieldError
	SetDefaults(context.Context)
}

// Every document decodes strictly as its type, and Knative's objects pass Knative's own
// validation, as its admission webhooks would run it.
func TestManifestsDecodeStrictlyAndValidate(t *testing.T) {
	checkManifests(t, all(t))
}

// checkManifests decodes every object strictly as its type and runs Knative's validation on
// Knative's objects.
func checkManifests(t *testing.T, objects []object) {
	sch := runtime.NewScheme()
	if err := scheme.AddToScheme(sch); err != nil {
		t.Fatal(err)
	}
	if err := apiextensionsv1.AddToScheme(sch); err != nil {
		t.Fatal(err)
	}
	strict := serializer.NewCodecFactory(sch, serializer.EnableStrict).UniversalDeserializer()
	ctx := knativeContext(t, nil)
	for _, o := range objects {
		t.Run(o.String(), func(t *testing.T) {
			ctx := ctx
			var typed validatable
			switch gv := o.u.GroupVersionKind(); gv.Group + "/" + gv.Kind {
			case "serving.knative.dev/Service":
				typed = &servingv1.Service{}
			case "eventing.knative.dev/Broker":
				typed = &eventingv1.Broker{}
			case "eventing.knative.dev/Trigger":
				typed = &eventingv1.Trigger{}
			case "sources.knative.dev/ApiServerSource":
				typed = &sourcesv1.ApiServerSource{}
			case "sources.knative.dev/PingSource":
				typed = &sourcesv1.PingSource{}
			case "sources.knative.dev/SinkBinding":
				typed = &sourcesv1.SinkBinding{}
			case "eventing.knative.dev/EventPolicy":
				// An EventPolicy means something only with Eventing's OIDC on (deploy/knative/oidc).
				typed = &eventingv1alpha1.EventPolicy{}
				ctx = eventingfeature.ToContext(ctx, eventingfeature.Flags{eventingfeature.OIDCAuthentication: eventingfeature.Enabled})
			default:
				if _, _, err := strict.Decode(o.doc, nil, nil); err != nil {
					t.Fatalf("strict decode: %v", err)
				}
				return
			}
			if err := yaml.UnmarshalStrict(o.doc, typed); err != nil {
				t.Fatalf("strict decode: %v", err)
			}
			typed.SetDefaults(ctx)
			if err := typed.Validate(ctx); err != nil {
				t.Fatalf("Knative's validation: %v", err)
			}
		})
	}
}

// Each function's Trigger asks for exactly the event types the function handles.
func TestTriggersMatchFunctionTypes(t *testing.T) {
	want := map[string][]string{
		"kaitoflow-provision": provision.Types, "kaitoflow-tune": tune.Types, "kaitoflow-publish": publish.Types,
		"kaitoflow-serve": serve.Types, "kaitoflow-status": events.Types, "kaitoflow-signals": sources.Types,
	}
	got := map[string][]string{}
	for _, o := range all(t) {
		if o.u.GetKind() != "Trigger" {
			continue
		}
		var tr eventingv1.Trigger
		if err := yaml.UnmarshalStrict(o.doc, &tr); err != nil {
			t.Fatal(err)
		}
		if len(tr.Spec.Filters) != 1 || tr.Spec.Subscriber.Ref == nil || tr.Spec.Subscriber.Ref.Name != tr.Name {
			t.Errorf("%s: want one filter with an any of exact types, and its function as subscriber", tr.Name)
			continue
		}
		for _, f := range tr.Spec.Filters[0].Any {
			got[tr.Name] = append(got[tr.Name], f.Exact["type"])
		}
		if tr.Spec.Delivery == nil || tr.Spec.Delivery.DeadLetterSink == nil {
			t.Errorf("%s: no dead-letter sink", tr.Name)
		}
	}
	for name, types := range want {
		w := slices.Sorted(slices.Values(types))
		g := slices.Sorted(slices.Values(got[name]))
		if !slices.Equal(w, g) {
			t.Errorf("%s: the Trigger asks for %v, the function takes %v", name, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("Triggers for %v, want one per function %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
}

// RBAC is enumerated: no wildcard verbs, resources or groups, and nothing bound to cluster-admin.
func TestRBACIsLeastPrivilege(t *testing.T) {
	for _, o := range all(t) {
		switch o.u.GetKind() {
		case "ClusterRole", "Role":
			rules, _, _ := unstructured.NestedSlice(o.u.Object, "rules")
			for _, r := range rules {
				m := r.(map[string]any)
				for _, key := range []string{"verbs", "resources", "apiGroups"} {
					for _, v := range m[key].([]any) {
						if v == "*" {
							t.Errorf("%s: wildcard in %s", o, key)
						}
					}
				}
			}
		case "ClusterRoleBinding", "RoleBinding":
			if name, _, _ := unstructured.NestedString(o.u.Object, "roleRef", "name"); name == "cluster-admin" || name == "admin" || name == "edit" {
				t.Errorf("%s binds %s", o, name)
			}
		}
	}
}

// A real API server (Knative Serving and Eventing CRDs from the module cache, our CRD) accepts
// every object in a server-side dry-run apply.
func TestServerSideDryRun(t *testing.T) {
	dryRunApply(t, all(t))
}

// dryRunApply applies every object with a server-side dry run.
func dryRunApply(t *testing.T, objects []object) {
	if restCfg == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx := context.Background()
	objs := newObjects(restCfg)
	// Namespaces exist for real; everything else is a dry run.
	for _, ns := range []string{"kaitoflow", "knative-serving"} {
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
		if _, err := objs.dyn.Resource(schemaNamespaces).Create(ctx, u, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatal(err)
		}
	}
	for _, o := range objects {
		ri, err := objs.of(o.u)
		if err != nil {
			t.Errorf("%s: %v", o, err)
			continue
		}
		if _, err := ri.Apply(ctx, o.u.GetName(), o.u, metav1.ApplyOptions{FieldManager: "kaitoflow-manifest-test", Force: true, DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Errorf("%s: %v", o, err)
		}
	}
}

// The inference Service serve builds passes Knative's validation with the features
// serving-features/ enables, and not without them: docs/install.md's requirement is real.
func TestInferenceServiceNeedsServingFeatures(t *testing.T) {
	cm := struct{ Data map[string]string }{servingFeatures(t, "config-features.yaml")}
	ws, plan := testenv.Seed(t, "default")
	ref := events.Ref{Namespace: "default", Name: ws.Name, Generation: 1}
	d := serve.Deployment{Ref: ref, Service: serve.ServiceName(ref), Workspace: *ws, Plan: plan,
		Adapters: []serve.Adapter{{Name: ws.Name, Image: "example.azurecr.io/adapters/phi-3@sha256:" + strings.Repeat("a", 64)}}}
	cat, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	k := &knative.Deployer{Catalog: cat}
	rt, err := k.Runtime(d)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := knative.BuildService(d, rt, proxyOptions())
	if err != nil {
		t.Fatal(err)
	}
	with := knativeContext(t, cm.Data)
	svc.SetDefaults(with)
	if err := svc.Validate(with).Filter(apis.ErrorLevel); err != nil {
		t.Errorf("with serving-features: %v", err)
	}
	if err := svc.Validate(knativeContext(t, nil)).Filter(apis.ErrorLevel); err == nil || !strings.Contains(err.Error(), "nodeSelector") {
		t.Errorf("without serving-features Knative should refuse the node selector: %v", err)
	}
	// The request timeout a GPU cold start needs is over Knative's default maximum.
	if err := svc.Validate(knativeContextWith(t, cm.Data, nil)).Filter(apis.ErrorLevel); err == nil || !strings.Contains(err.Error(), "timeoutSeconds") {
		t.Errorf("without config-defaults Knative should refuse a %ds timeout: %v", *svc.Spec.Template.Spec.TimeoutSeconds, err)
	}

	// An adapter on a volume (adapter.stored) mounts its claim read-only: accepted with the
	// features, refused without the persistent-volume-claim one.
	d.Adapters = []serve.Adapter{{Name: ws.Name, Volume: &corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "adapters"}}}}
	if svc, err = knative.BuildService(d, rt, proxyOptions()); err != nil {
		t.Fatal(err)
	}
	svc.SetDefaults(with)
	if err := svc.Validate(with).Filter(apis.ErrorLevel); err != nil {
		t.Errorf("adapter on a volume, with serving-features: %v", err)
	}
	noPVC := maps.Clone(cm.Data)
	delete(noPVC, "kubernetes.podspec-persistent-volume-claim")
	if err := svc.Validate(knativeContext(t, noPVC)).Filter(apis.ErrorLevel); err == nil || !strings.Contains(err.Error(), "persistentVolumeClaim") {
		t.Errorf("without the persistent-volume-claim feature Knative should refuse the adapter's claim: %v", err)
	}

	// A weights cache claim is written to by vLLM: accepted with the features, refused without
	// the persistent-volume-write one.
	cached := proxyOptions()
	cached.WeightsCache = "model-weights"
	if svc, err = knative.BuildService(d, rt, cached); err != nil {
		t.Fatal(err)
	}
	svc.SetDefaults(with)
	if err := svc.Validate(with).Filter(apis.ErrorLevel); err != nil {
		t.Errorf("weights cache claim, with serving-features: %v", err)
	}
	// Filled once by the trainer's fetch in an init container, read-only by the model server.
	fetched := cached
	fetched.WeightsImage = "example.azurecr.io/kaitoflow/trainer:test"
	fsvc, err := knative.BuildService(d, rt, fetched)
	if err != nil {
		t.Fatal(err)
	}
	fsvc.SetDefaults(with)
	if err := fsvc.Validate(with).Filter(apis.ErrorLevel); err != nil || len(fsvc.Spec.Template.Spec.InitContainers) != 1 {
		t.Errorf("weights fetched into the claim by an init container, with serving-features: %v", err)
	}
	readOnly := maps.Clone(cm.Data)
	delete(readOnly, "kubernetes.podspec-persistent-volume-write")
	if err := svc.Validate(knativeContext(t, readOnly)).Filter(apis.ErrorLevel); err == nil {
		t.Error("without the persistent-volume-write feature Knative should refuse the writable weights cache")
	} else {
		t.Logf("without persistent-volume-write: %v", err)
	}
}

// Kaito's manifests of both versions apply to the CRD as they are (a server-side dry run: the
// API server's schema validation and pruning at the manifest's own version).
func TestKaitoExamplesApplyToTheCRD(t *testing.T) {
	// Nothing pruned: every field Kaito's manifest has is in the schema.
	applyKaitoExamples(t, filepath.Join("..", "examples", "*", "*.yaml"), "Workspace", "resource", "tuning", "inference")
}

// applyKaitoExamples applies every object of kind in the files glob names to the CRDs on the API
// server (a server-side dry run, at each manifest's own version), checks the server kept the
// fields named as they were sent, and that both of Kaito's versions were among them.
func applyKaitoExamples(t *testing.T, glob, kind string, kept ...string) {
	t.Helper()
	if restCfg == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx := context.Background()
	objs := newObjects(restCfg)
	files, _ := filepath.Glob(glob)
	applied := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range parseObjects(t, f, b) {
			if o.u.GetKind() != kind {
				continue
			}
			o.u.SetNamespace("default")
			ri, err := objs.of(o.u)
			if err != nil {
				t.Fatalf("%s: %v", o, err)
			}
			out, err := ri.Apply(ctx, o.u.GetName(), o.u, metav1.ApplyOptions{FieldManager: "kaitoflow-example-test", DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				t.Errorf("%s: %v", o, err)
				continue
			}
			for _, k := range kept {
				// Compared as JSON: the API server's numbers come back as int64, the YAML's as float64.
				sent, _ := json.Marshal(o.u.Object[k])
				got, _ := json.Marshal(out.Object[k])
				if !bytes.Equal(sent, got) {
					t.Errorf("%s: %s changed by the API server:\n sent %s\n  got %s", o, k, sent, got)
				}
			}
			applied[o.u.GetAPIVersion()]++
		}
	}
	if applied["kaito.sh/v1alpha1"] == 0 || applied["kaito.sh/v1beta1"] == 0 {
		t.Errorf("applied %v, want %ss of both versions", applied, kind)
	}
}

// Every kaitoflow workload signs in to NATS as its own role (kaitoflow nats-auth's Secret), never
// as a shared user: a function as itself, what takes requests as the entrance.
func TestWorkloadsSignInToNATSAsTheirRole(t *testing.T) {
	roles := map[string]bool{}
	for _, r := range pipeline.NATSRoles() {
		roles[r.Name] = true
	}
	seen := 0
	for _, o := range all(t) {
		if k := o.u.GetKind(); k != "Deployment" && k != "Service" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(o.u.Object, "spec", "template", "spec", "containers")
		for _, c := range containers {
			var ctr corev1.Container
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(c.(map[string]any), &ctr); err != nil {
				t.Fatal(err)
			}
			if len(ctr.Args) == 0 || !slices.ContainsFunc(ctr.EnvFrom, func(e corev1.EnvFromSource) bool {
				return e.ConfigMapRef != nil && e.ConfigMapRef.Name == "kaitoflow-config"
			}) {
				continue
			}
			seen++
			want := pipeline.Entrance
			if fn := functionOf(o); fn != "" {
				want = fn
				// Each function runs its own binary (cmd/<function>), which links its step
				// alone: not the CLI's `kaitoflow fn`.
				if image := "ko://github.com/kaitoflow/kaitoflow/cmd/" + fn; ctr.Image != image || ctr.Args[0] == "fn" {
					t.Errorf("%s: runs %s %v, want its own image %s", o, ctr.Image, ctr.Args, image)
				}
			}
			i := slices.IndexFunc(ctr.Env, func(e corev1.EnvVar) bool { return e.Name == "KAITOFLOW_NATS" })
			if i < 0 || ctr.Env[i].ValueFrom == nil || ctr.Env[i].ValueFrom.SecretKeyRef == nil {
				t.Errorf("%s: KAITOFLOW_NATS does not come from the kaitoflow-nats Secret", o)
				continue
			}
			ref := ctr.Env[i].ValueFrom.SecretKeyRef
			if ref.Name != "kaitoflow-nats" || ref.Key != want || !roles[ref.Key] {
				t.Errorf("%s: signs in with %s/%s, want kaitoflow-nats/%s", o, ref.Name, ref.Key, want)
			}
		}
	}
	if seen < 9 {
		t.Errorf("%d kaitoflow workloads found, want the 7 functions, the controller and the ingress", seen)
	}
}

// functionOf is the function a Knative Service runs (its kaitoflow.io/function label), checked
// against the pipeline's names; "" for anything else.
func functionOf(o object) string {
	fn := o.u.GetLabels()["kaitoflow.io/function"]
	if o.u.GetKind() != "Service" || !slices.Contains(pipeline.Names(), fn) {
		return ""
	}
	return fn
}

// Each workspace namespace's NetworkPolicy admits chat-proxy's admin port from serve only, and
// every other port of kaitoflow's pods from anywhere (the chat port above all): NetworkPolicy
// enforcement needs a CNI, which the API server here has not, so the rules themselves are checked.
func TestAdminPortAnswersServeOnly(t *testing.T) {
	var np *networkingv1.NetworkPolicy
	for _, o := range all(t) {
		if o.u.GetKind() == "NetworkPolicy" && o.u.GetName() == "kaitoflow-inference-admin" {
			np = &networkingv1.NetworkPolicy{}
			if err := yaml.UnmarshalStrict(o.doc, np); err != nil {
				t.Fatal(err)
			}
		}
	}
	if np == nil {
		t.Fatal("no kaitoflow-inference-admin NetworkPolicy")
	}
	admits := func(port int32, fromServe bool) bool {
		for _, r := range np.Spec.Ingress {
			if len(r.From) > 0 && !fromServe {
				continue
			}
			if len(r.From) > 0 && (r.From[0].PodSelector.MatchLabels["serving.knative.dev/service"] != "kaitoflow-serve" ||
				r.From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "kaitoflow") {
				continue
			}
			for _, p := range r.Ports {
				end := p.Port.IntVal
				if p.EndPort != nil {
					end = *p.EndPort
				}
				if port >= p.Port.IntVal && port <= end {
					return true
				}
			}
		}
		return false
	}
	if admits(knative.AdminPort, false) || !admits(knative.AdminPort, true) {
		t.Errorf("the admin port %d: open to anyone %v, to serve %v", knative.AdminPort, admits(knative.AdminPort, false), admits(knative.AdminPort, true))
	}
	for _, port := range []int32{5000, 8012, 8022, 9090, 9091} { // chat, queue-proxy's ports
		if !admits(port, false) {
			t.Errorf("port %d is closed to the cluster", port)
		}
	}
}

// Kaito's InferenceSet examples (v0.12.0, both versions) apply to kaitoflow's InferenceSet CRD as
// they are: a server-side dry run keeps their spec.
func TestKaitoInferenceSetsApplyToTheCRD(t *testing.T) {
	applyKaitoExamples(t, filepath.Join("..", "apis", "kaito", "testdata", "kaito-inferenceset", "*.yaml"), "InferenceSet", "spec")
}
