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
