package telemetry

import (
	"context"
	"fmt"
	"os"

	prombridge "go.opentelemetry.io/contrib/bridges/prometheus"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/prometheus/client_golang/prometheus"
)

// MetricsEnabled reports whether the environment asks for metrics to be pushed over OTLP.
func MetricsEnabled() bool {
	if os.Getenv("OTEL_METRICS_EXPORTER") == "none" || os.Getenv("OTEL_SDK_DISABLED") == "true" {
		return false
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") != ""
}

// PushMetrics pushes what gatherer collects (the process's Prometheus registry, as /metrics
// serves it) over OTLP/HTTP every OTEL_METRIC_EXPORT_INTERVAL (60 s by default), and once more
// when the returned function stops it. A function Knative scales to zero lives only while events
// arrive, so a Prometheus scrape finds it gone; its numbers reach the collector this way, the last
// ones at shutdown. Nothing is started unless MetricsEnabled.
func PushMetrics(ctx context.Context, service string, gatherer prometheus.Gatherer) (func(context.Context) error, error) {
	if !MetricsEnabled() {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := otlpmetrichttp.New(ctx) // reads the OTEL_EXPORTER_OTLP_* variables itself
	if err != nil {
		return nil, fmt.Errorf("OTLP metric exporter: %w", err)
	}
	res, err := serviceResource(service)
	if err != nil {
		return nil, err
	}
	reader := sdkmetric.NewPeriodicReader(exp, sdkmetric.WithProducer(prombridge.NewMetricProducer(prombridge.WithGatherer(gatherer))))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res))
	// Shutdown collects and exports once more before it stops: the last numbers of a replica
	// Knative is taking away.
	return mp.Shutdown, nil
}
