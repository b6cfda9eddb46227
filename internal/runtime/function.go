// Package runtime delivers events to functions. A function is a Handler; the runtime owns
// everything else: decoding, tracing, publishing the handler's output events and waiting for the
// bus to acknowledge them before it acknowledges the input, retrying with backoff, and turning
// permanent failures into kaitoflow.workspace.failed plus a dead letter. The same Handler runs
// behind a JetStream consumer (embedded mode, `kaitoflow fn --transport jetstream`) and behind
// an HTTP CloudEvents receiver (Knative).
package runtime

import (
	"context"
	"fmt"
	"slices"

	cloudevents "github.com/cloudevents/sdk-go/v2"
)

// Handler turns one input event into the events that follow it. It returns no events when the
// input is not its business (for example node.ready for a workspace without tuning). An error is
// retried unless it is an events.PermanentError.
type Handler interface {
	Handle(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error) {
	return f(ctx, e)
}

// Function is a handler with a name (its durable consumer, its metrics label, its event source)
// and the event types it consumes.
type Function struct {
	Name    string
	Types   []string
	Handler Handler
	// Observer marks a function that watches the pipeline rather than takes part in it (the
	// status projector, an exporter): its permanent failures are dead-lettered with their reason
	// but never fail the workspace.
	Observer bool
}

// Source is the CloudEvents source of the events a function emits.
func (f Function) Source() string { return "kaitoflow/" + f.Name }

// Accepts reports whether the function consumes events of type t.
func (f Function) Accepts(t string) bool { return slices.Contains(f.Types, t) }

func (f Function) validate() error {
	if f.Name == "" || len(f.Types) == 0 || f.Handler == nil {
		return fmt.Errorf("function %q needs a name, input types and a handler", f.Name)
	}
	return nil
}

// Emit is the closing of a handler that emits one event: the event events.New built, or the
// error it returned.
//
//	return runtime.Emit(events.New(source, typ, step, ref, data, &ev))
func Emit(e cloudevents.Event, err error) ([]cloudevents.Event, error) {
	if err != nil {
		return nil, err
	}
	return []cloudevents.Event{e}, nil
}
