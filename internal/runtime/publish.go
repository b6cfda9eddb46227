package runtime

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/events"
)

// StreamName is the one JetStream stream that carries every kaitoflow subject.
const StreamName = "KAITOFLOW"

// DuplicateWindow is how long JetStream remembers Nats-Msg-Id values. It bounds how late a
// redelivered input may re-emit its outputs and still be deduplicated; handlers are idempotent
// beyond it, so it only has to cover redelivery backoff and restarts.
const DuplicateWindow = 30 * time.Minute

// JetStreamPublisher publishes events in binary mode with Nats-Msg-Id set to the event id, so a
// re-published event is stored once.
type JetStreamPublisher struct {
	JS jetstream.JetStream
}

// Publish implements events.Publisher.
func (p JetStreamPublisher) Publish(ctx context.Context, evs ...cloudevents.Event) error {
	for _, e := range evs {
		msg, err := NATSMsg(e)
		if err != nil {
			return err
		}
		if _, err := p.JS.PublishMsg(ctx, msg, jetstream.WithExpectStream(StreamName)); err != nil {
			return fmt.Errorf("publish %s %s: %w", e.Type(), e.ID(), err)
		}
	}
	return nil
}

// NATSMsg encodes e as a NATS message on the subject of its type.
func NATSMsg(e cloudevents.Event) (*nats.Msg, error) {
	if !strings.HasPrefix(e.Type(), events.SubjectPrefix) || !events.KnownType(e.Type()) {
		return nil, fmt.Errorf("event type %q is not part of the kaitoflow contract", e.Type())
	}
	h, body, err := events.EncodeNATS(e)
	if err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", e.Type(), e.ID(), err)
	}
	return &nats.Msg{Subject: e.Type(), Header: nats.Header(h), Data: body}, nil
}

// HTTPPublisher sends events to a sink over HTTP (Knative's K_SINK: a Broker ingress). The
// broker's 2xx means it has stored the event.
type HTTPPublisher struct {
	Client cloudevents.Client
	Sink   string
	// TokenFile, when set, is a ServiceAccount token for the sink's audience (a projected volume
	// the kubelet rotates), sent as a bearer token with every event: a Broker with an EventPolicy
	// takes events only from the callers it names. Read at every send, so a rotation is seen.
	TokenFile string
}

// maxTokenSize bounds what is read from TokenFile (a ServiceAccount JWT is a few KiB).
const maxTokenSize = 64 << 10

// NewHTTPPublisher returns a publisher for sink.
func NewHTTPPublisher(sink string) (*HTTPPublisher, error) {
	c, err := cloudevents.NewClientHTTP()
	if err != nil {
		return nil, fmt.Errorf("cloudevents HTTP client: %w", err)
	}
	return &HTTPPublisher{Client: c, Sink: sink}, nil
}

// Publish implements events.Publisher.
func (p *HTTPPublisher) Publish(ctx context.Context, evs ...cloudevents.Event) error {
	ctx = cloudevents.ContextWithTarget(ctx, p.Sink)
	if p.TokenFile != "" {
		tok, err := readToken(p.TokenFile)
		if err != nil {
			return err
		}
		ctx = cehttp.WithCustomHeader(ctx, http.Header{"Authorization": {"Bearer " + tok}})
	}
	for _, e := range evs {
		res := p.Client.Send(ctx, e)
		if !cloudevents.IsACK(res) {
			return fmt.Errorf("send %s %s to %s: %w", e.Type(), e.ID(), p.Sink, res)
		}
	}
	return nil
}

func readToken(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("sink token: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenSize+1))
	if err != nil {
		return "", fmt.Errorf("sink token %s: %w", file, err)
	}
	tok := strings.TrimSpace(string(b))
	if len(b) > maxTokenSize || tok == "" {
		return "", fmt.Errorf("sink token %s: empty or over %d bytes", file, maxTokenSize)
	}
	return tok, nil
}
