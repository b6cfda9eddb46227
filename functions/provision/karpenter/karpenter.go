// Package karpenter provides GPU capacity as Karpenter NodeClaims (karpenter.sh/v1), one per node
// a workspace needs, created with client-go's dynamic client: Karpenter (or AKS's node
// auto-provisioning, which runs it) launches the VM; the NodeClaim's conditions say how far it got.
package karpenter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/internal/kubeerr"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// NodeClaims and NodePools are Karpenter's resources.
var (
	NodeClaims = schema.GroupVersionResource{Group: "karpenter.sh", Version: "v1", Resource: "nodeclaims"}
	NodePools  = schema.GroupVersionResource{Group: "karpenter.sh", Version: "v1", Resource: "nodepools"}
)

// ConsolidateAfter is how long a serving node stays empty before Karpenter removes it: past
// Knative's scale-to-zero retention, so a short pause in traffic does not cost a cold VM.
const ConsolidateAfter = "15m"

// NodeClassRef names the provider-specific node class the NodeClaims use (on AKS:
// karpenter.azure.com AKSNodeClass "default").
type NodeClassRef struct {
	Group, Kind, Name string
}

// Provider creates NodeClaims.
type Provider struct {
	Client    dynamic.Interface
	Nodes     provision.Nodes
	NodeClass NodeClassRef
	Log       *slog.Logger
}

// Name implements provision.Provider.
func (p *Provider) Name() string { return "karpenter" }

// ClaimName is the i-th NodeClaim of a workspace: cluster-scoped, so the namespace is part of
// the hash; the workspace name is kept for people reading `kubectl get nodeclaims`.
func ClaimName(ref events.Ref, i int) string {
	sum := sha256.Sum256([]byte(ref.Namespace + "/" + ref.Name))
	base := ref.Name
	if len(base) > 40 {
		base = base[:40]
	}
	return fmt.Sprintf("kf-%s-%s-%d", strings.TrimSuffix(base, "-"), hex.EncodeToString(sum[:])[:8], i)
}

// Claim builds the i-th NodeClaim of a request: a pure function of the request.
func (p *Provider) Claim(req provision.Request, i int) *unstructured.Unstructured {
	lbls := map[string]any{}
	for k, v := range req.Labels() {
		lbls[k] = v
	}
	key, value, _ := strings.Cut(provision.GPUTaint, "=")
	value, effect, _ := strings.Cut(value, ":")
	gpus := max(req.Plan.GPUs, 1)
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "karpenter.sh/v1",
		"kind":       "NodeClaim",
		"metadata": map[string]any{
			"name":   ClaimName(req.Ref, i),
			"labels": lbls,
			"annotations": map[string]any{
				"kaitoflow.io/generation": fmt.Sprint(req.Ref.Generation),
				"kaitoflow.io/purpose":    string(req.Purpose),
			},
		},
		"spec": map[string]any{
			"requirements": []any{
				map[string]any{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": []any{req.Plan.InstanceType}},
				map[string]any{"key": "kubernetes.io/os", "operator": "In", "values": []any{"linux"}},
			},
			"taints":       []any{map[string]any{"key": key, "value": value, "effect": effect}},
			"resources":    map[string]any{"requests": map[string]any{"nvidia.com/gpu": fmt.Sprint(gpus)}},
			"nodeClassRef": map[string]any{"group": p.NodeClass.Group, "kind": p.NodeClass.Kind, "name": p.NodeClass.Name},
		},
	}}
}

// PoolName is the workspace's serving NodePool: its claims' name without the index.
func PoolName(ref events.Ref) string {
	return strings.TrimSuffix(ClaimName(ref, 0), "-0")
}

// Pool builds the serving NodePool of a request: the NodeClaim's requirements, taints, labels and
// node class as a template Karpenter launches from when an inference pod is pending, removed again
// once empty, and limited to the workspace's GPUs. A pure function of the request.
func (p *Provider) Pool(req provision.Request) *unstructured.Unstructured {
	claim := p.Claim(req, 0).Object
	spec := claim["spec"].(map[string]any)
	delete(spec, "resources") // a NodePool sizes nodes from the pending pods' requests
	meta := claim["metadata"].(map[string]any)
	meta["name"] = PoolName(req.Ref)
	gpus := int64(max(req.Plan.GPUs, 1)) * int64(req.Workspace.NodeCount())
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "karpenter.sh/v1",
		"kind":       "NodePool",
		"metadata":   meta,
		"spec": map[string]any{
			// The nodes it launches carry the workspace's labels, as the NodeClaims' nodes did.
			"template":   map[string]any{"metadata": map[string]any{"labels": runtime.DeepCopyJSONValue(meta["labels"])}, "spec": spec},
			"limits":     map[string]any{"nvidia.com/gpu": fmt.Sprint(gpus)},
			"disruption": map[string]any{"consolidationPolicy": "WhenEmpty", "consolidateAfter": ConsolidateAfter},
		},
	}}
}

// Serve implements provision.Handover: a NodePool for the workspace's serving nodes, then the
// tuning NodeClaims go (Karpenter adopts no standalone NodeClaim into a pool). The first inference
// pod is pending until the pool has launched a node for it; an empty node is consolidated away, so
// no GPU is held while the service is at zero.
func (p *Provider) Serve(ctx context.Context, req provision.Request) error {
	req.Purpose = provision.Serving
	pool := p.Pool(req)
	_, err := p.Client.Resource(NodePools).Create(ctx, pool, metav1.CreateOptions{FieldManager: "kaitoflow"})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return kubeerr.Classify(fmt.Errorf("create NodePool %s: %w", pool.GetName(), err))
	}
	return p.deleteClaims(ctx, req)
}

// Ensure implements provision.Provider: create each NodeClaim unless it exists.
func (p *Provider) Ensure(ctx context.Context, req provision.Request) error {
	for i := range req.Workspace.NodeCount() {
		c := p.Claim(req, i)
		_, err := p.Client.Resource(NodeClaims).Create(ctx, c, metav1.CreateOptions{FieldManager: "kaitoflow"})
		switch {
		case apierrors.IsAlreadyExists(err):
			// A claim still being deleted (its node lost, or released for a larger SKU) is not
			// the capacity asked for: it is created again once it is gone, on a later tick.
			have, gerr := p.Client.Resource(NodeClaims).Get(ctx, c.GetName(), metav1.GetOptions{})
			if gerr == nil && have.GetDeletionTimestamp() != nil {
				return fmt.Errorf("NodeClaim %s is being deleted; it is created again once it is gone", c.GetName())
			}
		case err != nil:
			return kubeerr.Classify(fmt.Errorf("create NodeClaim %s: %w", c.GetName(), err))
		default:
			logctx.Or(p.Log).InfoContext(ctx, "karpenter: NodeClaim created", "nodeclaim", c.GetName(), "instance_type", req.Plan.InstanceType)
		}
	}
	return nil
}

// Check implements provision.Provider: the NodeClaims' conditions (Launched, Registered,
// Initialized), then the nodes themselves.
func (p *Provider) Check(ctx context.Context, req provision.Request) (provision.Capacity, error) {
	var waiting []string
	for i := range req.Workspace.NodeCount() {
		name := ClaimName(req.Ref, i)
		c, err := p.Client.Resource(NodeClaims).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			waiting = append(waiting, name+": not created")
			continue
		}
		if err != nil {
			return provision.Capacity{}, fmt.Errorf("get NodeClaim %s: %w", name, err)
		}
		conds, _, _ := unstructured.NestedSlice(c.Object, "status", "conditions")
		state := map[string]map[string]any{}
		for _, x := range conds {
			if m, ok := x.(map[string]any); ok {
				state[fmt.Sprint(m["type"])] = m
			}
		}
		if l := state["Launched"]; l != nil && l["status"] == "False" && isTerminal(fmt.Sprint(l["reason"])) {
			return provision.Capacity{}, events.Permanentf("NodeClaimLaunchFailed", "NodeClaim %s could not launch %s: %s: %s", name,
				req.Plan.InstanceType, l["reason"], l["message"])
		}
		var parts []string
		for _, t := range []string{"Launched", "Registered", "Initialized"} {
			st := "Unknown"
			if m := state[t]; m != nil {
				st = fmt.Sprint(m["status"])
			}
			parts = append(parts, t+"="+st)
		}
		waiting = append(waiting, name+": "+strings.Join(parts, " "))
	}
	sel := labels.SelectorFromSet(labels.Set{provision.LabelWorkspace: req.Ref.Name, provision.LabelNamespace: req.Ref.Namespace})
	cap, _, err := p.Nodes.Check(ctx, provision.NodeWant{
		Selector: sel, Count: req.Workspace.NodeCount(), GPUs: int64(max(req.Plan.GPUs, 1)), GPUMemoryGiB: req.Plan.GPUMemoryGiB,
	})
	if err == nil && !cap.Ready {
		cap.Waiting = strings.Join(waiting, "; ") + "; " + cap.Waiting
	}
	return cap, err
}

// isTerminal: launch failures Karpenter will not retry for this NodeClaim.
func isTerminal(reason string) bool {
	switch reason {
	case "InsufficientCapacity", "InsufficientCapacityError", "NodeClassNotReady", "InvalidRequirements":
		return true
	}
	return false
}

// Release implements provision.Provider: delete the NodeClaims and the serving NodePool;
// Karpenter drains and deletes the nodes.
func (p *Provider) Release(ctx context.Context, req provision.Request) error {
	name := PoolName(req.Ref)
	if err := p.Client.Resource(NodePools).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete NodePool %s: %w", name, err)
	}
	return p.deleteClaims(ctx, req)
}

func (p *Provider) deleteClaims(ctx context.Context, req provision.Request) error {
	for i := range req.Workspace.NodeCount() {
		name := ClaimName(req.Ref, i)
		err := p.Client.Resource(NodeClaims).Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete NodeClaim %s: %w", name, err)
		}
	}
	return nil
}
