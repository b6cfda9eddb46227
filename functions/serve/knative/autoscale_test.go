package knative

import (
	"context"
	"math"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric/noop"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/types"
	autoscalerconfig "knative.dev/serving/pkg/autoscaler/config"
	"knative.dev/serving/pkg/autoscaler/scaling"
	kparesources "knative.dev/serving/pkg/reconciler/autoscaling/kpa/resources"
	configresources "knative.dev/serving/pkg/reconciler/configuration/resources"
	revisionresources "knative.dev/serving/pkg/reconciler/revision/resources"
	serviceresources "knative.dev/serving/pkg/reconciler/service/resources"
)

// load is the named stand-in for what the KPA reads of a revision: the concurrency its queue-proxies
// report (stable and panic windows alike) and the pods ready behind its endpoints.
type load struct {
	concurrency float64
	ready       int
}

func (l *load) StableAndPanicConcurrency(types.NamespacedName, time.Time) (float64, float64, error) {
	return l.concurrency, l.concurrency, nil
}

func (l *load) StableAndPanicRPS(types.NamespacedName, time.Time) (float64, float64, error) {
	return 0, 0, nil
}
func (l *load) ReadyCount() (int, error)    { return l.ready, nil }
func (l *load) NotReadyCount() (int, error) { return 0, nil }

// Knative's own autoscaler on the seed's Service as kaitoflow builds it: the Revision and the
// PodAutoscaler Knative's reconcilers make of it (their code: MakeConfiguration, MakeRevision,
// MakePA), the decider the KPA makes of that with Knative's default configuration (MakeDecider), and
// the KPA's autoscaler (scaling.New). Each replica batches the plan's --max-num-seqs sequences (the
// revision's containerConcurrency), and the autoscaler aims at 70% of it: requests in flight above
// what one replica batches give two replicas or more, and below its target the autoscaler scales
// back to one once Knative's stable window has passed. What the queue-proxies would report and the
// pods that become ready are the stand-in above (no Knative data plane runs here).
func TestKnativeAutoscalerScalesOnTheModelsConcurrency(t *testing.T) {
	svc := seedService(t, "default")
	svc.UID = "seed-uid"
	rev := configresources.MakeRevision(context.Background(), serviceresources.MakeConfiguration(svc), time.Now())
	rev.Name = svc.Name + "-00001"
	cfg, err := autoscalerconfig.NewConfigFromMap(nil)
	if err != nil {
		t.Fatal(err)
	}
	decider := kparesources.MakeDecider(revisionresources.MakePA(rev, nil), cfg)
	seqs := rev.Spec.ContainerConcurrency
	if seqs == nil || *seqs < 1 {
		t.Fatalf("the revision has no containerConcurrency: %v", seqs)
	}
	spec := decider.Spec
	if spec.TotalValue != float64(*seqs) || math.Abs(spec.TargetValue-float64(*seqs)*float64(TargetUtilizationPercent)/100) > 1e-9 {
		t.Fatalf("the KPA's decider aims at %g of %g; want %d%% of --max-num-seqs %d", spec.TargetValue, spec.TotalValue,
			TargetUtilizationPercent, *seqs)
	}
	l := &load{ready: 1}
	as := scaling.New(attribute.NewSet(), noop.NewMeterProvider(), rev.Namespace, rev.Name, l, l, &spec)
	log := zap.NewNop().Sugar()
	now := time.Now()

	// Twice what a replica batches, in flight: out.
	l.concurrency = 2 * float64(*seqs)
	r := as.Scale(log, now)
	if !r.ScaleValid || r.DesiredPodCount < 2 {
		t.Fatalf("%g requests in flight on one replica batching %d: %+v, want 2 or more replicas", l.concurrency, *seqs, r)
	}
	l.ready = int(r.DesiredPodCount)

	// Below one replica's target: back to one, once the stable window has passed.
	l.concurrency = spec.TargetValue / 2
	var desired int32
	for i := range 120 {
		now = now.Add(2 * time.Second)
		r = as.Scale(log, now)
		if !r.ScaleValid {
			t.Fatalf("tick %d: %+v", i, r)
		}
		desired = r.DesiredPodCount
		l.ready = int(desired)
		if desired == 1 {
			break
		}
	}
	if desired != 1 {
		t.Fatalf("%g requests in flight: %d replicas after 4 minutes, want 1", l.concurrency, desired)
	}
}
