package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/kaitoflow/kaitoflow/events"
)

// Deps are what both transports need besides the function.
type Deps struct {
	Publisher events.Publisher
	Logger    *slog.Logger
	Metrics   *Metrics
	// Tracer provides the spans that make one workspace one trace; nil means no tracing, and
	// trace context is still carried through unchanged.
	Tracer trace.TracerProvider
}

// core is the transport-independent part of delivery: run the handler, publish its outputs,
// and build the failure events. Both JetStream and HTTP use it, so there is one place that turns
// an error into workspace.failed.
type core struct {
	fn      Function
	pub     events.Publisher
	log     *slog.Logger
	metrics *Metrics
	tracer  trace.Tracer
	prop    propagation.TextMapPropagator
}

func newCore(fn Function, d Deps) (*core, error) {
	if err := fn.validate(); err != nil {
		return nil, err
	}
	if d.Publisher == nil {
		return nil, fmt.Errorf("function %s: no publisher", fn.Name)
	}
	c := &core{fn: fn, pub: d.Publisher, log: d.Logger, metrics: d.Metrics, prop: propagation.TraceContext{}}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("function", fn.Name)
	if c.metrics == nil {
		c.metrics = NewMetrics(nil)
	}
	tp := d.Tracer
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	c.tracer = tp.Tracer("github.com/kaitoflow/kaitoflow/internal/runtime")
	return c, nil
}

// run handles ev and publishes what the handler returns. It returns nil only when the outputs are
// stored. A handler panic is an ordinary retryable error: the process keeps serving other events
// and MaxDeliver eventually dead-letters a poison event.
func (c *core) run(ctx context.Context, ev cloudevents.Event, log *slog.Logger) (err error) {
	ctx = c.prop.Extract(ctx, eventCarrier{&ev})
	ctx, span := c.tracer.Start(ctx, c.fn.Name+" "+ev.Type(), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("cloudevents.event_id", ev.ID()), attribute.String("cloudevents.event_subject", ev.Subject())))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()

	start := time.Now()
	c.metrics.inFlight.WithLabelValues(c.fn.Name).Inc()
	defer c.metrics.inFlight.WithLabelValues(c.fn.Name).Dec()

	out, err := c.call(ctx, ev)
	if err != nil {
		return err
	}
	for i := range out {
		// Outputs continue the trace as children of this step's span.
		c.prop.Inject(ctx, eventCarrier{&out[i]})
	}
	if err := c.pub.Publish(ctx, out...); err != nil {
		return fmt.Errorf("publish outputs of %s: %w", ev.ID(), err)
	}
	c.metrics.duration.WithLabelValues(c.fn.Name, ev.Type()).Observe(time.Since(start).Seconds())
	c.metrics.handled.WithLabelValues(c.fn.Name, ev.Type()).Inc()
	for _, o := range out {
		log.Info("emitted", "type", o.Type(), "id", o.ID())
	}
	return nil
}

func (c *core) call(ctx context.Context, ev cloudevents.Event) (out []cloudevents.Event, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panic: %v\n%s", r, debug.Stack())
		}
	}()
	return c.fn.Handler.Handle(ctx, ev)
}

// failureEvent builds the workspace.failed event for a permanent failure. The subject comes from
// the event, or for an event that did not decode, from its raw subject header. ok is false when
// no workspace can be named, or the function is an observer: then only the dead letter records
// the failure.
func (c *core) failureEvent(ev *cloudevents.Event, subject string, perr *events.PermanentError, deliveries uint64) (cloudevents.Event, bool) {
	if c.fn.Observer {
		return cloudevents.Event{}, false
	}
	probe := cloudevents.NewEvent()
	probe.SetSubject(subject)
	var typ, id string
	if ev != nil {
		probe = *ev
		typ, id = ev.Type(), ev.ID()
	}
	ref, err := events.RefOf(probe)
	if err != nil {
		return cloudevents.Event{}, false
	}
	data := events.WorkspaceFailedData{
		Ref: ref, Function: c.fn.Name, EventType: typ, EventID: id,
		Reason: perr.Reason, Message: perr.Err.Error(), Deliveries: deliveries,
	}
	// One failure per workspace generation: the first one to be stored wins, later ones are
	// deduplicated. The id still depends on the function so two steps can each record theirs.
	out, err := events.New(c.fn.Source(), events.WorkspaceFailed, "failed/"+c.fn.Name, ref, data, ev)
	if err != nil {
		return cloudevents.Event{}, false
	}
	return out, true
}

// classify returns the permanent error inside err, promoting a retryable error that has used up
// its deliveries.
func classify(err error, deliveries uint64, maxDeliver int) (*events.PermanentError, bool) {
	if p, ok := events.AsPermanent(err); ok {
		return p, true
	}
	if maxDeliver > 0 && deliveries >= uint64(maxDeliver) {
		return &events.PermanentError{Reason: events.ReasonMaxDeliveries, Err: fmt.Errorf("after %d deliveries: %w", deliveries, err)}, true
	}
	return nil, false
}

// eventCarrier lets the W3C trace-context propagator read and write an event's distributed
// tracing extension (traceparent, tracestate).
type eventCarrier struct{ e *cloudevents.Event }

func (c eventCarrier) Get(key string) string {
	v, ok := c.e.Extensions()[key]
	if !ok {
		return ""
	}
	s, _ := v.(string)
	return s
}

func (c eventCarrier) Set(key, value string) { c.e.SetExtension(key, value) }

func (c eventCarrier) Keys() []string { return []string{events.ExtTraceParent, events.ExtTraceState} }

// InjectTrace writes the trace context of ctx into e's distributed-tracing extension. Producers
// outside the runtime (the API, bridges) use it to start a workspace's trace.
func InjectTrace(ctx context.Context, e *cloudevents.Event) {
	propagation.TraceContext{}.Inject(ctx, eventCarrier{e})
}
