package runtime

import (
	"context"
	"fmt"
	"slices"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
)

// Route handles one type of event for the workspace its subject names.
type Route func(ctx context.Context, ref events.Ref, ev cloudevents.Event) ([]cloudevents.Event, error)

// Routes is a function's handlers by event type. A route declares the payload it takes (On) and
// gets it decoded, so no handler decodes by hand or switches on the type, and a function's input
// types are its routes' (Types).
type Routes struct {
	tick   func(context.Context, cloudevents.Event) ([]cloudevents.Event, error)
	routes map[string]Route
}

// On routes events of type typ to h, with their payload decoded as T; a payload that does not
// decode is a permanent BadEvent, dead-lettered with the reason.
func On[T any](r *Routes, typ string, h func(ctx context.Context, ref events.Ref, ev cloudevents.Event, data T) ([]cloudevents.Event, error)) {
	r.Add(typ, func(ctx context.Context, ref events.Ref, ev cloudevents.Event) ([]cloudevents.Event, error) {
		var d T
		if err := events.Data(ev, &d); err != nil {
			return nil, err
		}
		return h(ctx, ref, ev, d)
	})
}

// Add routes events of type typ, whose payload h reads itself or not at all, to h. A type routed
// twice is a programming error.
func (r *Routes) Add(typ string, h Route) {
	if r.routes == nil {
		r.routes = map[string]Route{}
	}
	if _, dup := r.routes[typ]; dup || typ == events.Tick {
		panic(fmt.Sprintf("runtime.Routes: %s routed twice", typ))
	}
	r.routes[typ] = h
}

// OnTick routes kaitoflow.tick, the periodic re-check, which names no workspace.
func (r *Routes) OnTick(h func(context.Context, cloudevents.Event) ([]cloudevents.Event, error)) {
	r.tick = h
}

// Types are the event types routed, kaitoflow.tick included when it is, sorted.
func (r *Routes) Types() []string {
	var out []string
	for t := range r.routes {
		out = append(out, t)
	}
	if r.tick != nil {
		out = append(out, events.Tick)
	}
	slices.Sort(out)
	return out
}

// Handle implements Handler: the tick to its route, every other event to its type's route with
// the workspace its subject names. An event that names no workspace cannot be handled by any
// retry: a permanent BadEvent. A type without a route is not the function's business.
func (r *Routes) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	if ev.Type() == events.Tick {
		if r.tick == nil {
			return nil, nil
		}
		return r.tick(ctx, ev)
	}
	h, ok := r.routes[ev.Type()]
	if !ok {
		return nil, nil
	}
	ref, err := events.RefOf(ev)
	if err != nil {
		return nil, events.Permanent(events.ReasonBadEvent, err)
	}
	return h(ctx, ref, ev)
}
