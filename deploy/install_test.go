package deploy_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/internal/compose/controller"
	"github.com/kaitoflow/kaitoflow/internal/compose/install"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// The kaitoflow-group component serves kaitoflow's resources under kaitoflow.io: its CRDs, the
// controller's RBAC and flag, and nothing left that names kaito.sh's resources; what it renders
// passes the same checks as the core.
func TestKaitoflowGroupComponent(t *testing.T) {
	objs := renderWith(t, filepath.Join("knative", "kaitoflow-group"))
	checkManifests(t, objs)
	dryRunApply(t, objs)
	core := render(t, []string{"knative"})
	if len(objs) != len(core) {
		t.Errorf("%d objects, the core has %d", len(objs), len(core))
	}
	var crds []string
	for _, o := range objs {
		switch o.u.GetKind() {
		case "CustomResourceDefinition":
			group, _, _ := unstructured.NestedString(o.u.Object, "spec", "group")
			crds = append(crds, o.u.GetName())
			if group != "kaitoflow.io" || !strings.HasSuffix(o.u.GetName(), ".kaitoflow.io") {
				t.Errorf("%s: group %s", o, group)
			}
		case "ClusterRole", "Role":
			rules, _, _ := unstructured.NestedSlice(o.u.Object, "rules")
			for _, r := range rules {
				if s := strings.Join(flat(r), " "); strings.Contains(s, "kaito.sh") {
					t.Errorf("%s: a rule still names kaito.sh: %s", o, s)
				}
			}
		case "Deployment":
			if o.u.GetName() == "kaitoflow-controller" {
				c, _, _ := unstructured.NestedSlice(o.u.Object, "spec", "template", "spec", "containers")
				args, _, _ := unstructured.NestedStringSlice(c[0].(map[string]any), "args")
				if !slices.Contains(args, "--crd-group=kaitoflow.io") {
					t.Errorf("%s: args %v", o, args)
				}
			}
		}
	}
	slices.Sort(crds)
	if want := []string{"inferencesets.kaitoflow.io", "workspaces.kaitoflow.io"}; !slices.Equal(crds, want) {
		t.Errorf("CRDs %v, want %v", crds, want)
	}
}

// Install beside Kaito, upgrade, uninstall, against a cluster in a box (its namespace controller
// empties the namespace as in a cluster):
//   - where Kaito's workspaces.kaito.sh exists, release.yaml is refused before anything is written,
//     and the kaitoflow.io variant installs beside it, leaving Kaito's CRD and Workspaces as they are;
//   - an upgrade from a release that still shipped the Service Bus bridge and the upload webhook in
//     the core removes them (they are optional parts now);
//   - uninstall refuses while a Workspace still waits for its capacity release, names it, and
//     with --force leaves nothing of kaitoflow: no namespace, CRD, ClusterRole or install record.
//
// Stand-ins, named: Kaito's CRD is kaitoflow's own schema created the way Kaito's Helm chart
// creates it (its labels and annotations, without kaitoflow's label), and no controller runs, so
// the Workspace's finalizer stays until --force (the controller's release of it is tested in
// internal/compose/controller).
func TestInstallUpgradeUninstall(t *testing.T) {
	t0 := time.Now()
	b := testenv.BoxFor(t, moduleDir(t, "knative.dev/serving", servingVersion, "config", "core", "300-resources"),
		moduleDir(t, "knative.dev/eventing", eventingVersion, "config", "core", "resources"))
	t.Logf("box up at %s", time.Since(t0).Round(time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dyn := dynamic.NewForConfigOrDie(b.Config)
	in := &install.Installer{Client: dyn, Log: slog.New(slog.DiscardHandler), Poll: 100 * time.Millisecond,
		Mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(b.Config)))}
	crdRes := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

	// Kaito, installed by its chart, with a Workspace of its own.
	kaito := load(t, "knative")[1].u.DeepCopy()
	if kaito.GetName() != "workspaces.kaito.sh" {
		t.Fatalf("deploy/knative's second resource is %s, want the Workspace CRD", kaito.GetName())
	}
	kaito.SetLabels(map[string]string{"app.kubernetes.io/managed-by": "Helm"})
	kaito.SetAnnotations(map[string]string{"meta.helm.sh/release-name": "kaito-workspace", "meta.helm.sh/release-namespace": "kaito-workspace"})
	if _, err := dyn.Resource(crdRes).Create(ctx, kaito, metav1.CreateOptions{FieldManager: "helm"}); err != nil {
		t.Fatal(err)
	}
	// At the seed manifest's own version, v1alpha1.
	kaitoWS := schema.GroupVersionResource{Group: "kaito.sh", Version: "v1alpha1", Resource: "workspaces"}
	createNamespace(ctx, t, dyn, "kaito-users")
	seedWS := &unstructured.Unstructured{}
	seedDoc, err := os.ReadFile("../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(seedDoc, &seedWS.Object); err != nil {
		t.Fatal(err)
	}
	seedWS.SetNamespace("kaito-users")
	testenv.Eventually(t, time.Minute, "Kaito's CRD to serve Workspaces", func() bool {
		_, err = dyn.Resource(kaitoWS).Namespace("kaito-users").Create(ctx, seedWS, metav1.CreateOptions{})
		return err == nil || !apierrors.IsNotFound(err)
	})
	if err != nil {
		t.Fatalf("Kaito's Workspace: %v", err)
	}
	kaitoBefore, err := dyn.Resource(crdRes).Get(ctx, "workspaces.kaito.sh", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Logf("Kaito installed at %s", time.Since(t0).Round(time.Second))
	// release.yaml would take Kaito's CRD over: refused, and nothing is written.
	_, err = in.Install(ctx, unstructureds(render(t, []string{"knative"})))
	if !errors.Is(err, install.ErrForeignCRD) || !strings.Contains(err.Error(), "release-kaitoflow-group.yaml") ||
		!strings.Contains(err.Error(), "kaito-workspace") {
		t.Fatalf("release.yaml beside Kaito: %v, want ErrForeignCRD naming the owner and release-kaitoflow-group.yaml", err)
	}
	if _, err := dyn.Resource(schemaNamespaces).Get(ctx, install.Namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a refused install wrote the namespace: %v", err)
	}

	// The previous release: the kaitoflow.io core that still shipped the bridge and the webhook.
	group := unstructureds(renderWith(t, filepath.Join("knative", "kaitoflow-group")))
	previous := slices.Clone(group)
	var moved []string
	for _, dir := range optionalParts() {
		for _, u := range unstructureds(render(t, []string{dir})) {
			l := u.GetLabels()
			l[install.PartLabel] = "core"
			u.SetLabels(l)
			previous = append(previous, u)
			moved = append(moved, u.GetKind()+" "+u.GetNamespace()+"/"+u.GetName())
		}
	}
	res, err := in.Install(ctx, previous)
	if err != nil {
		t.Fatalf("install the previous release: %v", err)
	}
	if len(res.Applied) != len(previous) || len(res.Pruned) != 0 {
		t.Fatalf("previous release: applied %d of %d, pruned %v", len(res.Applied), len(previous), res.Pruned)
	}
	t.Logf("previous release installed at %s", time.Since(t0).Round(time.Second))
	// The upgrade: the optional parts are no longer the core's.
	res, err = in.Install(ctx, group)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	var pruned []string
	for _, r := range res.Pruned {
		pruned = append(pruned, r.Kind+" "+r.Namespace+"/"+r.Name)
	}
	slices.Sort(pruned)
	slices.Sort(moved)
	if !slices.Equal(pruned, moved) {
		t.Errorf("the upgrade removed %v, want %v", pruned, moved)
	}
	for _, name := range []string{"kaitoflow-bridge-servicebus"} {
		if _, err := b.Client.AppsV1().Deployments(install.Namespace).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("deployment %s after the upgrade: %v", name, err)
		}
	}
	kaitoAfter, err := dyn.Resource(crdRes).Get(ctx, "workspaces.kaito.sh", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if kaitoAfter.GetResourceVersion() != kaitoBefore.GetResourceVersion() {
		t.Fatalf("Kaito's CRD changed: resourceVersion %s, was %s", kaitoAfter.GetResourceVersion(), kaitoBefore.GetResourceVersion())
	}
	// The record says what to delete, the objects' labels whether they may be: a record that names
	// an object that is not the part's (rewritten by anyone who may write ConfigMaps there) deletes
	// nothing of it. The API server's own ClusterRole "admin" stands for it.
	cms := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}).Namespace(install.Namespace)
	rec, err := cms.Get(ctx, "kaitoflow-install-core", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	objects, _, _ := unstructured.NestedString(rec.Object, "data", "objects")
	tampered := strings.TrimSuffix(objects, "]") + `,{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","name":"admin"}]`
	if err := unstructured.SetNestedField(rec.Object, tampered, "data", "objects"); err != nil {
		t.Fatal(err)
	}
	if _, err := cms.Update(ctx, rec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if res, err := in.Install(ctx, group); err != nil || len(res.Pruned) != 0 {
		t.Fatalf("install over a rewritten record: %v, pruned %v", err, res)
	}
	if _, err := b.Client.RbacV1().ClusterRoles().Get(ctx, "admin", metav1.GetOptions{}); err != nil {
		t.Fatalf("a rewritten record deleted ClusterRole admin: %v", err)
	}
	// The controller would refuse Kaito's group; it runs on kaitoflow.io, checked in controller_test.

	// A kaitoflow Workspace, held by the controller's finalizer.
	createNamespace(ctx, t, dyn, "team-a")
	ours := schema.GroupVersionResource{Group: "kaitoflow.io", Version: "v1alpha1", Resource: "workspaces"}
	ws := seedWS.DeepCopy()
	ws.SetAPIVersion("kaitoflow.io/v1alpha1")
	ws.SetNamespace("team-a")
	ws.SetResourceVersion("")
	ws.SetFinalizers([]string{controller.Finalizer})
	var created *unstructured.Unstructured
	testenv.Eventually(t, time.Minute, "kaitoflow.io to serve Workspaces", func() bool {
		created, err = dyn.Resource(ours).Namespace("team-a").Create(ctx, ws, metav1.CreateOptions{})
		return err == nil || !apierrors.IsNotFound(err)
	})
	if err != nil {
		t.Fatalf("kaitoflow's Workspace: %v", err)
	}
	// Uninstall while the Workspace still waits for its capacity: refused, naming it, nothing deleted.
	_, err = in.Uninstall(ctx, "core", install.UninstallOptions{Wait: 2 * time.Second})
	if !errors.Is(err, install.ErrStuck) || !strings.Contains(err.Error(), "team-a/"+created.GetName()) {
		t.Fatalf("uninstall with a held Workspace: %v, want ErrStuck naming team-a/%s", err, created.GetName())
	}
	if _, err := b.Client.AppsV1().Deployments(install.Namespace).Get(ctx, "kaitoflow-controller", metav1.GetOptions{}); err != nil {
		t.Fatalf("a refused uninstall deleted the controller: %v", err)
	}
	t.Logf("refused at %s", time.Since(t0).Round(time.Second))
	if _, err := in.Uninstall(ctx, "core", install.UninstallOptions{Wait: 2 * time.Second, Force: true}); err != nil {
		t.Fatalf("uninstall --force: %v", err)
	}

	t.Logf("uninstalled at %s", time.Since(t0).Round(time.Second))
	// Nothing of kaitoflow is left; Kaito's CRD and Workspace are.
	if _, err := dyn.Resource(schemaNamespaces).Get(ctx, install.Namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace %s after uninstall: %v", install.Namespace, err)
	}
	for _, name := range []string{"workspaces.kaitoflow.io", "inferencesets.kaitoflow.io"} {
		if _, err := dyn.Resource(crdRes).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("CRD %s after uninstall: %v", name, err)
		}
	}
	roles, err := b.Client.RbacV1().ClusterRoles().List(ctx, metav1.ListOptions{LabelSelector: controller.PartOf + "=kaitoflow"})
	if err != nil || len(roles.Items) != 0 {
		t.Errorf("ClusterRoles after uninstall: %d, %v", len(roles.Items), err)
	}
	if _, err := dyn.Resource(kaitoWS).Namespace("kaito-users").Get(ctx, seedWS.GetName(), metav1.GetOptions{}); err != nil {
		t.Errorf("Kaito's Workspace after uninstall: %v", err)
	}
	if after, err := dyn.Resource(crdRes).Get(ctx, "workspaces.kaito.sh", metav1.GetOptions{}); err != nil {
		t.Errorf("Kaito's CRD after uninstall: %v", err)
	} else if after.GetLabels()[controller.PartOf] != "" {
		t.Errorf("Kaito's CRD after uninstall has labels %v", after.GetLabels())
	}
}

func unstructureds(objs []object) []*unstructured.Unstructured {
	out := make([]*unstructured.Unstructured, len(objs))
	for i, o := range objs {
		out[i] = o.u.DeepCopy()
	}
	return out
}

func createNamespace(ctx context.Context, t *testing.T, dyn dynamic.Interface, name string) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name}}}
	if _, err := dyn.Resource(schemaNamespaces).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
