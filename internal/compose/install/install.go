// Package install puts a kaitoflow release into a cluster, upgrades it and takes it out again:
// `kaitoflow install -f release.yaml` and `kaitoflow uninstall`. It is `kubectl apply
// --server-side` with what apply cannot know:
//
//   - Kaito's CRDs are not taken over. A release whose CRD exists without kaitoflow's label
//     (Kaito's own workspaces.kaito.sh) is refused before anything is written, naming the variant
//     that installs beside it (release-kaitoflow-group.yaml).
//   - An upgrade removes what the release no longer ships. Each part (core, servicebus, webhook,
//     the label kaitoflow.io/part) records the objects it applied in a ConfigMap, as kubectl's
//     ApplySets do; CRDs and Namespaces are never removed this way, as that would delete every
//     Workspace in them.
//   - An uninstall deletes the Workspaces first, while the controller still runs, so their
//     finalizer releases their GPU capacity; only then the release, CRDs last.
package install

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/kaitoflow/kaitoflow/internal/compose/controller"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// Labels every object of a release carries (deploy/knative's kustomizations).
const (
	// PartLabel names the part of the release an object belongs to: core, servicebus, webhook.
	PartLabel = "kaitoflow.io/part"
	// Namespace is where kaitoflow runs and keeps its install records.
	Namespace = "kaitoflow"
	// FieldManager is the server-side apply manager of what install writes.
	FieldManager = "kaitoflow-install"
	// MaxRelease bounds a release file: the core is about 100 KiB.
	MaxRelease = 16 << 20
)

// ErrForeignCRD is the refusal to install over another operator's CRD (Kaito's).
var ErrForeignCRD = controller.ErrForeignCRD

// ErrStuck is the refusal to uninstall while Workspaces still wait for their capacity release.
var ErrStuck = errors.New("workspaces still hold capacity")

var (
	crds       = controller.CRDResource
	configMaps = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
)

// Parse reads a release: a YAML stream of objects, at most MaxRelease bytes.
func Parse(r io.Reader) ([]*unstructured.Unstructured, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxRelease+1))
	if err != nil {
		return nil, fmt.Errorf("read release: %w", err)
	}
	if len(b) > MaxRelease {
		return nil, fmt.Errorf("release: larger than %d bytes", MaxRelease)
	}
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var out []*unstructured.Unstructured
	for i := 0; ; i++ {
		u := &unstructured.Unstructured{}
		if err := d.Decode(&u.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("release: document %d: %w", i+1, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if u.GetKind() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("release: document %d: no kind or metadata.name", i+1)
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		return nil, errors.New("release: no objects")
	}
	return out, nil
}

// Installer applies and removes releases on one cluster.
type Installer struct {
	Client dynamic.Interface
	// Mapper maps a kind to its resource (a discovery-backed mapper, reset when CRDs appear).
	Mapper meta.ResettableRESTMapper
	Log    *slog.Logger
	// Poll is how often waits look again; a second when zero.
	Poll time.Duration
}

// Ref names an object of a release, as its record keeps it.
type Ref struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
}

func (r Ref) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

func refOf(u *unstructured.Unstructured) Ref {
	return Ref{APIVersion: u.GetAPIVersion(), Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}
}

// key identifies an object whatever its version.
func (r Ref) key() string {
	gv, _ := schema.ParseGroupVersion(r.APIVersion)
	return gv.Group + "/" + r.Kind + "/" + r.Namespace + "/" + r.Name
}

// Result is what an install did.
type Result struct {
	Part    string
	Applied []Ref
	// Pruned were in the part's previous release and are not in this one: deleted.
	Pruned []Ref
	// Kept were in the previous release and are not in this one, but are CRDs or Namespaces,
	// which are never deleted by an upgrade.
	Kept []Ref
}

// partOf is the single part every object of a release names.
func partOf(objs []*unstructured.Unstructured) (string, error) {
	part := ""
	for _, u := range objs {
		l := u.GetLabels()
		if l[controller.PartOf] != "kaitoflow" {
			return "", fmt.Errorf("%s %s: no label %s=kaitoflow: not a kaitoflow release", u.GetKind(), u.GetName(), controller.PartOf)
		}
		p := l[PartLabel]
		if p == "" || (part != "" && p != part) {
			return "", fmt.Errorf("%s %s: label %s=%q, want one part for the whole file (got %q before)", u.GetKind(), u.GetName(), PartLabel, p, part)
		}
		part = p
	}
	return part, nil
}

// rank orders an apply: Namespaces, then CRDs, then everything else as the file has it.
func rank(u *unstructured.Unstructured) int {
	switch u.GetKind() {
	case "Namespace":
		return 0
	case "CustomResourceDefinition":
		return 1
	}
	return 2
}

// Install applies a release server-side, after checking that its CRDs are not another
// operator's, and removes what the part's previous release had and this one has not.
func (i *Installer) Install(ctx context.Context, objs []*unstructured.Unstructured) (*Result, error) {
	part, err := partOf(objs)
	if err != nil {
		return nil, err
	}
	if err := i.checkCRDs(ctx, objs); err != nil {
		return nil, err
	}
	prev, err := i.record(ctx, part)
	if err != nil {
		return nil, err
	}
	objs = slices.Clone(objs)
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int { return cmp.Compare(rank(a), rank(b)) })
	res := &Result{Part: part}
	for n, u := range objs {
		if n > 0 && rank(objs[n-1]) == 1 && rank(u) == 2 {
			// Custom resources of the release's own CRDs need them established.
			if err := i.established(ctx, objs[:n]); err != nil {
				return nil, err
			}
		}
		if err := i.apply(ctx, u); err != nil {
			return nil, err
		}
		res.Applied = append(res.Applied, refOf(u))
	}
	if err := i.prune(ctx, prev, res); err != nil {
		return res, err
	}
	return res, i.writeRecord(ctx, part, res.Applied)
}

// checkCRDs refuses a CRD of the release that exists without kaitoflow's label: Kaito's.
func (i *Installer) checkCRDs(ctx context.Context, objs []*unstructured.Unstructured) error {
	for _, u := range objs {
		if u.GetKind() != "CustomResourceDefinition" {
			continue
		}
		have, err := i.Client.Resource(crds).Get(ctx, u.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read CRD %s: %w", u.GetName(), err)
		}
		if have.GetLabels()[controller.PartOf] == "kaitoflow" {
			continue
		}
		owner := cmp.Or(have.GetAnnotations()["meta.helm.sh/release-name"], have.GetLabels()["app.kubernetes.io/managed-by"], "unknown")
		return fmt.Errorf("%w: %s is already installed by another operator (Kaito? owner %s) and would be taken over with its "+
			"Workspaces; nothing was applied. Install kaitoflow beside it under its own group: kaitoflow install -f "+
			"release-kaitoflow-group.yaml (manifests then say apiVersion: kaitoflow.io/v1beta1)", ErrForeignCRD, u.GetName(), owner)
	}
	return nil
}

func (i *Installer) resource(u Ref) (dynamic.ResourceInterface, error) {
	gv, err := schema.ParseGroupVersion(u.APIVersion)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", u, err)
	}
	m, err := i.Mapper.RESTMapping(schema.GroupKind{Group: gv.Group, Kind: u.Kind}, gv.Version)
	if meta.IsNoMatchError(err) {
		// A CRD applied a moment ago: look again.
		i.Mapper.Reset()
		m, err = i.Mapper.RESTMapping(schema.GroupKind{Group: gv.Group, Kind: u.Kind}, gv.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: the cluster does not serve %s (is Knative Serving and Eventing installed?): %w", u, gv.WithKind(u.Kind), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return i.Client.Resource(m.Resource).Namespace(u.Namespace), nil
	}
	return i.Client.Resource(m.Resource), nil
}

func (i *Installer) apply(ctx context.Context, u *unstructured.Unstructured) error {
	r, err := i.resource(refOf(u))
	if err != nil {
		return err
	}
	// No force: a field another manager owns with another value is a conflict to report, not to
	// take (kubectl apply --server-side does the same).
	if _, err := r.Apply(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("apply %s: %w", refOf(u), err)
	}
	return nil
}

// established waits until the CRDs among objs serve their resources.
func (i *Installer) established(ctx context.Context, objs []*unstructured.Unstructured) error {
	for _, u := range objs {
		if u.GetKind() != "CustomResourceDefinition" {
			continue
		}
		err := wait.PollUntilContextTimeout(ctx, i.poll(), time.Minute, true, func(ctx context.Context) (bool, error) {
			have, err := i.Client.Resource(crds).Get(ctx, u.GetName(), metav1.GetOptions{})
			if err != nil {
				return false, nil //nolint:nilerr // not served yet: look again
			}
			conds, _, _ := unstructured.NestedSlice(have.Object, "status", "conditions")
			return slices.ContainsFunc(conds, func(c any) bool {
				m, _ := c.(map[string]any)
				return m["type"] == "Established" && m["status"] == "True"
			}), nil
		})
		if err != nil {
			return fmt.Errorf("CRD %s not established: %w", u.GetName(), err)
		}
	}
	i.Mapper.Reset()
	return nil
}

func (i *Installer) poll() time.Duration { return cmp.Or(i.Poll, time.Second) }

// prune deletes what the previous release of the part had and this one has not.
func (i *Installer) prune(ctx context.Context, prev []Ref, res *Result) error {
	now := map[string]bool{}
	for _, r := range res.Applied {
		now[r.key()] = true
	}
	for _, r := range prev {
		if now[r.key()] {
			continue
		}
		if r.Kind == "CustomResourceDefinition" || r.Kind == "Namespace" {
			res.Kept = append(res.Kept, r)
			continue
		}
		deleted, err := i.deleteOwn(ctx, r, res.Part)
		if err != nil {
			return fmt.Errorf("prune %s: %w", r, err)
		}
		if deleted {
			res.Pruned = append(res.Pruned, r)
		}
	}
	return nil
}

// deleteOwn deletes the object r names if it is still the part's: the record says what to
// delete, the object's own labels whether it may be (as ApplySets check), so a record rewritten by
// someone else, or an object another part now holds (the bridge, moved from the core to its own
// part), is never deleted. An object, or a kind, that is gone counts as deleted.
func (i *Installer) deleteOwn(ctx context.Context, r Ref, part string) (bool, error) {
	c, err := i.resource(r)
	if meta.IsNoMatchError(errors.Unwrap(err)) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	live, err := c.Get(ctx, r.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if l := live.GetLabels(); l[controller.PartOf] != "kaitoflow" || l[PartLabel] != part {
		logctx.Or(i.Log).Warn("not deleted: no longer this part's", "object", r.String(), "part", part, "labels", l)
		return false, nil
	}
	uid := live.GetUID()
	err = c.Delete(ctx, r.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) {
		return false, err
	}
	return true, nil
}

func recordName(part string) string { return "kaitoflow-install-" + part }

// record is what the part's last install applied; nil when it was never installed.
func (i *Installer) record(ctx context.Context, part string) ([]Ref, error) {
	cm, err := i.Client.Resource(configMaps).Namespace(Namespace).Get(ctx, recordName(part), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the install record of %s: %w", part, err)
	}
	s, _, _ := unstructured.NestedString(cm.Object, "data", "objects")
	var refs []Ref
	if err := json.Unmarshal([]byte(s), &refs); err != nil {
		return nil, fmt.Errorf("install record %s/%s: %w", Namespace, recordName(part), err)
	}
	return refs, nil
}

func (i *Installer) writeRecord(ctx context.Context, part string, refs []Ref) error {
	b, err := json.Marshal(refs)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: recordName(part), Namespace: Namespace,
			Labels: map[string]string{controller.PartOf: "kaitoflow", PartLabel: part}},
		Data: map[string]string{"objects": string(b)},
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(cm)
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{Object: m}
	// The record is install's alone: forced.
	opts := metav1.ApplyOptions{FieldManager: FieldManager, Force: true}
	if _, err := i.Client.Resource(configMaps).Namespace(Namespace).Apply(ctx, cm.Name, obj, opts); err != nil {
		return fmt.Errorf("write the install record of %s: %w", part, err)
	}
	return nil
}

// UninstallOptions say how long to wait for Workspaces to go, and whether to let them go
// without their capacity released.
type UninstallOptions struct {
	// Wait bounds the wait for the Workspaces' finalizer, and then (a minute at least) for the
	// release's objects.
	Wait time.Duration
	// Force removes the finalizer of Workspaces still held after Wait: their GPU capacity (agent
	// pools, NodeClaims) is then left for the operator to release.
	Force bool
}

// Uninstall removes a part: for the core, its Workspaces and InferenceSets first (the controller,
// still running, releases their capacity), then every object its record names, CRDs and the
// Namespace last.
func (i *Installer) Uninstall(ctx context.Context, part string, o UninstallOptions) ([]Ref, error) {
	refs, err := i.record(ctx, part)
	if err != nil {
		return nil, err
	}
	if refs == nil {
		return nil, fmt.Errorf("no kaitoflow %s is installed here (no %s/%s)", part, Namespace, recordName(part))
	}
	for _, r := range refs {
		if r.Kind == "CustomResourceDefinition" {
			if err := i.release(ctx, r.Name, o); err != nil {
				return nil, err
			}
		}
	}
	refs = slices.Clone(refs)
	slices.Reverse(refs)
	slices.SortStableFunc(refs, func(a, b Ref) int { return cmp.Compare(deleteRank(a), deleteRank(b)) })
	var removed []Ref
	for _, r := range refs {
		deleted, err := i.deleteOwn(ctx, r, part)
		if err != nil {
			return nil, fmt.Errorf("delete %s: %w", r, err)
		}
		if deleted {
			removed = append(removed, r)
		}
	}
	refs = removed
	rec := Ref{APIVersion: "v1", Kind: "ConfigMap", Namespace: Namespace, Name: recordName(part)}
	if err := i.Client.Resource(configMaps).Namespace(Namespace).Delete(ctx, rec.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("delete %s: %w", rec, err)
	}
	// A namespace takes its controller a while to empty, whatever the Workspaces were given.
	return refs, i.gone(ctx, append(refs, rec), max(o.Wait, time.Minute))
}

// deleteRank orders an uninstall: workloads and the rest, then CRDs, the Namespace last.
func deleteRank(r Ref) int {
	switch r.Kind {
	case "CustomResourceDefinition":
		return 1
	case "Namespace":
		return 2
	}
	return 0
}

// release deletes every object of the CRD named crd and waits for them to go; those still held
// by kaitoflow's finalizer after o.Wait are refused, or let go with o.Force.
func (i *Installer) release(ctx context.Context, crd string, o UninstallOptions) error {
	u, err := i.Client.Resource(crds).Get(ctx, crd, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read CRD %s: %w", crd, err)
	}
	if u.GetLabels()[controller.PartOf] != "kaitoflow" {
		return nil // not kaitoflow's CRD (the record says otherwise): its objects are not ours to delete
	}
	group, _, _ := unstructured.NestedString(u.Object, "spec", "group")
	plural, _, _ := unstructured.NestedString(u.Object, "spec", "names", "plural")
	version := ""
	vs, _, _ := unstructured.NestedSlice(u.Object, "spec", "versions")
	for _, v := range vs {
		if m, _ := v.(map[string]any); m["storage"] == true {
			version, _ = m["name"].(string)
		}
	}
	res := i.Client.Resource(schema.GroupVersionResource{Group: group, Version: version, Resource: plural})
	list, err := res.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list %s: %w", crd, err)
	}
	for _, w := range list.Items {
		if err := res.Namespace(w.GetNamespace()).Delete(ctx, w.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %s %s/%s: %w", plural, w.GetNamespace(), w.GetName(), err)
		}
	}
	held, err := i.heldAfter(ctx, res, o.Wait)
	if err != nil {
		return fmt.Errorf("list %s to see whether they are released: %w", plural, err)
	}
	if len(held) == 0 {
		return nil
	}
	names := make([]string, len(held))
	for n, w := range held {
		names[n] = w.GetNamespace() + "/" + w.GetName()
	}
	if !o.Force {
		return fmt.Errorf("%w: %s %s still wait after %s for the controller to release their capacity (finalizer %s); "+
			"is kaitoflow-controller running in %s? Nothing of the release was deleted. --force lets them go and leaves "+
			"their GPU capacity (agent pools, NodeClaims) to you", ErrStuck, plural, strings.Join(names, ", "), o.Wait, controller.Finalizer, Namespace)
	}
	for _, w := range held {
		fin := slices.DeleteFunc(w.GetFinalizers(), func(f string) bool { return f == controller.Finalizer })
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": fin, "resourceVersion": w.GetResourceVersion()}})
		if _, err := res.Namespace(w.GetNamespace()).Patch(ctx, w.GetName(), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil &&
			!apierrors.IsNotFound(err) {
			return fmt.Errorf("remove the finalizer of %s %s/%s: %w", plural, w.GetNamespace(), w.GetName(), err)
		}
		logctx.Or(i.Log).Warn("let go without releasing its capacity: release its GPU node pool or NodeClaim yourself",
			"resource", plural, "namespace", w.GetNamespace(), "name", w.GetName())
	}
	return nil
}

// heldAfter lists res until it is empty or wait has passed, and returns what is left. Released
// means a List that succeeded and found none: a List that fails never counts, and a wait of 0
// still looks once.
func (i *Installer) heldAfter(ctx context.Context, res dynamic.NamespaceableResourceInterface, wait time.Duration) ([]unstructured.Unstructured, error) {
	var held []unstructured.Unstructured
	listed := false
	var lastErr error
	for deadline := time.Now().Add(wait); ; {
		l, err := res.List(ctx, metav1.ListOptions{})
		if err == nil {
			listed, held = true, l.Items
			if len(held) == 0 {
				return nil, nil
			}
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(i.poll()):
		}
	}
	if !listed {
		if lastErr == nil {
			lastErr = ctx.Err()
		}
		return nil, lastErr
	}
	return held, nil
}

// gone waits until none of refs exists.
func (i *Installer) gone(ctx context.Context, refs []Ref, within time.Duration) error {
	var left []string
	err := wait.PollUntilContextTimeout(ctx, i.poll(), within, true, func(ctx context.Context) (bool, error) {
		left = left[:0]
		for _, r := range refs {
			c, err := i.resource(r)
			if err != nil {
				continue // its CRD went with it
			}
			if _, err := c.Get(ctx, r.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				left = append(left, r.String())
			}
		}
		return len(left) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("still there after %s: %s", within, strings.Join(left, ", "))
	}
	return nil
}
