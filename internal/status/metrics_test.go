package status

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kaitoflow/kaitoflow/events"
)

// countingLister counts the readings of every record, and fails while err is set.
type countingLister struct {
	lists atomic.Int32
	ws    []Workspace
	err   error
}

func (l *countingLister) List(context.Context, string) ([]Workspace, error) {
	l.lists.Add(1)
	return l.ws, l.err
}

// TestGPUCollectorReadsTheRecordsOncePerAge: a flood of scrapes (whoever reaches /metrics) costs
// one reading of every record per MaxAge, not one each; a failed reading is not kept.
func TestGPUCollectorReadsTheRecordsOncePerAge(t *testing.T) {
	l := &countingLister{ws: []Workspace{
		{Namespace: "default", Name: "a", GPU: &GPUTime{TuningSeconds: 60, ServingSeconds: 30}},
		{Namespace: "default", Name: "no-gpu-yet"},
	}}
	now := time.Unix(1_000, 0)
	c := NewGPUCollector(l)
	c.Now = func() time.Time { return now }

	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if n := testutil.CollectAndCount(c); n != 2 {
				t.Errorf("a scrape gave %d series, want 2 (tuning and serving of the one workspace with GPU time)", n)
			}
		})
	}
	wg.Wait()
	if got := l.lists.Load(); got != 1 {
		t.Fatalf("50 scrapes read the records %d times, want once", got)
	}

	now = now.Add(DefaultGPUMetricsAge)
	l.err = errors.New("store unavailable")
	if err := testutil.CollectAndCompare(c, strings.NewReader("")); err == nil {
		t.Fatal("a failed reading was answered with the old one; want the failure reported")
	}
	l.err = nil
	if n := testutil.CollectAndCount(c); n != 2 || l.lists.Load() != 3 {
		t.Fatalf("after a failed reading: %d series from %d readings, want 2 from a fresh (third) reading", n, l.lists.Load())
	}
}

// A tuning workspace's last reported loss is a gauge; one that is not tuning has none.
func TestTuningLossGauge(t *testing.T) {
	c := NewGPUCollector(&countingLister{ws: []Workspace{
		{Namespace: "default", Name: "tuning", Phase: Tuning, Progress: &events.TuningProgressData{Step: 40, Loss: 1.25}},
		{Namespace: "default", Name: "ready", Phase: Ready, Progress: &events.TuningProgressData{Step: 100, Loss: 0.5}},
	}})
	want := `# HELP kaitoflow_tuning_loss The training loss a tuning workspace's run last reported.
# TYPE kaitoflow_tuning_loss gauge
kaitoflow_tuning_loss{namespace="default",workspace="tuning"} 1.25
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "kaitoflow_tuning_loss"); err != nil {
		t.Error(err)
	}
}

// The loss curve keeps its shape in a bounded line: a full curve halves, then goes on.
func TestLossCurveAndSparkline(t *testing.T) {
	var curve []float64
	for i := range 100 {
		curve = appendLoss(curve, 2-float64(i)/100)
	}
	if len(curve) > maxLossCurve || curve[0] != 2 || curve[len(curve)-1] != 2-0.99 {
		t.Errorf("curve %v", curve)
	}
	if got := Sparkline([]float64{2, 1.5, 1, 1, 0.5}); got != "█▅▃▃▁" {
		t.Errorf("sparkline %q", got)
	}
	if got := Sparkline([]float64{1, 1}); got != "▁▁" {
		t.Errorf("flat sparkline %q", got)
	}
}
