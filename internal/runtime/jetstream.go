package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// Dead-letter headers: why an event was given up on, by whom, after how many deliveries.
const (
	HeaderDLQReason     = "Kaitoflow-Dlq-Reason"
	HeaderDLQError      = "Kaitoflow-Dlq-Error"
	HeaderDLQFunction   = "Kaitoflow-Dlq-Function"
	HeaderDLQDeliveries = "Kaitoflow-Dlq-Deliveries"
	HeaderDLQStreamSeq  = "Kaitoflow-Dlq-Stream-Seq"
	// HeaderDLQTruncated marks a reference dead letter: the original (of this many bytes) did not
	// fit, so the dead letter holds its first bytes and identity headers only.
	HeaderDLQTruncated = "Kaitoflow-Dlq-Truncated"
)

// JetStreamOptions tune delivery. Zero values take the defaults.
type JetStreamOptions struct {
	// AckWait is how long JetStream waits for an ack before redelivering. Handlers that run longer
	// are kept alive by InProgress heartbeats every AckWait/2, so AckWait only bounds how quickly a
	// crashed process's work is picked up again. Default 30s.
	AckWait time.Duration
	// MaxDeliver is how many times an event is tried before it is dead-lettered. The runtime, not
	// the server, enforces it: a server-side limit drops the message with only an advisory when the
	// last delivery crashes the process, and kaitoflow never drops silently. Default 5.
	MaxDeliver int
	// Backoff is the delay before redelivery after the n-th failure; the last entry repeats.
	// Default 1s, 5s, 15s, 30s, 60s.
	Backoff []time.Duration
	// Concurrency is how many events are handled at once. Default 8.
	Concurrency int
	// ShutdownGrace is how long in-flight handlers may run after shutdown begins. Default 20s.
	ShutdownGrace time.Duration
}

// DefaultBackoff is the redelivery delays after the n-th failure when none are given.
func DefaultBackoff() []time.Duration {
	return []time.Duration{time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second, time.Minute}
}

func (o JetStreamOptions) withDefaults() JetStreamOptions {
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if o.MaxDeliver <= 0 {
		o.MaxDeliver = 5
	}
	if len(o.Backoff) == 0 {
		o.Backoff = DefaultBackoff()
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.ShutdownGrace <= 0 {
		o.ShutdownGrace = 20 * time.Second
	}
	return o
}

func (o JetStreamOptions) backoff(deliveries uint64) time.Duration {
	i := int(deliveries) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(o.Backoff) {
		i = len(o.Backoff) - 1
	}
	return o.Backoff[i]
}

// JetStream runs a function as a durable pull consumer of the kaitoflow stream.
type JetStream struct {
	js   jetstream.JetStream
	core *core
	opts JetStreamOptions
}

// NewJetStream returns a JetStream transport for fn. Deps.Publisher defaults to publishing on js.
func NewJetStream(js jetstream.JetStream, fn Function, d Deps, opts JetStreamOptions) (*JetStream, error) {
	if d.Publisher == nil {
		d.Publisher = JetStreamPublisher{JS: js}
	}
	c, err := newCore(fn, d)
	if err != nil {
		return nil, err
	}
	return &JetStream{js: js, core: c, opts: opts.withDefaults()}, nil
}

// consumer makes the function's durable consumer; nil when ctx ended before it was made.
func (r *JetStream) consumer(ctx context.Context) (jetstream.Consumer, error) {
	fn := r.core.fn
	cons, err := r.js.CreateOrUpdateConsumer(ctx, StreamName, jetstream.ConsumerConfig{
		Durable:        fn.Name,
		Description:    "kaitoflow function " + fn.Name,
		FilterSubjects: fn.Types,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        r.opts.AckWait,
		MaxDeliver:     -1,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		// Room for every worker plus the prefetched batch, so acks are never what limits throughput.
		MaxAckPending: r.opts.Concurrency * 4,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil // shut down before it started
		}
		return nil, fmt.Errorf("consumer %s: %w", fn.Name, err)
	}
	return cons, nil
}

// Run consumes until ctx is cancelled, then stops fetching, lets in-flight handlers finish within
// ShutdownGrace, naks what was fetched but not started, and returns.
func (r *JetStream) Run(ctx context.Context) error {
	fn := r.core.fn
	cons, err := r.consumer(ctx)
	if err != nil || cons == nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(r.opts.Concurrency * 2))
	if err != nil {
		return fmt.Errorf("consume %s: %w", fn.Name, err)
	}
	r.core.log.Info("consuming", "stream", StreamName, "subjects", fn.Types, "concurrency", r.opts.Concurrency)

	// In-flight work outlives ctx by up to ShutdownGrace, so SIGTERM does not throw away a
	// half-done step that is about to publish.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			it.Drain()
			select {
			case <-time.After(r.opts.ShutdownGrace):
				cancelWork()
			case <-stopped:
			}
		case <-stopped:
		}
	}()

	work := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range r.opts.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for msg := range work {
				r.process(workCtx, msg)
			}
		}()
	}
	var runErr error
	for {
		msg, err := it.Next()
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				runErr = fmt.Errorf("consume %s: %w", fn.Name, err)
			}
			break
		}
		if ctx.Err() != nil {
			// Fetched after shutdown began: hand it back at once rather than after AckWait.
			_ = msg.Nak()
			continue
		}
		work <- msg
	}
	close(work)
	wg.Wait()
	close(stopped)
	r.core.log.Info("stopped")
	return runErr
}

func (r *JetStream) process(ctx context.Context, msg jetstream.Msg) {
	c := r.core
	var deliveries, seq uint64 = 1, 0
	if meta, err := msg.Metadata(); err == nil {
		deliveries, seq = meta.NumDelivered, meta.Sequence.Stream
	}
	ev, err := events.DecodeNATS(msg.Headers(), msg.Data())
	if err != nil {
		c.log.Warn("undecodable event", "subject", msg.Subject(), "stream_seq", seq, "err", err)
		r.fail(ctx, msg, nil, &events.PermanentError{Reason: events.ReasonBadEvent, Err: err}, deliveries, seq)
		return
	}
	log := c.log.With("workspace", ev.Subject(), "event_id", ev.ID(), "event_type", ev.Type(), "delivery", deliveries)
	if deliveries > 1 {
		c.metrics.redeliveries.WithLabelValues(c.fn.Name, ev.Type()).Inc()
	}
	if deliveries > uint64(r.opts.MaxDeliver) {
		// Earlier deliveries never came back (the process died while handling it): a poison event.
		r.fail(ctx, msg, &ev, &events.PermanentError{Reason: events.ReasonMaxDeliveries,
			Err: fmt.Errorf("delivered %d times without an outcome; the handler may be crashing", deliveries)}, deliveries, seq)
		return
	}

	ctx = logctx.With(ctx, slog.String("workspace", ev.Subject()), slog.String("event_id", ev.ID()))
	stop := r.heartbeat(ctx, msg)
	err = c.run(ctx, ev, log)
	stop()
	if err == nil {
		if err := msg.DoubleAck(ctx); err != nil {
			// The outputs are stored; a redelivery re-emits the same ids and is deduplicated.
			log.Warn("ack failed; the event will be redelivered and its outputs deduplicated", "err", err)
		}
		return
	}
	if perr, ok := classify(err, deliveries, r.opts.MaxDeliver); ok {
		log.Error("permanent failure", "reason", perr.Reason, "err", perr.Err)
		c.metrics.failed.WithLabelValues(c.fn.Name, ev.Type(), "permanent").Inc()
		r.fail(ctx, msg, &ev, perr, deliveries, seq)
		return
	}
	delay := r.opts.backoff(deliveries)
	log.Warn("retrying", "err", err, "after", delay)
	c.metrics.failed.WithLabelValues(c.fn.Name, ev.Type(), "retryable").Inc()
	if err := msg.NakWithDelay(delay); err != nil {
		log.Warn("nak failed; the event comes back after AckWait", "err", err)
	}
}

// heartbeat tells JetStream the handler is alive every AckWait/2 until stop is called.
func (r *JetStream) heartbeat(ctx context.Context, msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(r.opts.AckWait / 2)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

// fail records a permanent failure: workspace.failed (when the event names a workspace) and the
// original message on the dead-letter subject with the reason in its headers. Only when both are
// stored is the input terminated; otherwise it is retried, so a failure is never lost either.
func (r *JetStream) fail(ctx context.Context, msg jetstream.Msg, ev *cloudevents.Event, perr *events.PermanentError, deliveries, seq uint64) {
	c := r.core
	subject := ""
	if ev != nil {
		subject = ev.Subject()
	} else if h := msg.Headers(); h != nil {
		subject = h.Get("ce-subject")
	}
	log := c.log.With("workspace", subject, "stream_seq", seq)
	if failed, ok := c.failureEvent(ev, subject, perr, deliveries); ok {
		if err := c.pub.Publish(ctx, failed); err != nil {
			log.Error("publish workspace.failed; will retry", "err", err)
			_ = msg.NakWithDelay(r.opts.backoff(1))
			return
		}
	}
	dl := r.deadLetter(msg, perr, deliveries, seq)
	if _, err := r.js.PublishMsg(ctx, dl); err != nil {
		log.Error("publish dead letter; will retry", "err", err)
		_ = msg.NakWithDelay(r.opts.backoff(1))
		return
	}
	// A user's mistake is not an alert: counted apart from what kaitoflow could not handle.
	if events.WorkspaceFault(perr.Reason) {
		c.metrics.refused.WithLabelValues(c.fn.Name, perr.Reason).Inc()
	} else {
		c.metrics.deadLetters.WithLabelValues(c.fn.Name, msg.Subject()).Inc()
	}
	log.Error("dead-lettered", "reason", perr.Reason, "err", perr.Err, "dead_letter_subject", dl.Subject)
	if err := msg.Term(); err != nil {
		log.Warn("term failed; a redelivery will dead-letter it again (deduplicated)", "err", err)
	}
}

// deadLetter is the original message on the dead-letter subject with the reason in its headers.
// A dead letter that would not fit in one NATS message (the original near the server's payload
// limit, plus the reason) is stored as a reference instead: the original's stream sequence, its
// CloudEvents identity headers and the first bytes of its data, marked HeaderDLQTruncated with
// the original's size. Otherwise the publish fails on every try, the input is nak'd forever and
// such messages, once as many as MaxAckPending, wedge the consumer for every workspace.
func (r *JetStream) deadLetter(msg jetstream.Msg, perr *events.PermanentError, deliveries, seq uint64) *nats.Msg {
	c := r.core
	dl := nats.NewMsg(events.DeadLetterPrefix + strings.TrimPrefix(msg.Subject(), events.SubjectPrefix))
	dl.Header.Set(HeaderDLQReason, perr.Reason)
	dl.Header.Set(HeaderDLQError, truncate(perr.Err.Error(), 4096))
	dl.Header.Set(HeaderDLQFunction, c.fn.Name)
	dl.Header.Set(HeaderDLQDeliveries, strconv.FormatUint(deliveries, 10))
	dl.Header.Set(HeaderDLQStreamSeq, strconv.FormatUint(seq, 10))
	// One dead letter per function and original message, however often this runs.
	dl.Header.Set(nats.MsgIdHdr, "dlq/"+c.fn.Name+"/"+strconv.FormatUint(seq, 10))
	size := len(msg.Data()) + headerBytes(msg.Headers()) + headerBytes(dl.Header)
	// What one message may hold: the connection's payload limit and the stream's message size.
	limit := min(r.js.Conn().MaxPayload(), int64(events.MaxEventSize))
	if int64(size) <= limit {
		dl.Data = msg.Data()
		for k, v := range msg.Headers() {
			if dl.Header.Get(k) == "" {
				dl.Header[k] = v
			}
		}
		return dl
	}
	dl.Header.Set(HeaderDLQTruncated, strconv.Itoa(len(msg.Data())))
	for _, k := range []string{"ce-id", "ce-type", "ce-source", "ce-subject", "ce-workspacegeneration"} {
		if v := msg.Headers().Get(k); v != "" {
			dl.Header.Set(k, truncate(v, 512))
		}
	}
	dl.Data = msg.Data()[:min(len(msg.Data()), deadLetterSample)]
	return dl
}

// deadLetterSample is how much of an oversized original a reference dead letter keeps: enough to
// recognise it; the original stays in the stream at its sequence until the stream's limits age it.
const deadLetterSample = 4 << 10

func headerBytes(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
