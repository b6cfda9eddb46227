package platform

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/utils/ptr"

	"github.com/kaitoflow/kaitoflow/functions/provision/karpenter"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// LabelNodePool is the label Karpenter puts on a NodePool's NodeClaims and nodes.
const LabelNodePool = "karpenter.sh/nodepool"

// Karpenter is a stand-in for Karpenter (as AKS's node auto-provisioning runs it). Its launcher
// turns every NodeClaim into exactly the node it asks for — the claim's labels, the single values
// of its requirements, its taints, the GPUs of its instance type — and reports Launched,
// Registered and Initialized on the claim; a claim for an instance type that does not exist fails
// to launch with InsufficientCapacity, as Karpenter's does. Its provisioner creates a NodeClaim
// from a NodePool when a pod the scheduler cannot place fits the pool's template, within the
// pool's nvidia.com/gpu limit, and removes a pool's NodeClaim whose node has been empty for
// ConsolidateAfter (consolidationPolicy WhenEmpty). A node is owned by its NodeClaim and a pool's
// claims by their NodePool, as Karpenter sets them, so the box's real garbage collector removes
// nodes whose claims are deleted and claims whose pool is. (Karpenter's own kwok provider knows
// only its generic instance types, hence this stand-in.)
type Karpenter struct {
	Box *testenv.Box
	// ConsolidateAfter stands in for the NodePools' consolidateAfter (minutes in production, too
	// long for a test); zero keeps empty nodes.
	ConsolidateAfter time.Duration

	dyn  dynamic.Interface
	mu   sync.Mutex
	next int
	idle map[string]time.Time // since when each pool claim's node has been empty
}

// NewKarpenter returns a Karpenter stand-in acting on b, whose API server must serve Karpenter's
// CRDs.
func NewKarpenter(b *testenv.Box) *Karpenter {
	return &Karpenter{Box: b, dyn: dynamic.NewForConfigOrDie(b.Config), idle: map[string]time.Time{}}
}

// Run launches and consolidates until ctx ends.
func (k *Karpenter) Run(ctx context.Context) {
	loop(ctx, func(ctx context.Context) error {
		if err := k.provision(ctx); err != nil {
			return err
		}
		return k.launch(ctx)
	})
}

// shape reads the node a NodeClaim spec (or a NodePool's template spec) describes.
func shape(spec map[string]any, lbls map[string]string) (template, string, error) {
	t := template{labels: map[string]string{}}
	for k, v := range lbls {
		t.labels[k] = v
	}
	reqs, _, _ := unstructured.NestedSlice(spec, "requirements")
	for _, r := range reqs {
		m, _ := r.(map[string]any)
		vals, _ := m["values"].([]any)
		if m["operator"] == "In" && len(vals) == 1 {
			t.labels[fmt.Sprint(m["key"])] = fmt.Sprint(vals[0])
		}
	}
	taints, _, _ := unstructured.NestedSlice(spec, "taints")
	for _, x := range taints {
		m, _ := x.(map[string]any)
		t.taints = append(t.taints, corev1.Taint{Key: fmt.Sprint(m["key"]), Value: fmt.Sprint(m["value"]), Effect: corev1.TaintEffect(fmt.Sprint(m["effect"]))})
	}
	it := t.labels[LabelInstanceType]
	gpus, err := gpusOf(it)
	t.gpus = gpus
	return t, it, err
}

// launch makes the node of every NodeClaim that has none.
func (k *Karpenter) launch(ctx context.Context) error {
	l, err := k.dyn.Resource(karpenter.NodeClaims).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range l.Items {
		c := &l.Items[i]
		if c.GetDeletionTimestamp() != nil {
			continue
		}
		if name, _, _ := unstructured.NestedString(c.Object, "status", "nodeName"); name != "" {
			continue
		}
		spec, _, _ := unstructured.NestedMap(c.Object, "spec")
		t, it, err := shape(spec, c.GetLabels())
		if err != nil {
			if err := k.conditions(ctx, c, "", "False", "InsufficientCapacity", fmt.Sprintf("no instance type %q satisfies the requirements", it)); err != nil {
				return err
			}
			continue
		}
		t.labels["karpenter.sh/registered"], t.labels["karpenter.sh/initialized"] = "true", "true"
		owner := metav1.OwnerReference{APIVersion: "karpenter.sh/v1", Kind: "NodeClaim", Name: c.GetName(), UID: c.GetUID(), BlockOwnerDeletion: ptr.To(true)}
		if err := k.Box.Node(ctx, testenv.NodeSpec{Name: c.GetName(), Labels: t.labels, Taints: t.taints, GPUs: t.gpus,
			Owners: []metav1.OwnerReference{owner}}); err != nil {
			return err
		}
		if err := k.conditions(ctx, c, c.GetName(), "True", "Launched", "launched by the box's Karpenter stand-in"); err != nil {
			return err
		}
	}
	return nil
}

// conditions writes the claim's launch outcome: its node and Launched, Registered and
// Initialized, or Launched False with the reason.
func (k *Karpenter) conditions(ctx context.Context, c *unstructured.Unstructured, node, status, reason, msg string) error {
	now := time.Now().UTC().Format(time.RFC3339)
	cond := func(typ string) any {
		return map[string]any{"type": typ, "status": status, "reason": reason, "message": msg, "lastTransitionTime": now}
	}
	st := map[string]any{"conditions": []any{cond("Launched")}}
	if node != "" {
		st = map[string]any{"nodeName": node, "providerID": "kwok://" + node,
			"conditions": []any{cond("Launched"), cond("Registered"), cond("Initialized")}}
	}
	c = c.DeepCopy()
	c.Object["status"] = st
	_, err := k.dyn.Resource(karpenter.NodeClaims).UpdateStatus(ctx, c, metav1.UpdateOptions{})
	return err
}

// provision launches and consolidates NodePool claims.
func (k *Karpenter) provision(ctx context.Context) error {
	pools, err := k.dyn.Resource(karpenter.NodePools).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if len(pools.Items) == 0 {
		return nil
	}
	pending, err := unschedulable(ctx, k.Box.Client)
	if err != nil {
		return err
	}
	sort.Slice(pools.Items, func(i, j int) bool { return pools.Items[i].GetName() < pools.Items[j].GetName() })
	for i := range pools.Items {
		if err := k.pool(ctx, &pools.Items[i], pending); err != nil {
			return err
		}
	}
	return nil
}

func (k *Karpenter) pool(ctx context.Context, pool *unstructured.Unstructured, pending []corev1.Pod) error {
	if pool.GetDeletionTimestamp() != nil {
		return nil
	}
	spec, _, _ := unstructured.NestedMap(pool.Object, "spec", "template", "spec")
	lbls, _, _ := unstructured.NestedStringMap(pool.Object, "spec", "template", "metadata", "labels")
	t, _, err := shape(spec, lbls)
	if err != nil {
		return err
	}
	t.labels[LabelNodePool] = pool.GetName()
	claims, err := k.dyn.Resource(karpenter.NodeClaims).List(ctx, metav1.ListOptions{LabelSelector: LabelNodePool + "=" + pool.GetName()})
	if err != nil {
		return err
	}
	// Claims whose node runs nothing yet can take a pending pod; only the rest need new nodes.
	var free []*unstructured.Unstructured
	for i := range claims.Items {
		c := &claims.Items[i]
		used, err := busy(ctx, k.Box.Client, c.GetName())
		if err != nil {
			return err
		}
		if !used {
			free = append(free, c)
		}
	}
	limit := int64(-1)
	if s, ok, _ := unstructured.NestedString(pool.Object, "spec", "limits", "nvidia.com/gpu"); ok {
		q, err := resource.ParseQuantity(s)
		if err != nil {
			return fmt.Errorf("NodePool %s: limits: %w", pool.GetName(), err)
		}
		limit = q.Value()
	}
	inUse := int64(len(claims.Items)) * t.gpus
	want := 0
	for _, p := range pending {
		if t.fits(&p) {
			want++
		}
	}
	for n := want - len(free); n > 0 && (limit < 0 || inUse+t.gpus <= limit); n-- {
		if err := k.claimFor(ctx, pool, spec, t); err != nil {
			return err
		}
		inUse += t.gpus
	}
	if k.ConsolidateAfter <= 0 || want > 0 {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range free {
		if name, _, _ := unstructured.NestedString(c.Object, "status", "nodeName"); name == "" {
			continue // not launched yet
		}
		since, ok := k.idle[c.GetName()]
		if !ok {
			k.idle[c.GetName()] = time.Now()
			continue
		}
		if time.Since(since) >= k.ConsolidateAfter {
			if err := k.dyn.Resource(karpenter.NodeClaims).Delete(ctx, c.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			delete(k.idle, c.GetName())
		}
	}
	return nil
}

// claimFor creates one NodeClaim from the pool's template, owned by the pool.
func (k *Karpenter) claimFor(ctx context.Context, pool *unstructured.Unstructured, spec map[string]any, t template) error {
	k.mu.Lock()
	name := fmt.Sprintf("%s-%05d", pool.GetName(), k.next)
	k.next++
	k.mu.Unlock()
	lbls := map[string]any{}
	for key, v := range t.labels {
		lbls[key] = v
	}
	claimSpec := runtime.DeepCopyJSONValue(spec).(map[string]any)
	claimSpec["resources"] = map[string]any{"requests": map[string]any{"nvidia.com/gpu": fmt.Sprint(t.gpus)}}
	c := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
		"metadata": map[string]any{"name": name, "labels": lbls, "ownerReferences": []any{map[string]any{
			"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "name": pool.GetName(), "uid": string(pool.GetUID()), "blockOwnerDeletion": true}}},
		"spec": claimSpec,
	}}
	_, err := k.dyn.Resource(karpenter.NodeClaims).Create(ctx, c, metav1.CreateOptions{})
	return err
}
