package karpenter

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/provision/nodes"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// karpenterVersion is the module whose CRDs the tests install (from the Go module cache).
const karpenterVersion = "v1.14.1"

var (
	kube    kubernetes.Interface
	dyn     dynamic.Interface
	kubeErr error
	// reader is the narrow client provision reads Nodes with.
	reader *kubeclient.Client
)

func TestMain(m *testing.M) {
	dir, err := testenv.ModuleDir("sigs.k8s.io/karpenter", karpenterVersion)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(testenv.Main(m, func(cfg *rest.Config, err error) {
		if kubeErr = err; cfg != nil {
			kube = kubernetes.NewForConfigOrDie(cfg)
			if reader, err = kubeclient.New(cfg); err != nil {
				kubeErr, kube = err, nil
			}
			dyn = dynamic.NewForConfigOrDie(cfg)
		}
	}, filepath.Join(dir, "pkg", "apis", "crds")))
}

func setup(t *testing.T) *Provider {
	t.Helper()
	if kube == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	return &Provider{Client: dyn, Nodes: &nodes.Checker{Client: reader}, NodeClass: NodeClassRef{Group: "karpenter.azure.com", Kind: "AKSNodeClass", Name: "default"},
		Log: slog.New(slog.DiscardHandler)}
}

func request(name string, count int) provision.Request {
	ws := kaito.Workspace{}
	ws.Name = name
	ws.Resource.Count = &count
	ws.Resource.LabelSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "tuning-phi-3"}}
	return provision.Request{Ref: events.Ref{Namespace: "default", Name: name, Generation: 1}, Workspace: ws, Purpose: provision.Tuning,
		Plan: events.Plan{InstanceType: "Standard_NC24ads_A100_v4", GPUs: 1, GPUMemoryGiB: 80}}
}

func setConditions(t *testing.T, name string, conds ...map[string]any) {
	t.Helper()
	ctx := context.Background()
	c, err := dyn.Resource(NodeClaims).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var list []any
	for _, x := range conds {
		x["lastTransitionTime"] = metav1.Now().UTC().Format("2006-01-02T15:04:05Z")
		list = append(list, x)
	}
	if err := unstructured.SetNestedSlice(c.Object, list, "status", "conditions"); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(NodeClaims).UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestNodeClaimLifecycle(t *testing.T) {
	p := setup(t)
	ctx := context.Background()
	req := request("karp", 2)
	if err := p.Ensure(ctx, req); err != nil {
		t.Fatalf("the API server refused the NodeClaims: %v", err)
	}
	if err := p.Ensure(ctx, req); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	list, err := dyn.Resource(NodeClaims).List(ctx, metav1.ListOptions{LabelSelector: provision.LabelWorkspace + "=karp"})
	if err != nil || len(list.Items) != 2 {
		t.Fatalf("%d NodeClaims (%v), want 2", len(list.Items), err)
	}
	c := list.Items[0]
	reqs, _, _ := unstructured.NestedSlice(c.Object, "spec", "requirements")
	taints, _, _ := unstructured.NestedSlice(c.Object, "spec", "taints")
	if !strings.Contains(fmt.Sprint(reqs), "Standard_NC24ads_A100_v4") || !strings.Contains(fmt.Sprint(taints), "NoSchedule") || c.GetLabels()["app"] != "tuning-phi-3" {
		t.Errorf("NodeClaim %v", c.Object)
	}

	name0, name1 := ClaimName(req.Ref, 0), ClaimName(req.Ref, 1)
	setConditions(t, name0, map[string]any{"type": "Launched", "status": "True", "reason": "Launched", "message": ""})
	cap, err := p.Check(ctx, req)
	if err != nil || cap.Ready || !strings.Contains(cap.Waiting, name0+": Launched=True Registered=Unknown") {
		t.Fatalf("conditions not reported: %+v %v", cap, err)
	}
	kl := testenv.Kubelet{Client: kube}
	for i := range 2 {
		if err := kl.Node(ctx, fmt.Sprintf("karp-node-%d", i), req.Labels(), true, 1); err != nil {
			t.Fatal(err)
		}
	}
	if cap, err = p.Check(ctx, req); err != nil || !cap.Ready || len(cap.Nodes) != 2 {
		t.Fatalf("ready: %+v %v", cap, err)
	}

	setConditions(t, name1, map[string]any{"type": "Launched", "status": "False", "reason": "InsufficientCapacity", "message": "no capacity for Standard_NC24ads_A100_v4 in eastus"})
	if _, err := p.Check(ctx, req); err == nil || !strings.Contains(err.Error(), "InsufficientCapacity") {
		t.Fatalf("a NodeClaim that cannot launch must fail the request: %v", err)
	} else if _, ok := events.AsPermanent(err); !ok {
		t.Fatalf("not permanent: %v", err)
	}

	if err := p.Release(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(ctx, req); err != nil {
		t.Fatalf("release is idempotent: %v", err)
	}
	list, _ = dyn.Resource(NodeClaims).List(ctx, metav1.ListOptions{LabelSelector: provision.LabelWorkspace + "=karp"})
	for _, c := range list.Items {
		if c.GetDeletionTimestamp() == nil {
			t.Errorf("NodeClaim %s not deleted", c.GetName())
		}
	}
}

// At the end of a run the NodeClaims give way to a NodePool that launches serving nodes on demand
// and consolidates empty ones: accepted by Karpenter's own CRD, limited to the workspace's GPUs.
func TestServeHandsOverToANodePool(t *testing.T) {
	p := setup(t)
	ctx := context.Background()
	req := request("handover", 2)
	if err := p.Ensure(ctx, req); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := p.Serve(ctx, req); err != nil {
			t.Fatalf("the API server refused the NodePool: %v", err)
		}
	}
	pool, err := dyn.Resource(NodePools).Get(ctx, PoolName(req.Ref), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	labels, _, _ := unstructured.NestedStringMap(pool.Object, "spec", "template", "metadata", "labels")
	limit, _, _ := unstructured.NestedString(pool.Object, "spec", "limits", "nvidia.com/gpu")
	policy, _, _ := unstructured.NestedString(pool.Object, "spec", "disruption", "consolidationPolicy")
	taints, _, _ := unstructured.NestedSlice(pool.Object, "spec", "template", "spec", "taints")
	if labels["app"] != "tuning-phi-3" || labels[provision.LabelWorkspace] != "handover" || limit != "2" || policy != "WhenEmpty" || len(taints) != 1 {
		t.Errorf("NodePool %v", pool.Object["spec"])
	}
	list, _ := dyn.Resource(NodeClaims).List(ctx, metav1.ListOptions{LabelSelector: provision.LabelWorkspace + "=handover"})
	for _, c := range list.Items {
		if c.GetDeletionTimestamp() == nil {
			t.Errorf("tuning NodeClaim %s kept after the handover", c.GetName())
		}
	}
	if err := p.Release(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(NodePools).Get(ctx, PoolName(req.Ref), metav1.GetOptions{}); err == nil {
		if pool, _ := dyn.Resource(NodePools).Get(ctx, PoolName(req.Ref), metav1.GetOptions{}); pool.GetDeletionTimestamp() == nil {
			t.Error("NodePool not deleted on release")
		}
	}
}
