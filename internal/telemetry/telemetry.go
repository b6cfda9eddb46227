// Package telemetry sends the pipeline's traces out, and a function's metrics (PushMetrics): OTLP
// exporters configured by the standard OpenTelemetry environment (OTEL_EXPORTER_OTLP_ENDPOINT, or
// the _TRACES_ and _METRICS_ endpoints, with their headers and timeout variables, and
// OTEL_SERVICE_NAME; always OTLP/HTTP with protobuf), and nothing when none is set. Every function continues the trace its input event carries (the CloudEvents
// distributed-tracing extension), so one workspace generation is one trace across processes.
package telemetry

import (
	"context"
	"fmt"
	"os"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Enabled reports whether the environment asks for traces to be exported.
func Enabled() bool {
	if os.Getenv("OTEL_TRACES_EXPORTER") == "none" || os.Getenv("OTEL_SDK_DISABLED") == "true" {
		return false
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Tracer returns the process's tracer provider and the function that flushes and stops it: an
// OTLP/HTTP exporter behind a batching processor when Enabled, a no-op otherwise. service names
// the process where OTEL_SERVICE_NAME does not.
func Tracer(ctx context.Context, service string) (trace.TracerProvider, func(context.Context) error, error) {
	if !Enabled() {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx) // reads the OTEL_EXPORTER_OTLP_* variables itself
	if err != nil {
		return nil, nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	res, err := serviceResource(service)
	if err != nil {
		return nil, nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}

// serviceResource is the process's OpenTelemetry resource. resource.Default reads
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, and names the service after the executable when
// they say nothing: service replaces that default (the second resource of a Merge wins), never
// what the environment set.
func serviceResource(service string) (*resource.Resource, error) {
	res := resource.Default()
	if os.Getenv("OTEL_SERVICE_NAME") != "" {
		return res, nil
	}
	res, err := resource.Merge(res, resource.NewSchemaless(attribute.String("service.name", service)))
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	return res, nil
}
