package logctx

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Durations reach JSON logs as seconds under a key that says so, not as nanoseconds.
func TestSeconds(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&b, &slog.HandlerOptions{ReplaceAttr: Seconds}))
	log.Info("capacity released", "held", 7*time.Second, "wait_seconds", 1500*time.Millisecond, "count", 3)
	for _, want := range []string{`"held_seconds":7`, `"wait_seconds":1.5`, `"count":3`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("want %s in %s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "7000000000") {
		t.Errorf("nanoseconds logged: %s", b.String())
	}
}

// A line logged inside a span names its trace and span, as the trace's exporter writes them.
func TestTraceIDsInLines(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(New(slog.NewJSONHandler(&b, nil)))
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid,
		TraceFlags: trace.FlagsSampled}))
	log.InfoContext(With(ctx, slog.String("workspace", "default/w")), "inside")
	log.InfoContext(context.Background(), "outside")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"workspace":"default/w","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"`) ||
		strings.Contains(lines[1], "trace_id") {
		t.Errorf("lines:\n%s", b.String())
	}
}
