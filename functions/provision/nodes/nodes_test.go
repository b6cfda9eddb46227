package nodes

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

var (
	kube    kubernetes.Interface
	kubeErr error
	// reader is the narrow client provision reads Nodes with.
	reader *kubeclient.Client
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(cfg *rest.Config, err error) {
		if kubeErr = err; cfg != nil {
			kube = kubernetes.NewForConfigOrDie(cfg)
			if reader, err = kubeclient.New(cfg); err != nil {
				kubeErr, kube = err, nil
			}
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
	go func() { done <- Watch(ctx, reader, rec, slog.New(slog.DiscardHandler)) }()

	kl := testenv.Kubelet{Client: kube}
	labels := map[string]string{provision.LabelWorkspace: "ws", provision.LabelNamespace: "team-a"}
	for _, n := range []string{"watched-0", "watched-1"} {
		if err := kl.Node(ctx, n, labels, false, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Unrelated nodes are not watched.
	if err := kl.Node(ctx, "other-0", map[string]string{"app": "x"}, true, 1); err != nil {
		t.Fatal(err)
	}
	for !slices.ContainsFunc(rec.Events(), func(e cloudevents.Event) bool { return nodeOf(e) == "watched-1" }) {
		rec.Wait(t, rec.Len())
	}
	base := rec.Len()
	// A heartbeat of watched-0 that changes nothing readiness depends on, then watched-1 becoming
	// ready. Events arrive in the order of the changes, so if the heartbeat had made one it would
	// come first: the first event after base is watched-1's, and nothing sleeps to show it.
	n, _ := kube.CoreV1().Nodes().Get(ctx, "watched-0", metav1.GetOptions{})
	n.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(time.Now().Add(time.Minute))
	if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kl.Node(ctx, "watched-1", labels, true, 1); err != nil {
		t.Fatal(err)
	}
	evs := rec.Wait(t, base)
	first := evs[base]
	if first.Type() != events.NodeChanged || first.Subject() != "team-a/ws" || nodeOf(first) != "watched-1" {
		t.Errorf("the first event after a heartbeat and a readiness change is %v, want watched-1's", first)
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

// With more matching nodes than the workspace needs, the one whose GPU no pod holds is chosen: a
// node that serves the workspace's last generation would keep the next tuning Job waiting.
func TestCheckPrefersNodesWithFreeGPUs(t *testing.T) {
	if kube == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx := context.Background()
	kl := testenv.Kubelet{Client: kube}
	labels := map[string]string{"pool": "free-gpus"}
	for _, n := range []string{"busy-0", "idle-1"} {
		if err := kl.Node(ctx, n, labels, true, 1); err != nil {
			t.Fatal(err)
		}
	}
	sel, _ := metav1.LabelSelectorAsSelector(&metav1.LabelSelector{MatchLabels: labels})
	c := &Checker{Client: reader}
	want := provision.NodeWant{Selector: sel, Count: 1, GPUs: 1}
	if got, _, err := c.Check(ctx, want); err != nil || len(got.Nodes) != 1 || got.Nodes[0].Name != "busy-0" {
		t.Fatalf("with both free, name order: %+v %v", got, err)
	}
	// The serving pod holds busy-0's GPU.
	gpu := resource.MustParse("1")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "serving", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "busy-0", Containers: []corev1.Container{{Name: "model", Image: "vllm",
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{GPUResource: gpu}, Limits: corev1.ResourceList{GPUResource: gpu}}}}}}
	if _, err := kube.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _, err := c.Check(ctx, want); err != nil || len(got.Nodes) != 1 || got.Nodes[0].Name != "idle-1" {
		t.Errorf("with busy-0's GPU held, chose %+v (%v), want idle-1", got.Nodes, err)
	}
}

// nodeOf is the node a node.changed event names.
func nodeOf(e cloudevents.Event) string {
	var d events.NodeChangedData
	if e.Type() != events.NodeChanged || events.Data(e, &d) != nil {
		return ""
	}
	return d.Node
}
