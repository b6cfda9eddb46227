// Package sim is the provisioning step's simulated provider: it buys nothing and names nodes that
// do not exist.
package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	"github.com/kaitoflow/kaitoflow/functions/provision"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// Provider is the simulated provider: it buys nothing and names nodes that do not exist. It exists so
// the pipeline runs with no cluster (`kaitoflow up`); every log line it writes says "sim".
type Provider struct {
	// Delay is how long "provisioning" takes, so a person can watch the pipeline.
	Delay time.Duration
	Log   *slog.Logger
}

// Name implements provision.Provider.
func (s *Provider) Name() string { return "sim" }

// Ensure implements provision.Provider.
func (s *Provider) Ensure(ctx context.Context, req provision.Request) error {
	t := time.NewTimer(s.Delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	logctx.Or(s.Log).InfoContext(ctx, "sim: simulated GPU nodes are ready; no capacity was bought", "generation", req.Ref.Generation, "instance_type",
		req.Plan.InstanceType)
	return nil
}

// Check implements provision.Provider: simulated nodes are ready as soon as they are ensured. Names derive
// from the workspace generation, so a retry sees the same nodes.
func (s *Provider) Check(_ context.Context, req provision.Request) (provision.Capacity, error) {
	sum := sha256.Sum256([]byte(req.Ref.String()))
	pool := "sim" + hex.EncodeToString(sum[:])[:6]
	nodes := make([]events.Node, req.Workspace.NodeCount())
	for i := range nodes {
		nodes[i] = events.Node{Name: fmt.Sprintf("aks-%s-%d", pool, i), GPUs: int64(max(req.Plan.GPUs, 1)), GPUMemoryGiB: req.Plan.GPUMemoryGiB, GPU: "sim"}
	}
	return provision.Capacity{Nodes: nodes, Ready: true}, nil
}

// Release implements provision.Provider.
func (s *Provider) Release(ctx context.Context, req provision.Request) error {
	logctx.Or(s.Log).InfoContext(ctx, "sim: released simulated GPU nodes", "purpose", req.Purpose)
	return nil
}
