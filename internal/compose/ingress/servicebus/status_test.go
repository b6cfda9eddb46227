package servicebus

import (
	"context"
	"errors"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
)

type sender struct {
	sent []*azservicebus.Message
	err  error
}

func (s *sender) SendMessage(_ context.Context, m *azservicebus.Message, _ *azservicebus.SendMessageOptions) error {
	if s.err != nil {
		return s.err
	}
	s.sent = append(s.sent, m)
	return nil
}

// Exported events are the CloudEvents AMQP binding's binary mode, which the bridge reads back: a
// workspace.requested sent out can be sent in again.
func TestExporterSpeaksTheBindingTheBridgeReads(t *testing.T) {
	s := &sender{}
	ws := kaito.Workspace{}
	ws.Name = "ws"
	ws.Resource.InstanceType = "Standard_NC6s_v3"
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 3}
	ev := events.Must(events.New("kaitoflow/api", events.WorkspaceRequested, events.WorkspaceRequested, ref, ws, nil))
	if _, err := (&Exporter{Sender: s}).Handle(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	m := s.sent[0]
	if *m.MessageID != ev.ID() || *m.Subject != events.WorkspaceRequested || m.ApplicationProperties["cloudEvents:workspacegeneration"] != "3" {
		t.Errorf("message %+v", m)
	}
	back, id, err := ingress.ParseMessage(m.Body, *m.ContentType, m.ApplicationProperties)
	if err != nil || back.Name != "ws" || id != ev.ID() {
		t.Fatalf("read back: %v %+v %s", err, back, id)
	}

	s.err = &azservicebus.Error{Code: azservicebus.CodeUnauthorizedAccess}
	if _, err := (&Exporter{Sender: s}).Handle(context.Background(), ev); err == nil {
		t.Fatal("no error")
	} else if _, ok := events.AsPermanent(err); !ok {
		t.Errorf("unauthorized should be permanent: %v", err)
	}
	s.err = errors.New("connection reset")
	if _, err := (&Exporter{Sender: s}).Handle(context.Background(), ev); err == nil {
		t.Fatal("no error")
	} else if _, ok := events.AsPermanent(err); ok {
		t.Errorf("a network error should be retried: %v", err)
	}
}
