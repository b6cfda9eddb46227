package sources

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// DeadLetterName is the dead-letter function's name.
const DeadLetterName = "deadletter"

// DeadLetterTypes are the events the dead-letter sink takes: anything the Broker gives up on.
var DeadLetterTypes = slices.Concat(events.Types, events.Signals)

// Extensions Knative adds to an event it dead-letters.
const (
	ExtErrorDest = "knativeerrordest"
	ExtErrorCode = "knativeerrorcode"
	ExtErrorData = "knativeerrordata"
)

// ReasonDeliveryFailed is the failure reason of a workspace whose event the Broker gave up on.
const ReasonDeliveryFailed = "DeliveryFailed"

// DeadLetters is the Broker's dead-letter sink: it records an undeliverable workspace event as
// the workspace's failure, with where delivery failed and why, so the status store — and the
// Workspace's status — say what happened instead of waiting forever. Undeliverable signals are
// logged: the next tick looks again.
type DeadLetters struct {
	Log *slog.Logger
}

// Handle implements runtime.Handler.
func (d *DeadLetters) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	ext := ev.Extensions()
	msg := fmt.Sprintf("the broker gave up delivering %s (id %s) to %v: HTTP %v %v", ev.Type(), ev.ID(), ext[ExtErrorDest], ext[ExtErrorCode],
		ext[ExtErrorData])
	log := d.Log
	if log == nil {
		log = slog.Default()
	}
	log.WarnContext(ctx, "dead letter", "type", ev.Type(), "subject", ev.Subject(), "detail", msg)
	if slices.Contains(events.Signals, ev.Type()) || ev.Type() == events.WorkspaceFailed {
		return nil, nil
	}
	ref, err := events.RefOf(ev)
	if err != nil {
		return nil, nil // names no workspace: the log line is the record
	}
	return runtime.Emit(events.New("kaitoflow/"+DeadLetterName, events.WorkspaceFailed, "failed/"+DeadLetterName, ref, events.WorkspaceFailedData{
		Ref: ref, Function: DeadLetterName, EventType: ev.Type(), EventID: ev.ID(), Reason: ReasonDeliveryFailed, Message: msg,
	}, &ev))
}
