package servicebus

import (
	"context"
	"errors"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
)

// ReasonServiceBusRefused: Service Bus refused the export (no Send right, no such topic).
const ReasonServiceBusRefused = "ServiceBusRefused"

// Sender is the part of *azservicebus.Sender the exporter uses.
type Sender interface {
	SendMessage(ctx context.Context, m *azservicebus.Message, options *azservicebus.SendMessageOptions) error
}

// Exporter sends the pipeline's status events to a Service Bus topic, for consumers outside the
// cluster. Run it as an observer function (runtime.Function{Observer: true}) over events.Types:
// the runtime redelivers what could not be sent, and an export that keeps failing never fails a
// workspace.
type Exporter struct {
	Sender Sender
}

// Handle sends ev in the CloudEvents AMQP binding's binary mode: attributes as cloudEvents:
// application properties (so subscriptions can filter on cloudEvents:type or the workspace), data as
// the body. The MessageId is the event id, so Service Bus's duplicate detection drops redeliveries;
// Subject (the label) is the event type.
func (x *Exporter) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	props := map[string]any{
		"cloudEvents:specversion": ev.SpecVersion(),
		"cloudEvents:id":          ev.ID(),
		"cloudEvents:source":      ev.Source(),
		"cloudEvents:type":        ev.Type(),
		"cloudEvents:subject":     ev.Subject(),
		"cloudEvents:time":        ev.Time().UTC().Format("2006-01-02T15:04:05.999999999Z07:00"),
	}
	for k, v := range ev.Extensions() {
		props["cloudEvents:"+k] = fmt.Sprint(v)
	}
	id, typ, ct := ev.ID(), ev.Type(), ev.DataContentType()
	m := &azservicebus.Message{Body: ev.Data(), MessageID: &id, Subject: &typ, ApplicationProperties: props}
	if ct != "" {
		m.ContentType = &ct
	}
	if err := x.Sender.SendMessage(ctx, m, nil); err != nil {
		var sbErr *azservicebus.Error
		if errors.As(err, &sbErr) && (sbErr.Code == azservicebus.CodeUnauthorizedAccess || sbErr.Code == azservicebus.CodeNotFound) {
			return nil, events.Permanent(ReasonServiceBusRefused, fmt.Errorf("send %s to Service Bus: %w", typ, err))
		}
		return nil, fmt.Errorf("send %s to Service Bus: %w", typ, err)
	}
	return nil, nil
}
