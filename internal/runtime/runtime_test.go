package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// natsServer starts a real NATS server with JetStream on a temp dir and the kaitoflow stream.
func natsServer(t *testing.T) *server.Server {
	t.Helper()
	ns := testenv.NATSServer(t)
	js := connect(t, ns)
	if _, err := (Storage{Replicas: 1}).EnsureStream(context.Background(), js); err != nil {
		t.Fatal(err)
	}
	return ns
}

func connect(t *testing.T, ns *server.Server) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func requested(t *testing.T, name string) cloudevents.Event {
	t.Helper()
	ref := events.Ref{Namespace: "default", Name: name, Generation: 1}
	ws := kaito.Workspace{}
	ws.Name = name
	e, err := events.New("test", events.WorkspaceRequested, events.WorkspaceRequested, ref, ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// next emits node.ready for every input, as a provision step would.
func next(e cloudevents.Event) ([]cloudevents.Event, error) {
	ref, err := events.RefOf(e)
	if err != nil {
		return nil, err
	}
	out, err := events.New("test", events.NodeReady, events.NodeReady, ref, events.NodeReadyData{Nodes: []string{"n"}}, &e)
	return []cloudevents.Event{out}, err
}

// messages returns every stored message on subject.
func messages(t *testing.T, js jetstream.JetStream, subject string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for range info.NumPending {
		m, err := c.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func run(t *testing.T, js jetstream.JetStream, fn Function, d Deps, opts JetStreamOptions) context.CancelFunc {
	t.Helper()
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	r, err := NewJetStream(js, fn, d, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return cancel
}

// blockingPublisher stores the events for real, then never returns: the process "dies" between
// publishing the outputs and acking the input.
type blockingPublisher struct {
	inner   events.Publisher
	release chan struct{}
}

func (p *blockingPublisher) Publish(ctx context.Context, evs ...cloudevents.Event) error {
	if err := p.inner.Publish(ctx, evs...); err != nil {
		return err
	}
	<-p.release
	return errors.New("process died")
}

func TestCrashAfterPublishBeforeAckCausesNoDuplicate(t *testing.T) {
	ns := natsServer(t)
	jsA := connect(t, ns)
	var calls atomic.Int32
	fn := Function{Name: "provision", Types: []string{events.WorkspaceRequested}, Handler: HandlerFunc(func(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error) {
		calls.Add(1)
		return next(e)
	})}
	blocker := &blockingPublisher{inner: JetStreamPublisher{JS: jsA}, release: make(chan struct{})}
	defer close(blocker.release)
	opts := JetStreamOptions{AckWait: time.Second, Backoff: []time.Duration{10 * time.Millisecond}}
	stopA := run(t, jsA, fn, Deps{Publisher: blocker}, opts)

	in := requested(t, "crash")
	if err := (JetStreamPublisher{JS: jsA}).Publish(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the first output", func() bool { return len(messages(t, jsA, events.NodeReady)) == 1 })
	// Kill instance A: its connection goes, so neither an ack nor a heartbeat can reach the server.
	stopA()
	jsA.Conn().Close()

	jsB := connect(t, ns)
	run(t, jsB, fn, Deps{}, opts)
	testenv.Eventually(t, 15*time.Second, "the redelivery", func() bool { return calls.Load() >= 2 })
	testenv.Eventually(t, 15*time.Second, "the input to be acked", func() bool {
		info, err := jsB.Consumer(context.Background(), StreamName, "provision")
		if err != nil {
			return false
		}
		ci, err := info.Info(context.Background())
		return err == nil && ci.NumAckPending == 0 && ci.NumPending == 0
	})
	if got := len(messages(t, jsB, events.NodeReady)); got != 1 {
		t.Fatalf("%d node.ready events stored, want 1 (the redelivery must deduplicate)", got)
	}
}

func TestPermanentErrorDeadLettersAndFailsWorkspace(t *testing.T) {
	ns := natsServer(t)
	js := connect(t, ns)
	fn := Function{Name: "provision", Types: []string{events.WorkspaceRequested}, Handler: HandlerFunc(func(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error) {
		if strings.HasSuffix(e.Subject(), "/bad") {
			return nil, events.Permanentf(events.ReasonInvalidWorkspace, "resource.instanceType: Standard_XYZ is not a GPU SKU")
		}
		return next(e)
	})}
	run(t, js, fn, Deps{}, JetStreamOptions{AckWait: time.Second})
	pub := JetStreamPublisher{JS: js}
	for _, name := range []string{"good-1", "bad", "good-2"} {
		if err := pub.Publish(context.Background(), requested(t, name)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 15*time.Second, "both good workspaces", func() bool { return len(messages(t, js, events.NodeReady)) == 2 })
	testenv.Eventually(t, 15*time.Second, "the dead letter", func() bool { return len(messages(t, js, events.DeadLetterPrefix+"workspace.requested")) == 1 })
	dl := messages(t, js, events.DeadLetterPrefix+"workspace.requested")[0]
	if got := dl.Headers().Get(HeaderDLQReason); got != events.ReasonInvalidWorkspace {
		t.Errorf("dead letter reason %q", got)
	}
	if got := dl.Headers().Get(HeaderDLQError); !strings.Contains(got, "resource.instanceType") {
		t.Errorf("dead letter error %q", got)
	}
	if got := dl.Headers().Get("ce-subject"); got != "default/bad" {
		t.Errorf("dead letter lost the original headers: subject %q", got)
	}
	failed := messages(t, js, events.WorkspaceFailed)
	if len(failed) != 1 {
		t.Fatalf("%d workspace.failed events", len(failed))
	}
	ev, err := events.DecodeNATS(failed[0].Headers(), failed[0].Data())
	if err != nil {
		t.Fatal(err)
	}
	var d events.WorkspaceFailedData
	if err := events.Data(ev, &d); err != nil {
		t.Fatal(err)
	}
	if ev.Subject() != "default/bad" || d.Reason != events.ReasonInvalidWorkspace || !strings.Contains(d.Message, "instanceType") || d.Function != "provision" {
		t.Errorf("workspace.failed: subject %s data %+v", ev.Subject(), d)
	}
}

// An observer (an exporter, say) that cannot handle an event dead-letters it but never fails the
// workspace it watches.
func TestObserverFailureDeadLettersOnly(t *testing.T) {
	ns := natsServer(t)
	js := connect(t, ns)
	fn := Function{Name: "exporter", Types: []string{events.WorkspaceRequested}, Observer: true, Handler: HandlerFunc(func(context.Context, cloudevents.Event) ([]cloudevents.Event, error) {
		return nil, events.Permanentf("ExportRefused", "the export target refused the event")
	})}
	run(t, js, fn, Deps{}, JetStreamOptions{AckWait: time.Second})
	if err := (JetStreamPublisher{JS: js}).Publish(context.Background(), requested(t, "watched")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the dead letter", func() bool { return len(messages(t, js, events.DeadLetterPrefix+"workspace.requested")) == 1 })
	if failed := messages(t, js, events.WorkspaceFailed); len(failed) != 0 {
		t.Errorf("an observer failed the workspace: %d workspace.failed", len(failed))
	}
}

func TestRetryableErrorIsRetriedThenDeadLettered(t *testing.T) {
	ns := natsServer(t)
	js := connect(t, ns)
	var mu sync.Mutex
	var times []time.Time
	fn := Function{Name: "tune", Types: []string{events.WorkspaceRequested}, Handler: HandlerFunc(func(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error) {
		mu.Lock()
		times = append(times, time.Now())
		mu.Unlock()
		return nil, errors.New("registry answered 503")
	})}
	backoff := []time.Duration{50 * time.Millisecond, 200 * time.Millisecond}
	run(t, js, fn, Deps{}, JetStreamOptions{AckWait: 5 * time.Second, MaxDeliver: 3, Backoff: backoff})
	if err := (JetStreamPublisher{JS: js}).Publish(context.Background(), requested(t, "flaky")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the dead letter", func() bool { return len(messages(t, js, events.DeadLetterPrefix+"workspace.requested")) == 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(times) != 3 {
		t.Fatalf("handler ran %d times, want MaxDeliver=3", len(times))
	}
	// The server's redelivery timer starts when it gets the nak, after the handler's clock read;
	// a timer may still fire a hair early, so allow a millisecond of slack.
	for i, want := range backoff {
		if gap := times[i+1].Sub(times[i]); gap < want-time.Millisecond {
			t.Errorf("redelivery %d after %s, want at least the %s backoff", i+1, gap, want)
		}
	}
	dl := messages(t, js, events.DeadLetterPrefix+"workspace.requested")[0]
	if got := dl.Headers().Get(HeaderDLQReason); got != events.ReasonMaxDeliveries {
		t.Errorf("reason %q", got)
	}
	if got := dl.Headers().Get(HeaderDLQError); !strings.Contains(got, "registry answered 503") {
		t.Errorf("error %q", got)
	}
	if len(messages(t, js, events.WorkspaceFailed)) != 1 {
		t.Error("no workspace.failed")
	}
}

func TestUndecodableMessageIsDeadLetteredAndOthersFlow(t *testing.T) {
	ns := natsServer(t)
	js := connect(t, ns)
	fn := Function{Name: "provision", Types: []string{events.WorkspaceRequested}, Handler: HandlerFunc(func(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error) { return next(e) })}
	run(t, js, fn, Deps{}, JetStreamOptions{AckWait: time.Second})
	// Not a CloudEvent, but it names its workspace.
	bad := nats.NewMsg(events.WorkspaceRequested)
	bad.Header.Set("ce-subject", "default/garbled")
	bad.Data = []byte("{not json")
	if _, err := js.PublishMsg(context.Background(), bad); err != nil {
		t.Fatal(err)
	}
	if err := (JetStreamPublisher{JS: js}).Publish(context.Background(), requested(t, "fine")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the good event", func() bool { return len(messages(t, js, events.NodeReady)) == 1 })
	testenv.Eventually(t, 15*time.Second, "the dead letter", func() bool { return len(messages(t, js, events.DeadLetterPrefix+"workspace.requested")) == 1 })
	failed := messages(t, js, events.WorkspaceFailed)
	if len(failed) != 1 || failed[0].Headers().Get("ce-subject") != "default/garbled" {
		t.Fatalf("want one workspace.failed for default/garbled, got %d", len(failed))
	}
}

func TestPanickingHandlerIsRetriedNotFatal(t *testing.T) {
	ns := natsServer(t)
	js := connect(t, ns)
	var calls atomic.Int32
	fn := Function{Name: "serve", Types: []string{events.WorkspaceRequested}, Handler: HandlerFunc(func(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error) {
		if calls.Add(1) == 1 {
			panic("nil map")
		}
		return next(e)
	})}
	run(t, js, fn, Deps{}, JetStreamOptions{AckWait: time.Second, Backoff: []time.Duration{10 * time.Millisecond}})
	if err := (JetStreamPublisher{JS: js}).Publish(context.Background(), requested(t, "p")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the retry to succeed", func() bool { return len(messages(t, js, events.NodeReady)) == 1 })
}

func TestHTTPTransport(t *testing.T) {
	ns := natsServer(t)
	js := connect(t, ns)
	fn := Function{Name: "provision", Types: []string{events.WorkspaceRequested}, Handler: HandlerFunc(func(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error) {
		switch {
		case strings.HasSuffix(e.Subject(), "/perm"):
			return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.method: Unsupported value")
		case strings.HasSuffix(e.Subject(), "/flaky"):
			return nil, errors.New("ARM throttled")
		}
		return next(e)
	})}
	h, err := NewHTTP(fn, Deps{Publisher: JetStreamPublisher{JS: js}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	client, err := cloudevents.NewClientHTTP()
	if err != nil {
		t.Fatal(err)
	}
	send := func(e cloudevents.Event, structured bool) int {
		ctx := cloudevents.ContextWithTarget(context.Background(), srv.URL)
		if structured {
			ctx = cloudevents.WithEncodingStructured(ctx)
		} else {
			ctx = cloudevents.WithEncodingBinary(ctx)
		}
		res := client.Send(ctx, e)
		var hr *cehttpResult
		if errors.As(res, &hr) {
			return hr.StatusCode
		}
		t.Fatalf("send: %v", res)
		return 0
	}
	if got := send(requested(t, "ok-binary"), false); got != http.StatusAccepted {
		t.Errorf("binary: %d", got)
	}
	if got := send(requested(t, "ok-structured"), true); got != http.StatusAccepted {
		t.Errorf("structured: %d", got)
	}
	// 2xx means stored: both outputs are in the stream already.
	if got := len(messages(t, js, events.NodeReady)); got != 2 {
		t.Errorf("%d node.ready stored after two 2xx answers", got)
	}
	if got := send(requested(t, "flaky"), false); got != http.StatusServiceUnavailable {
		t.Errorf("retryable: %d, want 503", got)
	}
	if got := send(requested(t, "perm"), false); got != http.StatusUnprocessableEntity {
		t.Errorf("permanent: %d, want 422", got)
	}
	if got := len(messages(t, js, events.WorkspaceFailed)); got != 1 {
		t.Errorf("%d workspace.failed after a permanent error", got)
	}
	wrong := requested(t, "x")
	wrong.SetType(events.ImagePushed)
	if got := send(wrong, false); got != http.StatusBadRequest {
		t.Errorf("wrong type: %d, want 400", got)
	}
	resp, err := http.Post(srv.URL, "application/json", strings.NewReader(`{"hello":"world"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("not a CloudEvent: %d, want 400", resp.StatusCode)
	}
}

// On shutdown a handler in flight finishes and its outputs are stored and its input acked; the
// event is not handled a second time by the next instance.
func TestShutdownFinishesInFlightWork(t *testing.T) {
	ns := natsServer(t)
	js := connect(t, ns)
	entered := make(chan struct{})
	var calls atomic.Int32
	fn := Function{Name: "tune", Types: []string{events.WorkspaceRequested}, Handler: HandlerFunc(func(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error) {
		if calls.Add(1) == 1 {
			close(entered)
		}
		time.Sleep(300 * time.Millisecond)
		return next(e)
	})}
	r, err := NewJetStream(js, fn, Deps{Logger: slog.New(slog.DiscardHandler)}, JetStreamOptions{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	if err := (JetStreamPublisher{JS: js}).Publish(context.Background(), requested(t, "inflight")); err != nil {
		t.Fatal(err)
	}
	<-entered
	cancel() // SIGTERM while the handler runs
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if got := len(messages(t, js, events.NodeReady)); got != 1 {
		t.Fatalf("%d outputs after shutdown, want the in-flight one", got)
	}
	c, err := js.Consumer(context.Background(), StreamName, "tune")
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil || info.NumAckPending != 0 || info.NumPending != 0 {
		t.Fatalf("input not acked on shutdown: %+v %v", info, err)
	}
}

// Forty messages near the payload limit, each undecodable: their dead letters (the original plus
// the reason) cannot be stored whole, so each is stored as a reference and the original
// terminated. Before references, every one was nak'd forever, 32 of them filled MaxAckPending and
// a new workspace waited with no events.
func TestOversizedPoisonLeavesAndOthersFlow(t *testing.T) {
	ns := natsServer(t)
	js := connect(t, ns)
	fn := Function{Name: "provision", Types: []string{events.WorkspaceRequested}, Handler: HandlerFunc(func(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error) { return next(e) })}
	// Concurrency 8 gives MaxAckPending 32, as deployed.
	run(t, js, fn, Deps{}, JetStreamOptions{AckWait: time.Second, Backoff: []time.Duration{20 * time.Millisecond}})
	limit := int(js.Conn().MaxPayload())
	const poison = 40
	for i := range poison {
		bad := nats.NewMsg(events.WorkspaceRequested)
		bad.Header.Set("ce-subject", fmt.Sprintf("default/huge-%d", i))
		bad.Header.Set(nats.MsgIdHdr, fmt.Sprintf("huge-%d", i))
		bad.Data = bytes.Repeat([]byte("x"), limit-128)
		if _, err := js.PublishMsg(context.Background(), bad); err != nil {
			t.Fatalf("publish poison %d: %v", i, err)
		}
	}
	if err := (JetStreamPublisher{JS: js}).Publish(context.Background(), requested(t, "after-the-poison")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the workspace after the poison", func() bool { return len(messages(t, js, events.NodeReady)) == 1 })
	testenv.Eventually(t, 15*time.Second, "every dead letter", func() bool {
		return len(messages(t, js, events.DeadLetterPrefix+"workspace.requested")) == poison
	})
	dl := messages(t, js, events.DeadLetterPrefix+"workspace.requested")[0]
	if got := dl.Headers().Get(HeaderDLQTruncated); got != strconv.Itoa(limit-128) {
		t.Errorf("truncated header %q, want the original's size %d", got, limit-128)
	}
	if len(dl.Data()) != deadLetterSample || !strings.HasPrefix(dl.Headers().Get("ce-subject"), "default/huge-") || dl.Headers().Get(HeaderDLQReason) != events.ReasonBadEvent {
		t.Errorf("reference dead letter: %d bytes, subject %q, reason %q", len(dl.Data()), dl.Headers().Get("ce-subject"), dl.Headers().Get(HeaderDLQReason))
	}
	if n := len(messages(t, js, events.WorkspaceFailed)); n != poison {
		t.Errorf("%d workspace.failed events, want %d", n, poison)
	}
}

// A workspace refused for its own fault (a misspelt SKU) is counted as a refusal, not as a dead
// letter: an alert on kaitoflow_dead_letters_total fires on what kaitoflow could not handle (an
// event that does not decode), not on a user's typo. Both still reach the dead-letter subject.
func TestRefusalsAreCountedApartFromDeadLetters(t *testing.T) {
	ns := natsServer(t)
	js := connect(t, ns)
	fn := Function{Name: "provision", Types: []string{events.WorkspaceRequested}, Handler: HandlerFunc(func(ctx context.Context, e cloudevents.Event) ([]cloudevents.Event, error) {
		if strings.HasSuffix(e.Subject(), "/typo") {
			return nil, events.Permanentf(events.ReasonInvalidWorkspace, "resource.instanceType: Standard_NC6s_v9 is not a GPU SKU")
		}
		return nil, events.Permanentf(events.ReasonBadEvent, "garbled")
	})}
	reg := prometheus.NewRegistry()
	run(t, js, fn, Deps{Metrics: NewMetrics(reg)}, JetStreamOptions{AckWait: time.Second})
	pub := JetStreamPublisher{JS: js}
	for _, name := range []string{"typo", "garbled"} {
		if err := pub.Publish(context.Background(), requested(t, name)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 15*time.Second, "two dead letters", func() bool { return len(messages(t, js, events.DeadLetterPrefix+"workspace.requested")) == 2 })
	testenv.Eventually(t, 15*time.Second, "the counts", func() bool {
		return counted(t, reg, "kaitoflow_workspaces_refused_total") == 1 && counted(t, reg, "kaitoflow_dead_letters_total") == 1
	})
}

// counted sums the counter name over its labels.
func counted(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
