package nodes

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

var (
	kube    kubernetes.Interface
	kubeErr error
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(cfg *rest.Config, err error) {
		if kubeErr = err; cfg != nil {
			kube = kubernetes.NewForConfigOrDie(cfg)
		}
	}))
}

func TestWatchEmitsOnReadinessChangesOnly(t *testing.T) {
	if kube == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &testenv.Recorder{}
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, kube, rec, slog.New(slog.NewTextHandler(io.Discard, nil))) }()

	kl := testenv.Kubelet{Client: kube}
	labels := map[string]string{provision.LabelWorkspace: "ws", provision.LabelNamespace: "team-a"}
	if err := kl.Node(ctx, "watched-0", labels, false, 0); err != nil {
		t.Fatal(err)
	}
	// Unrelated nodes are not watched.
	if err := kl.Node(ctx, "other-0", map[string]string{"app": "x"}, true, 1); err != nil {
		t.Fatal(err)
	}
	rec.Wait(t, 0)
	base := rec.Len()
	// A heartbeat that changes nothing readiness depends on: no event.
	n, _ := kube.CoreV1().Nodes().Get(ctx, "watched-0", metav1.GetOptions{})
	n.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(time.Now().Add(time.Minute))
	if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kl.Node(ctx, "watched-0", labels, true, 1); err != nil {
		t.Fatal(err)
	}
	rec.Wait(t, base)
	time.Sleep(200 * time.Millisecond)
	evs := rec.Events()
	if len(evs) != base+1 {
		t.Errorf("%d events after a heartbeat and a readiness change, want %d", len(evs), base+1)
	}
	last := evs[len(evs)-1]
	var d events.NodeChangedData
	if last.Type() != events.NodeChanged || last.Subject() != "team-a/ws" || events.Data(last, &d) != nil || d.Node != "watched-0" {
		t.Errorf("event %v", last)
	}
	for _, e := range evs {
		if e.Subject() != "team-a/ws" {
			t.Errorf("an unlabelled node produced %v", e)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
