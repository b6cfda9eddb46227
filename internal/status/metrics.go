package status

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Lister is what the GPU collector reads: every workspace's record (*Store).
type Lister interface {
	List(ctx context.Context, namespace string) ([]Workspace, error)
}

// GPUCollector exports the GPU time each workspace has held, read from the status records at
// scrape time: kaitoflow_workspace_gpu_seconds_total{namespace, workspace, purpose} (a counter: it
// only grows, so it ends in _total as Prometheus names counters).
type GPUCollector struct {
	Store Lister
	desc  *prometheus.Desc
}

// NewGPUCollector returns the collector over store.
func NewGPUCollector(store Lister) *GPUCollector {
	return &GPUCollector{Store: store, desc: prometheus.NewDesc("kaitoflow_workspace_gpu_seconds_total",
		"GPU time a workspace has held, in GPU-seconds: tuning (every attempt's run time × its GPUs) and serving (the serving capacity's GPUs × how "+
			"long it was held).",
		[]string{"namespace", "workspace", "purpose"}, nil)}
}

// Describe implements prometheus.Collector.
func (c *GPUCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *GPUCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, err := c.Store.List(ctx, "")
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, w := range ws {
		if w.GPU == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, w.GPU.TuningSeconds, w.Namespace, w.Name, "tuning")
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, w.GPU.ServingSeconds, w.Namespace, w.Name, "serving")
	}
}
