// Package provisionpart builds the provision function and its capacity drivers (sim, aks,
// karpenter, byo) with the Node watch the real ones need.
package provisionpart

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/provision/aks"
	"github.com/kaitoflow/kaitoflow/functions/provision/byo"
	"github.com/kaitoflow/kaitoflow/functions/provision/karpenter"
	"github.com/kaitoflow/kaitoflow/functions/provision/nodes"
	provisionsim "github.com/kaitoflow/kaitoflow/functions/provision/sim"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/dataset"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// Part builds provision: the fit check, the capacity records and the provider.
func Part() assembly.Part {
	p := assembly.StepPart(provision.Name, provision.Types, handler)
	p.JetStream = true
	return p
}

func handler(ctx context.Context, b *assembly.Builder) (runtime.Handler, error) {
	if b.Config.JetStream == nil {
		return nil, fmt.Errorf("provision keeps its capacity records in NATS JetStream: none configured")
	}
	planner, err := b.Planner(assembly.IdentityProvision)
	if err != nil {
		return nil, err
	}
	b.Out.Plan = planner.Plan
	pending, err := provision.OpenKVPending(ctx, b.Config.JetStream, b.Storage())
	if err != nil {
		return nil, err
	}
	prov, err := provider(b)
	if err != nil {
		return nil, err
	}
	preflight, warnOnly, err := preflightCheck(b.Config.Preflight, b.Config.Policy)
	if err != nil {
		return nil, err
	}
	return provision.New(prov, planner, pending, provision.Options{Policy: b.Config.Policy, Deadline: b.Config.CapacityDeadline, Log: b.Log,
		Preflight: preflight, PreflightWarnOnly: warnOnly}), nil
}

// provider is the capacity driver and, for the real ones, the Node watch that turns node changes
// into kaitoflow.node.changed.
func provider(b *assembly.Builder) (provision.Provider, error) {
	d := b.Config.Drivers
	if d.Provider == "" || d.Provider == "sim" {
		return &provisionsim.Provider{Delay: b.Config.Sim.Delay, Log: b.Log}, nil
	}
	if !slices.Contains([]string{"aks", "karpenter", "byo"}, d.Provider) {
		return nil, fmt.Errorf("provider %q: want sim, aks, karpenter or byo", d.Provider)
	}
	c, err := b.Kube(assembly.IdentityProvision)
	if err != nil {
		return nil, fmt.Errorf("provider %s: %w", d.Provider, err)
	}
	if err := nodeWatch(b); err != nil {
		return nil, err
	}
	checker := &nodes.Checker{Client: c}
	switch d.Provider {
	case "byo":
		return &byo.Provider{Nodes: checker, Log: b.Log}, nil
	case "karpenter":
		dyn, err := b.Dynamic(assembly.IdentityProvision)
		if err != nil {
			return nil, fmt.Errorf("provider karpenter: %w", err)
		}
		parts := strings.Split(d.NodeClass, "/")
		if len(parts) != 3 {
			return nil, fmt.Errorf("karpenter node class %q: want group/kind/name", d.NodeClass)
		}
		return &karpenter.Provider{Client: dyn, Nodes: checker, NodeClass: karpenter.NodeClassRef{Group: parts[0], Kind: parts[1], Name: parts[2]},
			Log: b.Log}, nil
	}
	cred, err := b.Credential()
	if err != nil {
		return nil, err
	}
	return aks.New(d.AKS, cred, b.Config.ARMClientOptions, checker, b.Log)
}

func nodeWatch(b *assembly.Builder) error {
	c, err := b.Kube(assembly.IdentitySources)
	if err != nil {
		return err
	}
	b.Watch("nodes", func(ctx context.Context, pub events.Publisher) error { return nodes.Watch(ctx, c, pub, b.Log) })
	return nil
}

// preflightCheck turns a preflight mode (enforce, warn, off or empty) into provision's check, and
// whether it only warns.
func preflightCheck(mode string, policy netguard.AddressPolicy) (provision.Preflight, bool, error) {
	if err := assembly.CheckPreflight(mode); err != nil {
		return nil, false, err
	}
	if mode == "" || mode == "off" {
		return nil, false, nil
	}
	c := dataset.New(policy)
	check := func(ctx context.Context, in *kaito.DataSource) error {
		if in.Image != "" {
			return c.CheckImage(ctx, in.Image, false)
		}
		_, err := c.Check(ctx, in.URLs)
		return err
	}
	return check, mode == "warn", nil
}
