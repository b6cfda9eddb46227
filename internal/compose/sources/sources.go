// Package sources turns Knative Eventing's own sources into kaitoflow's signals, for the
// deployment on Knative where no in-process watch runs: ApiServerSource resource events (Nodes,
// Jobs, Pods, Knative Services labelled for a workspace) become kaitoflow.node.changed,
// kaitoflow.job.changed and kaitoflow.service.changed with the same ids the in-process watches
// give them; PingSource's pings become kaitoflow.tick.
package sources

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kaitoflow/kaitoflow/events"
)

// Knative's event types.
const (
	ResourceAdd    = "dev.knative.apiserver.resource.add"
	ResourceUpdate = "dev.knative.apiserver.resource.update"
	ResourceDelete = "dev.knative.apiserver.resource.delete"
	Ping           = "dev.knative.sources.ping"
)

// Name is the function's name.
const Name = "signals"

// Types are the events the function consumes.
var Types = []string{ResourceAdd, ResourceUpdate, ResourceDelete, Ping}

// Signals is the handler.
type Signals struct {
	// TickEvery is the PingSource's period, so its ticks get the ids a ticker would give them.
	TickEvery time.Duration
}

// Handle implements runtime.Handler.
func (s *Signals) Handle(_ context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	if ev.Type() == Ping {
		every := s.TickEvery
		if every <= 0 {
			every = time.Minute
		}
		return []cloudevents.Event{events.TickAt(ev.Time(), every)}, nil
	}
	var u unstructured.Unstructured
	if err := json.Unmarshal(ev.Data(), &u.Object); err != nil {
		return nil, events.Permanentf(events.ReasonBadEvent, "ApiServerSource data is not a Kubernetes object (the source must use mode Resource): %v", err)
	}
	var typ string
	switch gk := u.GroupVersionKind().GroupKind(); {
	case gk.Group == "" && gk.Kind == "Node":
		typ = events.NodeChanged
	case gk.Group == "batch" && gk.Kind == "Job", gk.Group == "" && gk.Kind == "Pod":
		typ = events.JobChanged
	case gk.Group == "serving.knative.dev" && gk.Kind == "Service":
		typ = events.ServiceChanged
	default:
		return nil, events.Permanentf(events.ReasonBadEvent, "ApiServerSource sent a %s: kaitoflow watches Nodes, Jobs, Pods and Knative Services",
			strings.TrimPrefix(gk.String(), "."))
	}
	out, ok := events.ObjectChanged(typ, &u)
	if !ok {
		return nil, nil // not one of a workspace's objects: the source's selector should have left it out
	}
	if ev.Type() == ResourceDelete {
		// A deleted object's last state would share its id with the update before it.
		out.SetID(out.ID() + "/deleted")
	}
	return []cloudevents.Event{out}, nil
}
