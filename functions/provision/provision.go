// Package provision turns kaitoflow.workspace.requested into kaitoflow.node.ready: it validates
// the request completely before anything is bought, asks a Provider for GPU capacity, and gives
// the capacity back on kaitoflow.workspace.deleted.
package provision

import (
	"context"
	"fmt"
	"log/slog"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
)

// Name is the function's name: its consumer, its metrics label, its event source.
const Name = "provision"

// Types are the events the function consumes.
var Types = []string{events.WorkspaceRequested, events.WorkspaceDeleted}

// Provider supplies GPU nodes. Ensure is create-or-get: called again for the same workspace
// generation it returns the same nodes and creates nothing new.
type Provider interface {
	Name() string
	Ensure(ctx context.Context, ref events.Ref, ws *events.Workspace) (nodes []string, err error)
	Release(ctx context.Context, ref events.Ref) error
}

// Planner is the fit check: the plan for a workspace, or a permanent error (with the numbers)
// when it cannot work on the GPUs it asks for.
type Planner interface {
	Plan(ctx context.Context, ws *events.Workspace) (*events.Plan, error)
}

// Function is the provision handler.
type Function struct {
	provider Provider
	planner  Planner
	policy   events.AddressPolicy
	log      *slog.Logger
}

// New returns the provision function over provider. planner checks that the request fits before
// anything is bought; policy decides which dataset hosts are acceptable.
func New(p Provider, planner Planner, policy events.AddressPolicy, log *slog.Logger) *Function {
	if log == nil {
		log = slog.Default()
	}
	return &Function{provider: p, planner: planner, policy: policy, log: log.With("function", Name, "provider", p.Name())}
}

// Handle implements runtime.Handler.
func (f *Function) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	ref, err := events.RefOf(ev)
	if err != nil {
		return nil, events.Permanent(events.ReasonBadEvent, err)
	}
	switch ev.Type() {
	case events.WorkspaceDeleted:
		if err := f.provider.Release(ctx, ref); err != nil {
			return nil, fmt.Errorf("release capacity of %s: %w", ref, err)
		}
		return nil, nil
	case events.WorkspaceRequested:
	default:
		return nil, nil
	}

	var ws events.Workspace
	if err := events.Data(ev, &ws); err != nil {
		return nil, err
	}
	// Fail before spending GPUs: a request that cannot work is refused here, with every problem.
	if errs := ws.Validate(f.policy); len(errs) > 0 {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "%s", events.FieldErrors(errs))
	}
	if ws.Name != ref.Name || (ws.Namespace != "" && ws.Namespace != ref.Namespace) {
		return nil, events.Permanentf(events.ReasonBadEvent, "event subject %s does not match metadata %s/%s", ref.Subject(), ws.Namespace, ws.Name)
	}
	plan, err := f.planner.Plan(ctx, &ws)
	if err != nil {
		return nil, fmt.Errorf("fit check: %w", err)
	}
	// The provider buys what the plan chose (the cheapest SKU that fits, when none was named).
	sized := ws
	sized.Resource.InstanceType = plan.InstanceType
	nodes, err := f.provider.Ensure(ctx, ref, &sized)
	if err != nil {
		return nil, fmt.Errorf("ensure capacity for %s: %w", ref, err)
	}
	out, err := events.New("kaitoflow/"+Name, events.NodeReady, events.NodeReady, ref, events.NodeReadyData{
		Workspace: ws, Provider: f.provider.Name(), InstanceType: plan.InstanceType, Nodes: nodes, Plan: plan,
	}, &ev)
	if err != nil {
		return nil, err
	}
	return []cloudevents.Event{out}, nil
}
