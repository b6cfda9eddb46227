package knative

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/internal/kubeerr"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// A serving pool is one Knative Service (named as the pool) that serves the adapters of every
// workspace whose kaitoflow.io/serving-pool names it: one revision template (the members must
// build the same one: same preset, plan, node selector, pull secrets and pool size), one adapter
// set holding every member's adapters side by side, each routed from its workspace's model name.
// The Service carries a member.kaitoflow.io/<workspace> label per member (its generation) and an
// acked.kaitoflow.io/<workspace> annotation once its outcome is stored; the set's ConfigMap keeps
// what each member serves (MembersKey). The last member to leave deletes it.
const (
	// LabelPool names the serving pool a Knative Service is.
	LabelPool    = "kaitoflow.io/serving-pool"
	memberPrefix = "member.kaitoflow.io/"
	ackedPrefix  = "acked.kaitoflow.io/"
	// MembersKey is the set ConfigMap's key holding each member's adapters.
	MembersKey = "members.json"
)

// poolMember is what one workspace serves in a pool.
type poolMember struct {
	Generation int64           `json:"generation"`
	Serving    int64           `json:"serving,omitempty"`
	Adapters   []serve.Adapter `json:"adapters,omitempty"`
}

func (m poolMember) deployment(ns, name, pool string) serve.Deployment {
	return serve.Deployment{Ref: events.Ref{Namespace: ns, Name: name, Generation: m.Generation}, Service: pool, Pool: pool,
		Adapters: m.Adapters, Serving: m.Serving}
}

// applyPool makes d's workspace a member of its pool at d's generation: the pool's Service is
// created by its first member and must be built alike by every other; the member's adapters join
// the pool's set, which the running replicas load live.
func (k *Deployer) applyPool(ctx context.Context, client dynamic.ResourceInterface, d serve.Deployment) error {
	cur, err := client.Get(ctx, d.Service, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cur = nil
	case err != nil:
		return fmt.Errorf("get Knative Service %s/%s: %w", d.Ref.Namespace, d.Service, err)
	}
	// What serve.AdmitService decides on: whether the Service is this pool's, the member's record,
	// and the pod template the pool runs against the one this member would.
	state := serve.Service{Exists: cur != nil, Ours: cur == nil || cur.GetLabels()[LabelPool] == d.Pool}
	var members poolState
	var obj *unstructured.Unstructured
	if state.Ours {
		if members, err = k.readMembers(ctx, d.Ref.Namespace, d.Service, cur); err != nil {
			return err
		}
		if m, ok := members.of[d.Ref.Name]; ok {
			state.Member = &serve.Member{Generation: m.Generation, Serving: m.Serving}
		}
		if d.Serving == 0 {
			if obj, err = k.build(ctx, d); err != nil {
				return err
			}
			if cur != nil {
				state.Runs, state.Wants = cur.GetAnnotations()[AnnotationTemplate], obj.GetAnnotations()[AnnotationTemplate]
			}
		}
	}
	apply, err := serve.AdmitService(d, state)
	if err != nil {
		return err
	}
	if !apply {
		// A redelivery, or an older generation arriving late; finish what a first delivery
		// may have left undone: the member's label (without it nothing finds the member).
		m := members.of[d.Ref.Name]
		if cur != nil && m.Generation == d.Ref.Generation && cur.GetLabels()[memberPrefix+d.Ref.Name] != strconv.FormatInt(m.Generation, 10) {
			return k.patchPool(ctx, cur, map[string]any{ackedPrefix + d.Ref.Name: nil, AnnotationSetVersion: strconv.FormatInt(members.version, 10)},
				map[string]any{memberPrefix + d.Ref.Name: strconv.FormatInt(m.Generation, 10)})
		}
		return nil
	}
	if d.Serving == 0 && cur == nil {
		if cur, err = k.createPool(ctx, client, d, obj); err != nil {
			return err
		}
	}
	// A workspace that was served alone until now stops being: its own Service goes.
	if err := k.deleteOwn(ctx, d.Ref); err != nil {
		return err
	}
	members.of[d.Ref.Name] = poolMember{Generation: d.Ref.Generation, Serving: cmp.Or(d.Serving, d.Held), Adapters: d.Adapters}
	version, err := k.writeMembers(ctx, d.Ref.Namespace, d.Pool, cur, members)
	if err != nil {
		return err
	}
	logctx.Or(k.Log).InfoContext(ctx, "serving pool member applied: the running replicas load its adapters live", "pool", d.Pool,
		"workspace", d.Ref.Name, "generation", d.Ref.Generation, "members", len(members.of))
	// Not found here is not success: the pool was deleted under this member (its last other
	// member left); the retry creates it again.
	return patchMetadata(ctx, client, d.Ref.Namespace, d.Pool, map[string]any{ackedPrefix + d.Ref.Name: nil,
		AnnotationSetVersion: strconv.FormatInt(version, 10)},
		map[string]any{memberPrefix + d.Ref.Name: strconv.FormatInt(d.Ref.Generation, 10)}, false)
}

// createPool creates the pool's Service for its first member. Another member creating it at the
// same time is retried, to join it.
func (k *Deployer) createPool(ctx context.Context, client dynamic.ResourceInterface, d serve.Deployment, obj *unstructured.Unstructured) (
	*unstructured.Unstructured, error) {
	cur, err := client.Create(ctx, obj, metav1.CreateOptions{FieldManager: fieldManager})
	if apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("serving pool %s/%s created meanwhile; retrying to join it: %w", d.Ref.Namespace, d.Pool, err)
	} else if err != nil {
		return nil, kubeerr.Classify(fmt.Errorf("create serving pool %s/%s: %w", d.Ref.Namespace, d.Pool, err))
	}
	logctx.Or(k.Log).InfoContext(ctx, "serving pool created", "pool", d.Pool, "namespace", d.Ref.Namespace, "by", d.Ref.Name)
	return cur, nil
}

// poolState is a pool's members as its set's ConfigMap holds them, and what writing it back needs:
// the ConfigMap's resourceVersion (so a member joining or leaving at the same time is a conflict,
// retried, never a lost update) and the set's version.
type poolState struct {
	of              map[string]poolMember
	resourceVersion string
	version         int64
	adminToken      string
}

// readMembers is what each member of a pool serves, from the set's ConfigMap. A ConfigMap that
// an earlier Service of the same name owned (deleted, its ConfigMap not yet collected) holds no
// members of this one.
func (k *Deployer) readMembers(ctx context.Context, ns, pool string, owner *unstructured.Unstructured) (poolState, error) {
	st := poolState{of: map[string]poolMember{}}
	if k.Kube == nil {
		return st, nil
	}
	cm, err := k.Kube.ConfigMaps(ns).Get(ctx, AdapterSetName(pool), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("get serving pool %s/%s's members: %w", ns, pool, err)
	}
	st.resourceVersion = cm.ResourceVersion
	if owner == nil || !slices.ContainsFunc(cm.OwnerReferences, func(o metav1.OwnerReference) bool { return o.UID == owner.GetUID() }) {
		return st, nil
	}
	if set, err := chatproxy.DecodeAdapterSet([]byte(cm.Data[AdapterSetKey])); err == nil {
		st.version = set.Version
	}
	st.adminToken = cm.Data[AdminTokenKey]
	if b := cm.Data[MembersKey]; b != "" {
		if err := json.Unmarshal([]byte(b), &st.of); err != nil {
			return st, fmt.Errorf("serving pool %s/%s: %s: %w", ns, pool, MembersKey, err)
		}
	}
	return st, nil
}

// writeMembers writes the pool's members and the union of their adapters (one version up when it
// changed) to the set's ConfigMap, owned by the pool's Service, and returns the set's version.
func (k *Deployer) writeMembers(ctx context.Context, ns, pool string, owner *unstructured.Unstructured, members poolState) (int64, error) {
	if k.Kube == nil {
		return 0, fmt.Errorf("knative deployer: no Kubernetes client to write serving pool %s's adapter set with", pool)
	}
	var ds []serve.Deployment
	for _, name := range slices.Sorted(maps.Keys(members.of)) {
		ds = append(ds, members.of[name].deployment(ns, name, pool))
	}
	want, err := serve.UnionSet(ds, members.version+1, placer())
	if err != nil {
		return 0, err
	}
	membersJSON, err := json.Marshal(members.of)
	if err != nil {
		return 0, err
	}
	token, err := adminToken(members.adminToken)
	if err != nil {
		return 0, err
	}
	cm := setConfigMap(ns, AdapterSetName(pool), map[string]string{LabelPool: pool, events.LabelNamespace: ns}, want, token, owner)
	cm.Data[MembersKey] = string(membersJSON)
	if err := k.putSet(ctx, cm, members.resourceVersion); err != nil {
		return 0, err
	}
	return want.Version, nil
}

// poolOf is the pool Service that has ref's workspace as a member, nil when none does.
func (k *Deployer) poolOf(ctx context.Context, ref events.Ref) (*unstructured.Unstructured, error) {
	l, err := k.Client.Resource(Services).Namespace(ref.Namespace).List(ctx, metav1.ListOptions{LabelSelector: memberPrefix + ref.Name})
	if err != nil {
		return nil, fmt.Errorf("find the serving pool of %s: %w", ref, err)
	}
	for i := range l.Items {
		if l.Items[i].GetLabels()[LabelPool] != "" {
			return &l.Items[i], nil
		}
	}
	return nil, nil
}

// poolStatus is a pool member's status: the pool Service's phase, the member's own adapters and
// generation. Nil when the workspace is in no pool.
func (k *Deployer) poolStatus(ctx context.Context, ref events.Ref) (*serve.Status, error) {
	u, err := k.poolOf(ctx, ref)
	if err != nil || u == nil {
		return nil, err
	}
	gen, _ := strconv.ParseInt(u.GetLabels()[memberPrefix+ref.Name], 10, 64)
	members, err := k.readMembers(ctx, ref.Namespace, u.GetName(), u)
	if err != nil {
		return nil, err
	}
	m := members.of[ref.Name]
	st := &serve.Status{Ref: events.Ref{Namespace: ref.Namespace, Name: ref.Name, Generation: gen}, Service: u.GetName(), Phase: serve.Pending,
		ServingGeneration: cmp.Or(m.Serving, m.Generation)}
	for _, a := range m.Adapters {
		st.Adapters = append(st.Adapters, serve.AdapterName(a.Name))
	}
	return st, k.fillStatus(ctx, u, st)
}

// poolMembers are the pool members whose outcome is not acknowledged for the pool's current set.
func (k *Deployer) poolMembers(ctx context.Context) ([]events.Ref, error) {
	l, err := k.Client.Resource(Services).Namespace("").List(ctx, metav1.ListOptions{LabelSelector: LabelPool})
	if err != nil {
		return nil, fmt.Errorf("list serving pools: %w", err)
	}
	var refs []events.Ref
	for _, u := range l.Items {
		version, _ := strconv.ParseInt(u.GetAnnotations()[AnnotationSetVersion], 10, 64)
		for key, v := range u.GetLabels() {
			name, ok := strings.CutPrefix(key, memberPrefix)
			if !ok {
				continue
			}
			gen, _ := strconv.ParseInt(v, 10, 64)
			if acked := u.GetAnnotations()[ackedPrefix+name]; acked != ackValue(gen, 0) && acked != ackValue(gen, version) {
				refs = append(refs, events.Ref{Namespace: u.GetNamespace(), Name: name, Generation: gen})
			}
		}
	}
	return refs, nil
}

// leavePool removes ref's workspace from its pool: its adapters leave the set (the replicas unload
// them), and the last member to leave deletes the pool's Service (its set goes with it).
func (k *Deployer) leavePool(ctx context.Context, ref events.Ref) error {
	u, err := k.poolOf(ctx, ref)
	if err != nil || u == nil {
		return err
	}
	members, err := k.readMembers(ctx, ref.Namespace, u.GetName(), u)
	if err != nil {
		return err
	}
	delete(members.of, ref.Name)
	if len(members.of) == 0 {
		// The set first, so a member joining meanwhile does not read this one back from a
		// ConfigMap the garbage collector has not removed yet.
		if err := k.Kube.ConfigMaps(ref.Namespace).Delete(ctx, AdapterSetName(u.GetName()),
			metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete serving pool %s/%s's adapter set: %w", ref.Namespace, u.GetName(), err)
		}
		err := k.Client.Resource(Services).Namespace(ref.Namespace).Delete(ctx, u.GetName(),
			metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: ptr(u.GetUID())}})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete serving pool %s/%s: %w", ref.Namespace, u.GetName(), err)
		}
		logctx.Or(k.Log).InfoContext(ctx, "serving pool deleted: its last member left", "pool", u.GetName(), "namespace", ref.Namespace)
		return nil
	}
	version, err := k.writeMembers(ctx, ref.Namespace, u.GetName(), u, members)
	if err != nil {
		return err
	}
	logctx.Or(k.Log).InfoContext(ctx, "workspace left its serving pool", "pool", u.GetName(), "workspace", ref.Name, "members", len(members.of))
	return k.patchPool(ctx, u, map[string]any{ackedPrefix + ref.Name: nil, AnnotationSetVersion: strconv.FormatInt(version, 10)},
		map[string]any{memberPrefix + ref.Name: nil})
}

// patchPool merges annotations and labels into a pool Service's metadata: never its template.
func (k *Deployer) patchPool(ctx context.Context, u *unstructured.Unstructured, annotations, labels map[string]any) error {
	return patchMetadata(ctx, k.Client.Resource(Services).Namespace(u.GetNamespace()), u.GetNamespace(), u.GetName(), annotations, labels, true)
}
