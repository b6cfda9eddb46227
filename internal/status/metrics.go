package status

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Lister is what the GPU collector reads: every workspace's record (*Store).
type Lister interface {
	List(ctx context.Context, namespace string) ([]Workspace, error)
}

// DefaultGPUMetricsAge is how old the GPU collector's reading of the records may be when a scrape
// is answered: Prometheus scrapes every 15 to 60 s, and reading every record is the costly part.
const DefaultGPUMetricsAge = 30 * time.Second

// GPUCollector exports the GPU time each workspace has held, read from the status records:
// kaitoflow_workspace_gpu_seconds_total{namespace, workspace, purpose} (a counter: it only grows,
// so it ends in _total as Prometheus names counters); and, while a workspace tunes, its training
// loss as last reported: kaitoflow_tuning_loss{namespace, workspace} (a gauge). A scrape reads the records at most once per
// MaxAge, and concurrent scrapes share one reading, so whoever reaches /metrics cannot make the
// status store list every record as often as they ask.
type GPUCollector struct {
	Store Lister
	// MaxAge is how old a reading may be; DefaultGPUMetricsAge when zero.
	MaxAge time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	desc, loss *prometheus.Desc

	mu     sync.Mutex
	read   time.Time
	sample []prometheus.Metric
}

// NewGPUCollector returns the collector over store.
func NewGPUCollector(store Lister) *GPUCollector {
	return &GPUCollector{Store: store, desc: prometheus.NewDesc("kaitoflow_workspace_gpu_seconds_total",
		"GPU time a workspace has held, in GPU-seconds: tuning (every attempt's run time × its GPUs) and serving (the serving capacity's GPUs × how "+
			"long it was held).",
		[]string{"namespace", "workspace", "purpose"}, nil),
		loss: prometheus.NewDesc("kaitoflow_tuning_loss", "The training loss a tuning workspace's run last reported.", []string{"namespace", "workspace"},
			nil)}
}

// Describe implements prometheus.Collector.
func (c *GPUCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc; ch <- c.loss }

// Collect implements prometheus.Collector.
func (c *GPUCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.metrics() {
		ch <- m
	}
}

// metrics returns the last reading while it is fresh, else reads the records again; a failed
// reading is reported and not kept.
func (c *GPUCollector) metrics() []prometheus.Metric {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	age := c.MaxAge
	if age <= 0 {
		age = DefaultGPUMetricsAge
	}
	if c.sample != nil && now().Sub(c.read) < age {
		return c.sample
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, err := c.Store.List(ctx, "")
	if err != nil {
		return []prometheus.Metric{prometheus.NewInvalidMetric(c.desc, err)}
	}
	sample := make([]prometheus.Metric, 0, 2*len(ws))
	for _, w := range ws {
		if w.Phase == Tuning && w.Progress != nil && w.Progress.Loss != 0 {
			sample = append(sample, prometheus.MustNewConstMetric(c.loss, prometheus.GaugeValue, w.Progress.Loss, w.Namespace, w.Name))
		}
		if w.GPU == nil {
			continue
		}
		sample = append(sample,
			prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, w.GPU.TuningSeconds, w.Namespace, w.Name, "tuning"),
			prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, w.GPU.ServingSeconds, w.Namespace, w.Name, "serving"))
	}
	c.sample, c.read = sample, now()
	return sample
}
