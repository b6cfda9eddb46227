package runtime

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the per-function delivery metrics. One Metrics serves every function of a process;
// the function is a label.
type Metrics struct {
	handled      *prometheus.CounterVec
	failed       *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	redeliveries *prometheus.CounterVec
	deadLetters  *prometheus.CounterVec
	refused      *prometheus.CounterVec
	inFlight     *prometheus.GaugeVec
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kaitoflow_events_handled_total", Help: "Events a function handled successfully.",
		}, []string{"function", "type"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kaitoflow_events_failed_total", Help: "Handler failures, by class (retryable or permanent).",
		}, []string{"function", "type", "class"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kaitoflow_handler_duration_seconds", Help: "Handler latency including publishing its outputs.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 12),
		}, []string{"function", "type"}),
		redeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kaitoflow_redeliveries_total", Help: "Events delivered more than once.",
		}, []string{"function", "type"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kaitoflow_dead_letters_total", Help: "Events sent to the dead-letter subject that kaitoflow could not handle (a workspace " +
				"refused for its own fault is counted in kaitoflow_workspaces_refused_total instead).",
		}, []string{"function", "type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kaitoflow_workspaces_refused_total", Help: "Workspaces a step refused for their own fault (invalid, too big, unsupported), by reason.",
		}, []string{"function", "reason"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kaitoflow_in_flight", Help: "Events being handled now.",
		}, []string{"function"}),
	}
	if reg != nil {
		reg.MustRegister(m)
	}
	return m
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.handled, m.failed, m.duration, m.redeliveries, m.deadLetters, m.refused, m.inFlight}
}

// Describe implements prometheus.Collector: the metrics' descriptions, whether or not any was
// observed yet (what a dashboard may draw).
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}
