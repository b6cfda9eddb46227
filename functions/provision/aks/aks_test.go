package aks

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerservice/armcontainerservice/v9"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerservice/armcontainerservice/v9/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/provision/nodes"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

var (
	kube    kubernetes.Interface
	kubeErr error
	// reader is the narrow client provision reads Nodes with.
	reader *kubeclient.Client
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(cfg *rest.Config, err error) {
		if kubeErr = err; cfg != nil {
			kube = kubernetes.NewForConfigOrDie(cfg)
			if reader, err = kubeclient.New(cfg); err != nil {
				kubeErr, kube = err, nil
			}
		}
	}))
}

func needKube(t *testing.T) {
	t.Helper()
	if kube == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
}

// arm is an in-memory ARM: agent pools that take `polls` Gets to finish creating.
type armState struct {
	mu       sync.Mutex
	pools    map[string]*armcontainerservice.AgentPool
	polls    map[string]int
	creates  int
	deletes  int
	createFn func(name string) (code int, armCode string) // refuse a create
	failWith string                                       // the pool ends Failed with this ARM error
}

func newARM() *armState {
	return &armState{pools: map[string]*armcontainerservice.AgentPool{}, polls: map[string]int{}}
}

func (a *armState) server() *fake.AgentPoolsServer {
	return &fake.AgentPoolsServer{
		BeginCreateOrUpdate: func(_ context.Context, _, _, name string, p armcontainerservice.AgentPool, _ *armcontainerservice.AgentPoolsClientBeginCreateOrUpdateOptions) (resp azfake.PollerResponder[armcontainerservice.AgentPoolsClientCreateOrUpdateResponse], errResp azfake.ErrorResponder) {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.createFn != nil {
				if code, armCode := a.createFn(name); code != 0 {
					errResp.SetResponseError(code, armCode)
					return
				}
			}
			a.creates++
			p.Name = to.Ptr(name)
			p.Properties.ProvisioningState = to.Ptr("Creating")
			a.pools[name] = &p
			a.polls[name] = 3 // the redelivered Ensure and two Checks see it Creating
			resp.AddNonTerminalResponse(http.StatusCreated, nil)
			resp.SetTerminalResponse(http.StatusOK, armcontainerservice.AgentPoolsClientCreateOrUpdateResponse{AgentPool: p}, nil)
			return
		},
		Get: func(_ context.Context, _, _, name string, _ *armcontainerservice.AgentPoolsClientGetOptions) (resp azfake.Responder[armcontainerservice.AgentPoolsClientGetResponse], errResp azfake.ErrorResponder) {
			a.mu.Lock()
			defer a.mu.Unlock()
			p, ok := a.pools[name]
			if !ok {
				errResp.SetResponseError(http.StatusNotFound, "NotFound")
				return
			}
			// ARM's long-running operation progresses each time it is polled.
			if *p.Properties.ProvisioningState == "Creating" {
				if a.polls[name]--; a.polls[name] <= 0 {
					if a.failWith != "" {
						p.Properties.ProvisioningState = to.Ptr("Failed")
						p.Properties.Status = &armcontainerservice.AgentPoolStatus{ProvisioningError: &armcontainerservice.ErrorDetail{Code: to.Ptr(a.failWith), Message: to.Ptr("Allocation failed. We do not have sufficient capacity for the requested VM size in this region.")}}
					} else {
						p.Properties.ProvisioningState = to.Ptr("Succeeded")
					}
				}
			}
			resp.SetResponse(http.StatusOK, armcontainerservice.AgentPoolsClientGetResponse{AgentPool: *p}, nil)
			return
		},
		BeginDelete: func(_ context.Context, _, _, name string, _ *armcontainerservice.AgentPoolsClientBeginDeleteOptions) (resp azfake.PollerResponder[armcontainerservice.AgentPoolsClientDeleteResponse], errResp azfake.ErrorResponder) {
			a.mu.Lock()
			defer a.mu.Unlock()
			// ARM answers 204 No Content for a pool that is gone (or goes at once): deleting twice is fine.
			if _, ok := a.pools[name]; ok {
				a.deletes++
				delete(a.pools, name)
			}
			resp.SetTerminalResponse(http.StatusNoContent, armcontainerservice.AgentPoolsClientDeleteResponse{}, nil)
			return
		},
	}
}

func provider(t *testing.T, a *armState, spot bool) *Provider {
	t.Helper()
	p, err := New(Config{SubscriptionID: "00000000-0000-0000-0000-000000000000", ResourceGroup: "rg", Cluster: "aks", Spot: spot, SpotMaxPrice: -1},
		&azfake.TokenCredential{}, &arm.ClientOptions{ClientOptions: policy.ClientOptions{Transport: fake.NewAgentPoolsServerTransport(a.server())}},
		&nodes.Checker{Client: reader}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func request(name string, purpose provision.Purpose) provision.Request {
	ws := kaito.Workspace{}
	ws.Name = name
	ws.Resource.LabelSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "tuning-phi-3"}}
	return provision.Request{
		Ref: events.Ref{Namespace: "default", Name: name, Generation: 1}, Workspace: ws, Purpose: purpose,
		Plan: events.Plan{InstanceType: "Standard_NC6s_v3", GPUs: 1, GPUMemoryGiB: 16, DiskGiB: 128},
	}
}

func TestPoolName(t *testing.T) {
	seen := map[string]events.Ref{}
	for _, ref := range []events.Ref{
		{Namespace: "default", Name: "workspace-tuning-phi-3"}, {Namespace: "team-a", Name: "workspace-tuning-phi-3"},
		{Namespace: "default", Name: strings.Repeat("x", 63)}, {Namespace: "default", Name: "a"},
	} {
		n := PoolName(ref)
		if len(n) > 12 || n[0] < 'a' || n[0] > 'z' || strings.ToLower(n) != n || strings.ContainsFunc(n, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') }) {
			t.Errorf("%s: %q breaks AKS's pool name rules", ref, n)
		}
		if prev, dup := seen[n]; dup {
			t.Errorf("%s and %s share pool %s", prev, ref, n)
		}
		seen[n] = ref
		again := ref
		again.Generation = 7
		if PoolName(again) != n {
			t.Error("the pool name must not change with the generation")
		}
	}
}

func TestPoolSpec(t *testing.T) {
	p := &Provider{cfg: Config{Spot: true, SpotMaxPrice: -1}}
	tune := p.Pool(request("ws", provision.Tuning)).Properties
	if *tune.VMSize != "Standard_NC6s_v3" || *tune.Count != 1 || *tune.Mode != armcontainerservice.AgentPoolModeUser ||
		*tune.NodeTaints[0] != "sku=gpu:NoSchedule" || *tune.NodeLabels["kaitoflow.io/workspace"] != "ws" || *tune.NodeLabels["app"] != "tuning-phi-3" ||
		*tune.ScaleSetPriority != armcontainerservice.ScaleSetPrioritySpot || *tune.SpotMaxPrice != -1 || tune.EnableAutoScaling != nil || *tune.OSDiskSizeGB != 128 {
		t.Errorf("tuning pool %+v", tune)
	}
	serve := p.Pool(request("ws", provision.Serving)).Properties
	if !*serve.EnableAutoScaling || *serve.MinCount != 0 || *serve.MaxCount != 1 {
		t.Errorf("a serving pool must autoscale to zero: %+v", serve)
	}
}

func TestCreatePollReadyRelease(t *testing.T) {
	needKube(t)
	ctx := context.Background()
	a := newARM()
	p := provider(t, a, false)
	req := request("create-poll", provision.Tuning)
	if err := p.Ensure(ctx, req); err != nil {
		t.Fatal(err)
	}
	// A redelivered request creates nothing twice.
	if err := p.Ensure(ctx, req); err != nil || a.creates != 1 {
		t.Fatalf("second ensure: %v, %d creates", err, a.creates)
	}
	c, err := p.Check(ctx, req)
	if err != nil || c.Ready || !strings.Contains(c.Waiting, "Creating") {
		t.Fatalf("while creating: %+v %v", c, err)
	}
	c, err = p.Check(ctx, req) // the operation completes
	if err != nil || c.Ready || !strings.Contains(c.Waiting, "0 of 1 nodes") {
		t.Fatalf("pool succeeded, no node yet: %+v %v", c, err)
	}
	kl := testenv.Kubelet{Client: kube}
	node := "aks-" + PoolName(req.Ref) + "-vmss000000"
	if err := kl.Node(ctx, node, req.Labels(), true, 0); err != nil {
		t.Fatal(err)
	}
	if c, _ = p.Check(ctx, req); c.Ready || !strings.Contains(c.Waiting, "nvidia.com/gpu 0 of 1") {
		t.Fatalf("a node without its GPU counted: %+v", c)
	}
	if err := kl.Node(ctx, node, req.Labels(), true, 1); err != nil {
		t.Fatal(err)
	}
	c, err = p.Check(ctx, req)
	if err != nil || !c.Ready || c.Nodes[0].Name != node || c.Nodes[0].GPUs != 1 {
		t.Fatalf("ready: %+v %v", c, err)
	}
	if err := p.Release(ctx, req); err != nil || a.deletes != 1 {
		t.Fatalf("release: %v, %d deletes", err, a.deletes)
	}
	if err := p.Release(ctx, req); err != nil || a.deletes != 1 {
		t.Fatalf("release is idempotent: %v, %d deletes", err, a.deletes)
	}
}

func TestARMErrorsArePermanentWithTheirCode(t *testing.T) {
	ctx := context.Background()
	a := newARM()
	a.createFn = func(string) (int, string) { return http.StatusBadRequest, "QuotaExceeded" }
	err := provider(t, a, false).Ensure(ctx, request("quota", provision.Tuning))
	p, ok := events.AsPermanent(err)
	if !ok || p.Reason != "ARMQuotaExceeded" || !strings.Contains(err.Error(), "QuotaExceeded") {
		t.Fatalf("quota: %v", err)
	}
	a.createFn = func(string) (int, string) { return http.StatusTooManyRequests, "TooManyRequests" }
	if err := provider(t, a, false).Ensure(ctx, request("throttled", provision.Tuning)); err == nil {
		t.Fatal("no error")
	} else if _, ok := events.AsPermanent(err); ok {
		t.Fatalf("throttling must be retried: %v", err)
	}

	b := newARM()
	b.failWith = "AllocationFailed"
	pr := provider(t, b, false)
	req := request("alloc", provision.Tuning)
	if err := pr.Ensure(ctx, req); err != nil {
		t.Fatal(err)
	}
	var last error
	for range 3 {
		_, last = pr.Check(ctx, req)
	}
	if p, ok := events.AsPermanent(last); !ok || !strings.Contains(last.Error(), "AllocationFailed") || !strings.Contains(p.Err.Error(), "sufficient capacity") {
		t.Fatalf("a Failed pool must surface ARM's error: %v", last)
	}
	if errors.Is(last, context.Canceled) {
		t.Fatal("unexpected")
	}
}

func TestChangedSKUIsRefused(t *testing.T) {
	ctx := context.Background()
	a := newARM()
	p := provider(t, a, false)
	req := request("resized", provision.Tuning)
	if err := p.Ensure(ctx, req); err != nil {
		t.Fatal(err)
	}
	req.Plan.InstanceType = "Standard_NC24ads_A100_v4"
	if _, ok := events.AsPermanent(p.Ensure(ctx, req)); !ok {
		t.Fatal("an existing pool of another SKU must be refused")
	}
}

// At the end of a run the tuning pool is not deleted but becomes the serving pool: the same pool,
// now autoscaled from 0, so the inference pods get the warm nodes and no GPU is held at zero.
func TestServeKeepsThePoolAndScalesItToZero(t *testing.T) {
	ctx := context.Background()
	a := newARM()
	p := provider(t, a, false)
	req := request("handover", provision.Tuning)
	if err := p.Ensure(ctx, req); err != nil {
		t.Fatal(err)
	}
	if pool := a.pools[PoolName(req.Ref)]; pool.Properties.EnableAutoScaling != nil && *pool.Properties.EnableAutoScaling {
		t.Fatal("a tuning pool must not autoscale away under its Job")
	}
	for range 2 {
		if err := p.Serve(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	pool := a.pools[PoolName(req.Ref)]
	props := pool.Properties
	if a.deletes != 0 || props.EnableAutoScaling == nil || !*props.EnableAutoScaling || *props.MinCount != 0 || *props.MaxCount != 1 ||
		*props.VMSize != req.Plan.InstanceType || *props.Tags["kaitoflow.io-purpose"] != "serving" {
		t.Fatalf("serving pool: deletes %d, %+v", a.deletes, props)
	}
}
