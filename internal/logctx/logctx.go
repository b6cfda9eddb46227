// Package logctx carries log attributes in a context, so that a driver deep inside a handler logs
// the workspace and event id of the event it works for without being handed a special logger.
package logctx

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/trace"
)

type key struct{}

// With returns ctx carrying attrs in addition to those it already carries.
func With(ctx context.Context, attrs ...slog.Attr) context.Context {
	prev, _ := ctx.Value(key{}).([]slog.Attr)
	all := make([]slog.Attr, 0, len(prev)+len(attrs))
	return context.WithValue(ctx, key{}, append(append(all, prev...), attrs...))
}

// Handler adds the context's attributes to every record logged with a *Context method, and
// trace_id and span_id where the context is inside a span: a log line and the trace of the
// workspace it is about can be found from each other.
type Handler struct{ slog.Handler }

// New wraps h.
func New(h slog.Handler) *Handler { return &Handler{Handler: h} }

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	attrs, _ := ctx.Value(key{}).([]slog.Attr)
	sc := trace.SpanContextFromContext(ctx)
	if len(attrs) == 0 && !sc.IsValid() {
		return h.Handler.Handle(ctx, r)
	}
	r = r.Clone()
	r.AddAttrs(attrs...)
	if sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &Handler{Handler: h.Handler.WithAttrs(attrs)}
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{Handler: h.Handler.WithGroup(name)}
}

// Or returns l, or slog.Default() when l is nil: every component takes an optional *slog.Logger
// and logs through Or, so a zero value logs somewhere.
func Or(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// Seconds is a slog.HandlerOptions.ReplaceAttr that logs a duration as seconds, a number, under
// its key with "_seconds" added ("held": 7s becomes "held_seconds": 7): JSON handlers would write
// nanoseconds, which nobody reads as a duration.
func Seconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindDuration {
		return a
	}
	key := a.Key
	if !strings.HasSuffix(key, "_seconds") {
		key += "_seconds"
	}
	return slog.Float64(key, a.Value.Duration().Seconds())
}

// JSON is how a process in a pod logs: JSON lines on w, at level (debug, info, warn or error),
// durations as seconds and the context's attributes on every line, for the cluster's log
// collector to read.
func JSON(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	return slog.New(New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l, ReplaceAttr: Seconds}))), nil
}
