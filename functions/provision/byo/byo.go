// Package byo is the bring-your-own-nodes provider: the GPU nodes already exist in the cluster;
// the workspace's resource.labelSelector (and preferredNodes) picks them. Nothing is created or
// deleted.
package byo

import (
	"context"
	"fmt"
	"log/slog"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/provision/nodes"
)

// Provider finds existing nodes.
type Provider struct {
	Nodes provision.Nodes
	Log   *slog.Logger
}

// Name implements provision.Provider.
func (p *Provider) Name() string { return "byo" }

// Ensure implements provision.Provider: there is nothing to create.
func (p *Provider) Ensure(context.Context, provision.Request) error { return nil }

// Check implements provision.Provider. Too few matching nodes in the cluster at all is a
// permanent error: kaitoflow will not create them, so waiting cannot help; matching nodes that are
// not Ready yet are waited for.
func (p *Provider) Check(ctx context.Context, req provision.Request) (provision.Capacity, error) {
	sel, err := metav1.LabelSelectorAsSelector(req.Workspace.Resource.LabelSelector)
	if err != nil {
		return provision.Capacity{}, events.Permanentf(events.ReasonInvalidWorkspace, "resource.labelSelector: %v", err)
	}
	want := provision.NodeWant{
		Selector: sel, Names: req.Workspace.Resource.PreferredNodes, Count: req.Workspace.NodeCount(),
		GPUs: int64(max(req.Plan.GPUs, 1)), GPUMemoryGiB: req.Plan.GPUMemoryGiB,
	}
	c, matching, err := p.Nodes.Check(ctx, want)
	if err != nil {
		return c, err
	}
	if matching < want.Count {
		return c, events.Permanentf("InsufficientNodes",
			"byo: %d node(s) match resource.labelSelector %s%s; the workspace needs %d with %d %s each (kaitoflow does not create nodes with --provider byo)",
			matching, sel, preferred(want.Names), want.Count, want.GPUs, nodes.GPUResource)
	}
	return c, nil
}

func preferred(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return fmt.Sprintf(" among preferredNodes %v", names)
}

// Release implements provision.Provider: the nodes are the user's; nothing is given back.
func (p *Provider) Release(ctx context.Context, req provision.Request) error {
	if p.Log != nil {
		p.Log.InfoContext(ctx, "byo: leaving the workspace's nodes to their owner", "purpose", req.Purpose)
	}
	return nil
}
