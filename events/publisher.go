package events

import (
	"context"

	cloudevents "github.com/cloudevents/sdk-go/v2"
)

// Publisher persists events. It returns nil only once every event is stored by the bus: the
// runtime acknowledges an input after its outputs are safe, never before. Every producer in
// kaitoflow — the runtime, the watches, the sim trainer, the ingress bridges, the controller —
// publishes through this one interface; the JetStream and HTTP implementations live in the
// runtime.
type Publisher interface {
	Publish(ctx context.Context, evs ...cloudevents.Event) error
}
