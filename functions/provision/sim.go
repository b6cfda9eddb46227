package provision

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	"github.com/kaitoflow/kaitoflow/events"
)

// Sim is the simulated provider: it buys nothing and names nodes that do not exist. It exists so
// the pipeline runs with no cluster (`kaitoflow up`); every log line it writes says "sim".
type Sim struct {
	// Delay is how long "provisioning" takes, so a person can watch the pipeline.
	Delay time.Duration
	Log   *slog.Logger
}

// Name implements Provider.
func (s *Sim) Name() string { return "sim" }

// Ensure implements Provider. Node names derive from the workspace generation, so a retry
// returns the same nodes.
func (s *Sim) Ensure(ctx context.Context, ref events.Ref, ws *events.Workspace) ([]string, error) {
	if err := sleep(ctx, s.Delay); err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(ref.String()))
	pool := "sim" + hex.EncodeToString(sum[:])[:6]
	nodes := make([]string, ws.NodeCount())
	for i := range nodes {
		nodes[i] = fmt.Sprintf("aks-%s-%d", pool, i)
	}
	s.log().InfoContext(ctx, "sim: simulated GPU nodes are ready; no capacity was bought",
		"generation", ref.Generation, "instance_type", ws.InstanceType(), "nodes", nodes)
	return nodes, nil
}

// Release implements Provider.
func (s *Sim) Release(ctx context.Context, ref events.Ref) error {
	s.log().InfoContext(ctx, "sim: released simulated GPU nodes")
	return nil
}

func (s *Sim) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
