package embedded

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// dlq returns the dead letters on subject with their reasons.
func dlq(t *testing.T, p *Pipeline, subject string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.JS.OrderedConsumer(ctx, runtime.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, m)
			n++
		}
		if n == 0 {
			return out
		}
	}
}

// Poison and limits: a malformed event, an event of an unknown type, a 10 MB event and a workspace
// with a 200-character name are each refused or dead-lettered with their reason, and the seed
// workspace submitted behind them still gets through.
func TestPoisonAndLimits(t *testing.T) {
	p := start(t)
	ctx := context.Background()
	nc, err := nats.Connect(p.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	raw := func(subject string, h nats.Header, data []byte) error {
		_, err := p.JS.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: h, Data: data})
		return err
	}
	ce := func(typ, id, subject string) nats.Header {
		return nats.Header{"ce-specversion": {"1.0"}, "ce-id": {id}, "ce-source": {"test"}, "ce-type": {typ}, "ce-subject": {subject},
			"ce-workspacegeneration": {"1"}, "content-type": {"application/json"}, "Nats-Msg-Id": {id}}
	}

	// A malformed event: the data is not JSON.
	if err := raw(events.WorkspaceRequested, ce(events.WorkspaceRequested, "poison-1", "default/malformed"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	// An event of a type no function takes: nothing consumes it, so it blocks nothing; over HTTP
	// (Knative) the runtime refuses it with 400.
	if err := raw("kaitoflow.bogus.thing", ce("kaitoflow.bogus.thing", "poison-2", "default/bogus"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	// A 10 MB event: NATS refuses it at publish (max_payload), the API with 413.
	big := bytes.Repeat([]byte("x"), 10<<20)
	if err := raw(events.WorkspaceRequested, ce(events.WorkspaceRequested, "poison-3", "default/big"), big); err == nil {
		t.Error("NATS stored a 10 MB event")
	}
	if code, body := submit(t, p, big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("API, 10 MB: %d %s", code, body)
	}
	// A 200-character name: the API refuses it naming the field; published raw, provision
	// dead-letters it and fails the workspace.
	doc, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("a", 200)
	if code, body := submit(t, p, bytes.Replace(doc, []byte("workspace-tuning-phi-3"), []byte(long), 1)); code != http.StatusUnprocessableEntity || !bytes.Contains(body, []byte("metadata.name")) {
		t.Errorf("API, 200-character name: %d %s", code, body)
	}
	ws, err := kaito.DecodeWorkspace(bytes.Replace(doc, []byte("workspace-tuning-phi-3"), []byte(long), 1))
	if err != nil {
		t.Fatal(err)
	}
	ev := events.Must(events.New("test", events.WorkspaceRequested, events.WorkspaceRequested, events.Ref{Namespace: "default", Name: long, Generation: 1}, ws, nil))
	if err := (runtime.JetStreamPublisher{JS: p.JS}).Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}

	// Behind all of it, the seed.
	if code, body := submit(t, p, doc); code != http.StatusAccepted {
		t.Fatalf("seed: %d %s", code, body)
	}
	if w := waitTerminal(t, p, "default", "workspace-tuning-phi-3", 30*time.Second); w.Phase != status.Ready {
		t.Fatalf("the seed behind the poison: %s %+v", w.Phase, w.Failure)
	}

	deadline := time.Now().Add(15 * time.Second)
	var letters []jetstream.Msg
	for ; time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if letters = dlq(t, p, events.DeadLetterPrefix+"workspace.requested"); len(letters) >= 2 {
			break
		}
	}
	reasons := map[string]string{}
	for _, m := range letters {
		reasons[m.Headers().Get("ce-id")+"/"+m.Headers().Get(runtime.HeaderDLQFunction)] = m.Headers().Get(runtime.HeaderDLQReason) + ": " + m.Headers().Get(runtime.HeaderDLQError)
	}
	if r := reasons["poison-1/provision"]; !strings.HasPrefix(r, events.ReasonBadEvent) || !strings.Contains(r, "decode") {
		t.Errorf("malformed event: dead letter %q (all: %v)", r, reasons)
	}
	if r := reasons[ev.ID()+"/provision"]; !strings.HasPrefix(r, events.ReasonInvalidWorkspace) || !strings.Contains(r, "metadata.name") {
		t.Errorf("200-character name: dead letter %q (all: %v)", r, reasons)
	}
	rec, err := p.Store.Get(ctx, "default", long)
	if err != nil || rec.Phase != status.Failed || rec.Failure.Reason != events.ReasonInvalidWorkspace {
		t.Errorf("200-character name: record %+v %v", rec, err)
	}
	if got := dlq(t, p, events.DeadLetterPrefix+"bogus.thing"); len(got) != 0 {
		t.Errorf("an unknown type was dead-lettered by a function that does not take it: %d", len(got))
	}
}
