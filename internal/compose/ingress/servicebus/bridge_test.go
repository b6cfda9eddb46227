package servicebus

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

func TestQueueKeepsPeekLockSemantics(t *testing.T) {
	ctx := context.Background()
	q := newQueue(100*time.Millisecond, 3)
	q.send("m1", []byte("x"), "", nil)
	first, _ := q.ReceiveMessages(ctx, 1, nil)
	if len(first) != 1 || first[0].DeliveryCount != 1 {
		t.Fatalf("first delivery %+v", first)
	}
	time.Sleep(150 * time.Millisecond) // the lock lapses
	second, _ := q.ReceiveMessages(ctx, 1, nil)
	if len(second) != 1 || second[0].DeliveryCount != 2 {
		t.Fatalf("redelivery %+v", second)
	}
	if err := q.CompleteMessage(ctx, first[0], nil); !q.isLockLost(err) {
		t.Fatalf("complete with a lapsed lock: %v", err)
	}
	if err := q.RenewMessageLock(ctx, second[0], nil); err != nil {
		t.Fatal(err)
	}
	if err := q.AbandonMessage(ctx, second[0], nil); err != nil {
		t.Fatal(err)
	}
	third, _ := q.ReceiveMessages(ctx, 1, nil)
	if err := q.AbandonMessage(ctx, third[0], nil); err != nil || third[0].DeliveryCount != 3 {
		t.Fatal(err, third[0].DeliveryCount)
	}
	if !q.settled() || len(q.deadLetter) != 1 || q.deadLetter[0].reason != "MaxDeliveryCountExceeded" {
		t.Fatalf("after MaxDeliveryCount: %+v", q.deadLetter)
	}
}

// natsHarness is an embedded NATS server with JetStream on a fixed port and store, which the test
// stops and starts again.
type natsHarness struct {
	t     *testing.T
	port  int
	store string
	ns    *server.Server
}

// recorder is the JetStream publisher, noting when each workspace's event was acknowledged.
type recorder struct {
	events.Publisher
	slow  string // a workspace whose publish takes slowFor
	delay time.Duration
	mu    sync.Mutex
	acked map[string]time.Time
}

func (r *recorder) Publish(ctx context.Context, evs ...cloudevents.Event) error {
	if len(evs) == 1 && evs[0].Subject() == r.slow {
		time.Sleep(r.delay)
	}
	if err := r.Publisher.Publish(ctx, evs...); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range evs {
		if _, ok := r.acked[e.Subject()]; !ok {
			r.acked[e.Subject()] = time.Now()
		}
	}
	return nil
}

func manifest(t *testing.T, name string) string {
	t.Helper()
	doc, err := os.ReadFile("../../../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Replace(string(doc), "workspace-tuning-phi-3", name, 1)
}

// 1,000 messages in four shapes, one in ten invalid and one in twenty-five unparseable, with NATS
// stopped for two seconds in the middle: every valid message becomes exactly one
// workspace.requested, every bad one is dead-lettered naming the field, and no message is
// completed before its event was acknowledged.
func TestThousandMessagesThroughANATSOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 messages")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := &natsHarness{t: t, store: t.TempDir()}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: h.store, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	url := ns.ClientURL()
	h.ns, h.port = ns, ns.Addr().(*net.TCPAddr).Port
	defer func() { h.ns.Shutdown() }()

	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := (runtime.Storage{Replicas: 1}).EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	store, err := status.Open(ctx, js, runtime.Storage{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{Publisher: runtime.JetStreamPublisher{JS: js}, acked: map[string]time.Time{}}
	sub := &ingress.Submitter{Store: store, Publisher: rec, Source: "kaitoflow/servicebus"}

	q := newQueue(2*time.Second, 10)
	names := map[string]string{} // message id → workspace, for the valid ones
	bad := map[string]string{}   // message id → the field its dead-letter description must name
	for i := range 1000 {
		id := fmt.Sprintf("msg-%04d", i)
		name := fmt.Sprintf("ws-%04d", i)
		doc := manifest(t, name)
		switch {
		case i%25 == 0:
			q.send(id, []byte("apiVersion: kaito.sh/v1alpha1\nkind: Workspace\nmetadata: {name: "+name+"}\nresource: {instanceTypo: x}\n"), "", nil)
			bad[id] = "instanceTypo"
			continue
		case i%10 == 0:
			q.send(id, []byte(strings.Replace(doc, "method: qlora", "method: dora", 1)), "application/yaml", nil)
			bad[id] = "tuning.method"
			continue
		}
		names[id] = "default/" + name
		ws, err := kaito.DecodeWorkspace([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		js, _ := json.Marshal(ws)
		switch i % 4 {
		case 0: // YAML manifest
			q.send(id, []byte(doc), "", nil)
		case 1: // JSON manifest
			q.send(id, js, "application/json", nil)
		case 2: // structured CloudEvent
			ce := cloudevents.NewEvent()
			ce.SetID("ce-" + id)
			ce.SetSource("test/producer")
			ce.SetType(events.WorkspaceRequested)
			_ = ce.SetData(cloudevents.ApplicationJSON, ws)
			b, _ := json.Marshal(ce)
			q.send(id, b, "application/cloudevents+json", nil)
		case 3: // binary-mode CloudEvent (the AMQP binding's application properties)
			q.send(id, js, "application/json", map[string]any{
				"cloudEvents:specversion": "1.0", "cloudEvents:id": "ce-" + id, "cloudEvents:source": "test/producer", "cloudEvents:type": events.WorkspaceRequested,
			})
		}
	}

	b := &Bridge{Receivers: []Receiver{q, q, q, q}, Submitter: sub, Entity: "workspaces", Hold: time.Second, Log: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()

	// Stop NATS once about a third is through, for two seconds.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		q.mu.Lock()
		n := len(q.completed)
		q.mu.Unlock()
		if n >= 300 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d completed", n)
		}
	}
	h.ns.Shutdown()
	h.ns.WaitForShutdown()
	time.Sleep(2 * time.Second)
	ns2, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: h.port, JetStream: true, StoreDir: h.store, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns2.Start()
	if !ns2.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats did not come back")
	}
	h.ns = ns2

	for deadline := time.Now().Add(90 * time.Second); !q.settled(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the queue never drained")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Dead letters: exactly the bad messages, each naming its field.
	if len(q.deadLetter) != len(bad) {
		t.Errorf("%d dead-lettered, want %d", len(q.deadLetter), len(bad))
	}
	for _, e := range q.deadLetter {
		field, ok := bad[e.msg.MessageID]
		if !ok {
			t.Errorf("valid message %s dead-lettered: %s %s", e.msg.MessageID, e.reason, e.detail)
			continue
		}
		if (e.reason != ReasonInvalid && e.reason != ReasonUnparseable) || !strings.Contains(e.detail, field) {
			t.Errorf("%s: reason %q description %q, want the field %s", e.msg.MessageID, e.reason, e.detail, field)
		}
	}
	// Completed: every valid message, each after its event was acknowledged.
	q.mu.Lock()
	completed := q.completed
	q.mu.Unlock()
	maxDeliveries := uint32(0)
	for _, e := range q.msgs {
		maxDeliveries = max(maxDeliveries, e.msg.DeliveryCount)
	}
	for id, ws := range names {
		at, ok := completed[id]
		if !ok {
			t.Errorf("%s (%s) never completed", id, ws)
			continue
		}
		rec.mu.Lock()
		acked, ok := rec.acked[ws]
		rec.mu.Unlock()
		if !ok || at.Before(acked) {
			t.Errorf("%s completed at %v before its event was acked (%v, %v)", id, at, acked, ok)
		}
	}
	// The stream: exactly one workspace.requested per valid message.
	c, err := js.OrderedConsumer(context.Background(), runtime.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.WorkspaceRequested}})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for {
		batch, err := c.FetchNoWait(500)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			ev, err := events.DecodeNATS(m.Headers(), m.Data())
			if err != nil {
				t.Fatal(err)
			}
			seen[ev.Subject()]++
			n++
		}
		if n == 0 {
			break
		}
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	if len(seen) != len(names) || dups != 0 {
		t.Errorf("stream holds %d workspaces (%d duplicates), want %d and 0", len(seen), dups, len(names))
	}
	t.Logf("%d valid messages → %d workspace.requested, %d dead-lettered, at most %d deliveries of one message", len(names), len(seen), len(q.deadLetter), maxDeliveries)
}

// A publish slower than the lock: the bridge renews it, so the message is neither redelivered nor
// lost, and completes.
func TestLockRenewedWhilePublishIsSlow(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	nc, _ := nats.Connect(ns.ClientURL())
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := (runtime.Storage{Replicas: 1}).EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	store, _ := status.Open(ctx, js, runtime.Storage{Replicas: 1})
	rec := &recorder{Publisher: runtime.JetStreamPublisher{JS: js}, acked: map[string]time.Time{}, slow: "default/slow", delay: 600 * time.Millisecond}
	q := newQueue(150*time.Millisecond, 10)
	q.send("m-slow", []byte(manifest(t, "slow")), "", nil)
	b := &Bridge{Receivers: []Receiver{q, q}, Submitter: &ingress.Submitter{Store: store, Publisher: rec, Source: "kaitoflow/servicebus"}, Entity: "q", Log: slog.New(slog.DiscardHandler)}
	go func() { _ = b.Run(ctx) }()
	for deadline := time.Now().Add(10 * time.Second); !q.settled(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("never settled")
		}
	}
	if _, ok := q.completed["m-slow"]; !ok || q.msgs[0].msg.DeliveryCount != 1 {
		t.Errorf("completed %v after %d deliveries; want one delivery", ok, q.msgs[0].msg.DeliveryCount)
	}
}

// A sender to the queue runs GPUs only in the namespaces the bridge admits (--workspace-namespace):
// a workspace for another namespace is dead-lettered naming metadata.namespace, and one for an
// admitted namespace goes through. Before, any sender could submit to any namespace.
func TestBridgeAdmitsItsNamespacesOnly(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	js := testenv.JetStreamOn(t, testenv.NATSServer(t).ClientURL())
	if _, err := (runtime.Storage{Replicas: 1}).EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	store, _ := status.Open(ctx, js, runtime.Storage{Replicas: 1})
	q := newQueue(time.Second, 3)
	q.send("elsewhere", []byte(manifest(t, "elsewhere")), "", nil) // no namespace: default
	q.send("team-a", []byte(strings.Replace(manifest(t, "ours"), "name: ours", "name: ours\n  namespace: team-a", 1)), "", nil)
	sub := &ingress.Submitter{Store: store, Publisher: runtime.JetStreamPublisher{JS: js}, Source: "kaitoflow/servicebus", Namespaces: []string{"team-a"}}
	b := &Bridge{Receivers: []Receiver{q}, Submitter: sub, Entity: "q", Log: slog.New(slog.DiscardHandler)}
	go func() { _ = b.Run(ctx) }()
	for deadline := time.Now().Add(10 * time.Second); !q.settled(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("never settled")
		}
	}
	if len(q.deadLetter) != 1 || q.deadLetter[0].msg.MessageID != "elsewhere" || !strings.Contains(q.deadLetter[0].detail, "metadata.namespace") {
		t.Fatalf("dead letters %+v", q.deadLetter)
	}
	if _, ok := q.completed["team-a"]; !ok {
		t.Fatal("the admitted namespace's workspace was not completed")
	}
	if _, err := store.Get(ctx, "team-a", "ours"); err != nil {
		t.Fatalf("team-a/ours was not admitted: %v", err)
	}
}
