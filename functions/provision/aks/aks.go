// Package aks provides GPU capacity as one AKS agent pool per workspace, through ARM
// (armcontainerservice). Creating returns as soon as ARM has accepted the pool; readiness is read
// from the pool's provisioning state and then from the Kubernetes API, on node changes and ticks.
package aks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azruntime "github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerservice/armcontainerservice/v9"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
)

// AgentPools is what the provider uses of armcontainerservice.AgentPoolsClient.
type AgentPools interface {
	Get(ctx context.Context, resourceGroup, cluster, pool string,
		o *armcontainerservice.AgentPoolsClientGetOptions) (armcontainerservice.AgentPoolsClientGetResponse, error)
	BeginCreateOrUpdate(ctx context.Context, resourceGroup, cluster, pool string, p armcontainerservice.AgentPool,
		o *armcontainerservice.AgentPoolsClientBeginCreateOrUpdateOptions,
	) (*azruntime.Poller[armcontainerservice.AgentPoolsClientCreateOrUpdateResponse], error)
	BeginDelete(ctx context.Context, resourceGroup, cluster, pool string,
		o *armcontainerservice.AgentPoolsClientBeginDeleteOptions) (*azruntime.Poller[armcontainerservice.AgentPoolsClientDeleteResponse], error)
}

// Config says which cluster to grow and how.
type Config struct {
	SubscriptionID string
	ResourceGroup  string
	Cluster        string
	// Spot pools cost less and may be evicted; SpotMaxPrice -1 pays up to the on-demand price.
	Spot         bool
	SpotMaxPrice float64
	// Location is the cluster's region, whose vCPU quota the fit check reads before a pool is
	// created (Quota); empty checks none.
	Location string
}

// Provider creates agent pools.
type Provider struct {
	pools AgentPools
	cfg   Config
	nodes provision.Nodes
	log   *slog.Logger
}

// New returns a provider over an ARM client authenticated by cred (azidentity's workload or
// managed identity in a cluster). clientOptions may carry a test transport.
func New(cfg Config, cred azcore.TokenCredential, clientOptions *arm.ClientOptions, n provision.Nodes, log *slog.Logger) (*Provider, error) {
	if cfg.SubscriptionID == "" || cfg.ResourceGroup == "" || cfg.Cluster == "" {
		return nil, errors.New("aks: subscription, resource group and cluster are required")
	}
	c, err := armcontainerservice.NewAgentPoolsClient(cfg.SubscriptionID, cred, clientOptions)
	if err != nil {
		return nil, fmt.Errorf("aks: agent pools client: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Provider{pools: c, cfg: cfg, nodes: n, log: log}, nil
}

// Name implements provision.Provider.
func (p *Provider) Name() string { return "aks" }

// PoolName derives the workspace's agent pool name. AKS requires Linux pool names of lowercase
// letters and digits, starting with a letter, at most 12 characters: "kf" and 10 hex digits of a
// hash of namespace/name (2^40 names: collisions within one cluster are not a practical concern).
// It does not depend on the generation, so a redelivered or updated request finds its pool.
func PoolName(ref events.Ref) string {
	sum := sha256.Sum256([]byte(ref.Namespace + "/" + ref.Name))
	return "kf" + hex.EncodeToString(sum[:])[:10]
}

// Pool builds the agent pool for a request: a pure function of the request and configuration.
func (p *Provider) Pool(req provision.Request) armcontainerservice.AgentPool {
	count := int32(req.Workspace.NodeCount())
	nodeLabels := map[string]*string{}
	for k, v := range req.Labels() {
		nodeLabels[k] = to.Ptr(v)
	}
	props := &armcontainerservice.ManagedClusterAgentPoolProfileProperties{
		VMSize:       to.Ptr(req.Plan.InstanceType),
		Count:        to.Ptr(count),
		Mode:         to.Ptr(armcontainerservice.AgentPoolModeUser),
		OSType:       to.Ptr(armcontainerservice.OSTypeLinux),
		NodeLabels:   nodeLabels,
		NodeTaints:   []*string{to.Ptr(provision.GPUTaint)},
		OSDiskSizeGB: to.Ptr(int32(max(req.Plan.DiskGiB, 128))),
		Tags: map[string]*string{
			"kaitoflow.io-workspace":  to.Ptr(req.Ref.Namespace + "/" + req.Ref.Name),
			"kaitoflow.io-generation": to.Ptr(strconv.FormatInt(req.Ref.Generation, 10)),
			"kaitoflow.io-purpose":    to.Ptr(string(req.Purpose)),
		},
	}
	if req.Purpose == provision.Serving {
		// Serving pools follow the inference service to zero: the cluster autoscaler removes
		// idle nodes once Knative has scaled the pods away.
		props.EnableAutoScaling = to.Ptr(true)
		props.MinCount = to.Ptr(int32(0))
		props.MaxCount = to.Ptr(count)
	}
	if p.cfg.Spot {
		props.ScaleSetPriority = to.Ptr(armcontainerservice.ScaleSetPrioritySpot)
		props.ScaleSetEvictionPolicy = to.Ptr(armcontainerservice.ScaleSetEvictionPolicyDelete)
		props.SpotMaxPrice = to.Ptr(float32(p.cfg.SpotMaxPrice))
	}
	return armcontainerservice.AgentPool{Properties: props}
}

// Ensure implements provision.Provider: create the pool unless it exists. It returns once ARM has
// accepted the request; the pool's progress is read by Check.
func (p *Provider) Ensure(ctx context.Context, req provision.Request) error {
	name := PoolName(req.Ref)
	got, err := p.pools.Get(ctx, p.cfg.ResourceGroup, p.cfg.Cluster, name, nil)
	if err == nil {
		if state := ptr(got.Properties.ProvisioningState); state == "Deleting" {
			// A retry on a larger SKU released the pool: it is created again once it is gone.
			return fmt.Errorf("agent pool %s is being deleted; it is created again (%s) once it is gone", name, req.Plan.InstanceType)
		}
		if have := ptr(got.Properties.VMSize); have != "" && have != req.Plan.InstanceType {
			return events.Permanentf(events.ReasonInvalidWorkspace,
				"resource.instanceType: agent pool %s already exists with vmSize %s, the workspace now asks for %s; delete the workspace first",
				name, have, req.Plan.InstanceType)
		}
		if req.Attempt <= 1 {
			return nil
		}
		// A later attempt: putting the pool again makes AKS scale it back to its count, replacing
		// a VM evicted (spot) or deleted under the failed attempt.
		if _, err := p.pools.BeginCreateOrUpdate(ctx, p.cfg.ResourceGroup, p.cfg.Cluster, name, p.Pool(req), nil); err != nil {
			return classify(fmt.Errorf("restore agent pool %s for attempt %d: %w", name, req.Attempt, err))
		}
		p.log.InfoContext(ctx, "aks: agent pool put again for the next tuning attempt", "pool", name, "attempt", req.Attempt, "count",
			req.Workspace.NodeCount())
		return nil
	}
	if !notFound(err) {
		return classify(fmt.Errorf("get agent pool %s: %w", name, err))
	}
	if _, err := p.pools.BeginCreateOrUpdate(ctx, p.cfg.ResourceGroup, p.cfg.Cluster, name, p.Pool(req), nil); err != nil {
		return classify(fmt.Errorf("create agent pool %s (%s): %w", name, req.Plan.InstanceType, err))
	}
	p.log.InfoContext(ctx, "aks: agent pool creation accepted", "pool", name, "vm_size", req.Plan.InstanceType, "count", req.Workspace.NodeCount(),
		"purpose", req.Purpose)
	return nil
}

// Check implements provision.Provider.
func (p *Provider) Check(ctx context.Context, req provision.Request) (provision.Capacity, error) {
	name := PoolName(req.Ref)
	got, err := p.pools.Get(ctx, p.cfg.ResourceGroup, p.cfg.Cluster, name, nil)
	if notFound(err) {
		return provision.Capacity{Waiting: "agent pool " + name + " does not exist yet"}, nil
	}
	if err != nil {
		return provision.Capacity{}, classify(fmt.Errorf("get agent pool %s: %w", name, err))
	}
	switch state := ptr(got.Properties.ProvisioningState); state {
	case "Succeeded":
	case "Failed":
		msg := "no error detail from ARM"
		if st := got.Properties.Status; st != nil && st.ProvisioningError != nil {
			msg = ptr(st.ProvisioningError.Code) + ": " + ptr(st.ProvisioningError.Message)
		}
		return provision.Capacity{}, events.Permanentf("AgentPoolFailed", "agent pool %s failed: %s", name, msg)
	default:
		return provision.Capacity{Waiting: fmt.Sprintf("agent pool %s is %s", name, state)}, nil
	}
	sel := labels.SelectorFromSet(labels.Set{provision.LabelWorkspace: req.Ref.Name, provision.LabelNamespace: req.Ref.Namespace})
	c, _, err := p.nodes.Check(ctx, provision.NodeWant{
		Selector: sel, Count: req.Workspace.NodeCount(), GPUs: int64(max(req.Plan.GPUs, 1)), GPUMemoryGiB: req.Plan.GPUMemoryGiB,
	})
	return c, err
}

// Serve implements provision.Handover: the workspace's pool is updated in place to the serving
// pool — autoscaled from 0 to its node count — so the nodes that ran the tuning Job stay for the
// first inference pod, and the cluster autoscaler removes them once Knative has scaled the service
// to zero (and adds them back when a request wakes it). ARM finishes the update on its own.
func (p *Provider) Serve(ctx context.Context, req provision.Request) error {
	name := PoolName(req.Ref)
	req.Purpose = provision.Serving
	if _, err := p.pools.BeginCreateOrUpdate(ctx, p.cfg.ResourceGroup, p.cfg.Cluster, name, p.Pool(req), nil); err != nil {
		return classify(fmt.Errorf("update agent pool %s to serving: %w", name, err))
	}
	p.log.InfoContext(ctx, "aks: agent pool handed over to serving (autoscaled, min 0)", "pool", name, "max", req.Workspace.NodeCount())
	return nil
}

// Release implements provision.Provider: delete the pool; ARM finishes on its own.
func (p *Provider) Release(ctx context.Context, req provision.Request) error {
	name := PoolName(req.Ref)
	if _, err := p.pools.BeginDelete(ctx, p.cfg.ResourceGroup, p.cfg.Cluster, name, nil); err != nil {
		if notFound(err) {
			return nil
		}
		return classify(fmt.Errorf("delete agent pool %s: %w", name, err))
	}
	p.log.InfoContext(ctx, "aks: agent pool deletion accepted", "pool", name)
	return nil
}

func notFound(err error) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusNotFound
}

// classify turns ARM's refusals (quota exceeded, SKU not available in the region, no permission,
// bad request) into permanent failures carrying ARM's error code and message; throttling, server
// errors and network trouble stay retryable.
func classify(err error) error {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return err
	}
	switch {
	case re.StatusCode == http.StatusTooManyRequests, re.StatusCode >= 500:
		return err
	case re.StatusCode >= 400:
		return events.Permanent("ARM"+re.ErrorCode, err)
	}
	return err
}

func ptr[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
