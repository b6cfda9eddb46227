package platform

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerservice/armcontainerservice/v9"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerservice/armcontainerservice/v9/fake"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// AKS node labels the platform adds to every node of a pool.
const (
	LabelAgentPool    = "kubernetes.azure.com/agentpool"
	LabelInstanceType = corev1.LabelInstanceTypeStable
)

// poolName is AKS's rule for Linux user pool names.
var poolName = regexp.MustCompile(`^[a-z][a-z0-9]{0,11}$`)

// AKS is a stand-in for AKS: its resource provider for agent pools, served to the ARM SDK through
// the SDK's own fake server transport, and its cluster autoscaler. Creating a pool creates its
// nodes in the box — kwok nodes with the pool's labels and taints, the GPUs of its VM size, and
// the labels AKS adds — and deleting it deletes them. A pool with autoscaling keeps the nodes it
// has, gets one more when a pod that only such a node could hold is unschedulable (up to
// maxCount), and loses a node that has run nothing for ScaleDownAfter. ARM's long-running
// operations finish at once.
type AKS struct {
	Box *testenv.Box
	// ScaleDownAfter is how long an autoscaled pool's node stays empty before the autoscaler
	// removes it (AKS's scale-down-unneeded-time is 10 minutes); zero keeps empty nodes.
	ScaleDownAfter time.Duration

	mu    sync.Mutex
	pools map[string]*armcontainerservice.AgentPool
	next  map[string]int       // the next VM index of each pool
	idle  map[string]time.Time // since when each autoscaled node has been empty
	ops   []string
}

// NewAKS returns an AKS stand-in acting on b.
func NewAKS(b *testenv.Box) *AKS {
	return &AKS{Box: b, pools: map[string]*armcontainerservice.AgentPool{}, next: map[string]int{}, idle: map[string]time.Time{}}
}

// ClientOptions route an ARM client's requests to the stand-in.
func (a *AKS) ClientOptions() *arm.ClientOptions {
	return &arm.ClientOptions{ClientOptions: policy.ClientOptions{Transport: fake.NewAgentPoolsServerTransport(a.server())}}
}

// Ops lists what ARM was asked to do, in order ("create kf…", "delete kf…").
func (a *AKS) Ops() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.ops...)
}

// Pool returns a copy of the pool as ARM holds it, and whether it exists.
func (a *AKS) Pool(name string) (armcontainerservice.AgentPool, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.pools[name]
	if !ok {
		return armcontainerservice.AgentPool{}, false
	}
	return *p, true
}

func (a *AKS) server() *fake.AgentPoolsServer {
	return &fake.AgentPoolsServer{
		BeginCreateOrUpdate: func(ctx context.Context, _, _, name string, p armcontainerservice.AgentPool,
			_ *armcontainerservice.AgentPoolsClientBeginCreateOrUpdateOptions) (resp azfake.PollerResponder[armcontainerservice.AgentPoolsClientCreateOrUpdateResponse], errResp azfake.ErrorResponder) {
			if !poolName.MatchString(name) {
				errResp.SetResponseError(http.StatusBadRequest, "InvalidParameter")
				return
			}
			if p.Properties == nil || p.Properties.VMSize == nil {
				errResp.SetResponseError(http.StatusBadRequest, "InvalidParameter")
				return
			}
			if _, err := gpusOf(*p.Properties.VMSize); err != nil {
				errResp.SetResponseError(http.StatusBadRequest, "VMSizeNotSupported")
				return
			}
			a.mu.Lock()
			defer a.mu.Unlock()
			verb := "create"
			if _, ok := a.pools[name]; ok {
				verb = "update"
			}
			a.ops = append(a.ops, verb+" "+name)
			p.Name = to.Ptr(name)
			p.Properties.ProvisioningState = to.Ptr("Succeeded")
			a.pools[name] = &p
			if err := a.syncLocked(ctx, name); err != nil {
				errResp.SetResponseError(http.StatusInternalServerError, "InternalOperationError")
				return
			}
			resp.SetTerminalResponse(http.StatusOK, armcontainerservice.AgentPoolsClientCreateOrUpdateResponse{AgentPool: p}, nil)
			return
		},
		Get: func(_ context.Context, _, _, name string,
			_ *armcontainerservice.AgentPoolsClientGetOptions) (resp azfake.Responder[armcontainerservice.AgentPoolsClientGetResponse], errResp azfake.ErrorResponder) {
			p, ok := a.Pool(name)
			if !ok {
				errResp.SetResponseError(http.StatusNotFound, "NotFound")
				return
			}
			resp.SetResponse(http.StatusOK, armcontainerservice.AgentPoolsClientGetResponse{AgentPool: p}, nil)
			return
		},
		BeginDelete: func(ctx context.Context, _, _, name string,
			_ *armcontainerservice.AgentPoolsClientBeginDeleteOptions) (resp azfake.PollerResponder[armcontainerservice.AgentPoolsClientDeleteResponse], errResp azfake.ErrorResponder) {
			a.mu.Lock()
			defer a.mu.Unlock()
			if _, ok := a.pools[name]; ok {
				a.ops = append(a.ops, "delete "+name)
				delete(a.pools, name)
			}
			if err := a.syncLocked(ctx, name); err != nil {
				errResp.SetResponseError(http.StatusInternalServerError, "InternalOperationError")
				return
			}
			resp.SetTerminalResponse(http.StatusNoContent, armcontainerservice.AgentPoolsClientDeleteResponse{}, nil)
			return
		},
	}
}

// nodesOf lists the pool's nodes, by AKS's agentpool label, in name order.
func (a *AKS) nodesOf(ctx context.Context, pool string) ([]corev1.Node, error) {
	l, err := a.Box.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: LabelAgentPool + "=" + pool})
	if err != nil {
		return nil, err
	}
	sort.Slice(l.Items, func(i, j int) bool { return l.Items[i].Name < l.Items[j].Name })
	return l.Items, nil
}

// syncLocked makes the pool's nodes what ARM holds: count nodes for a fixed pool, between
// minCount and maxCount for an autoscaled one (the autoscaler moves it inside), none for a
// deleted pool.
func (a *AKS) syncLocked(ctx context.Context, name string) error {
	have, err := a.nodesOf(ctx, name)
	if err != nil {
		return err
	}
	want := 0
	if p, ok := a.pools[name]; ok {
		pr := p.Properties
		want = int(ptr.Deref(pr.Count, 0))
		if ptr.Deref(pr.EnableAutoScaling, false) {
			want = min(max(len(have), int(ptr.Deref(pr.MinCount, 0))), int(ptr.Deref(pr.MaxCount, 0)))
		}
	}
	for len(have) > want {
		last := have[len(have)-1]
		if err := a.Box.Client.CoreV1().Nodes().Delete(ctx, last.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		have = have[:len(have)-1]
	}
	for i := len(have); i < want; i++ {
		if err := a.addLocked(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

// addLocked creates one VM of the pool: a node named as AKS names VMSS instances.
func (a *AKS) addLocked(ctx context.Context, name string) error {
	t, err := a.templateLocked(name)
	if err != nil {
		return err
	}
	i := a.next[name]
	a.next[name]++
	return a.Box.Node(ctx, testenv.NodeSpec{Name: fmt.Sprintf("aks-%s-12345678-vmss%06d", name, i), Labels: t.labels, Taints: t.taints, GPUs: t.gpus})
}

// Run is the cluster autoscaler of autoscaled pools, until ctx ends.
func (a *AKS) Run(ctx context.Context) {
	loop(ctx, a.autoscale)
}

func (a *AKS) autoscale(ctx context.Context) error {
	pending, err := unschedulable(ctx, a.Box.Client)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	names := make([]string, 0, len(a.pools))
	for n, p := range a.pools {
		if ptr.Deref(p.Properties.EnableAutoScaling, false) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		pr := a.pools[name].Properties
		have, err := a.nodesOf(ctx, name)
		if err != nil {
			return err
		}
		t, err := a.templateLocked(name)
		if err != nil {
			return err
		}
		// Scale up: one node per pending pod this pool could hold, up to maxCount.
		room := int(ptr.Deref(pr.MaxCount, 0)) - len(have)
		waiting := false
		for _, p := range pending {
			if !t.fits(&p) {
				continue
			}
			waiting = true
			if room > 0 {
				if err := a.addLocked(ctx, name); err != nil {
					return err
				}
				room--
			}
		}
		// Scale down: a node empty for ScaleDownAfter goes, down to minCount — never while a pod
		// that fits waits (it may be the one the new, still empty node is for).
		if a.ScaleDownAfter <= 0 || waiting {
			clear(a.idle)
			continue
		}
		count := len(have)
		for _, n := range have {
			if count <= int(ptr.Deref(pr.MinCount, 0)) {
				break
			}
			used, err := busy(ctx, a.Box.Client, n.Name)
			if err != nil {
				return err
			}
			if used {
				delete(a.idle, n.Name)
				continue
			}
			since, ok := a.idle[n.Name]
			if !ok {
				a.idle[n.Name] = time.Now()
				continue
			}
			if time.Since(since) >= a.ScaleDownAfter {
				if err := a.Box.Client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
					return err
				}
				delete(a.idle, n.Name)
				count--
			}
		}
	}
	return nil
}

// templateLocked is what a node of the pool looks like.
func (a *AKS) templateLocked(name string) (template, error) {
	pr := a.pools[name].Properties
	gpus, err := gpusOf(*pr.VMSize)
	if err != nil {
		return template{}, err
	}
	// The labels AKS itself puts on a GPU pool's nodes, then the pool's own.
	t := template{labels: map[string]string{LabelAgentPool: name, "agentpool": name, LabelInstanceType: *pr.VMSize,
		"kubernetes.azure.com/accelerator": "nvidia"}, gpus: gpus}
	for k, v := range pr.NodeLabels {
		t.labels[k] = ptr.Deref(v, "")
	}
	for _, s := range pr.NodeTaints {
		taint, err := parseTaint(ptr.Deref(s, ""))
		if err != nil {
			return template{}, err
		}
		t.taints = append(t.taints, taint)
	}
	return t, nil
}
