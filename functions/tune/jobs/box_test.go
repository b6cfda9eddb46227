package jobs

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// The seed's tuning Job, as Build makes it, in the box: admitted in a namespace that enforces
// PodSecurity's restricted level, turned into a pod by the real Job controller, placed by the real
// scheduler on the GPU node provision named (tainted as AKS taints GPU pools), and run there.
func TestSeedJobRunsInBox(t *testing.T) {
	b := testenv.BoxFor(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ns = "tuning"
	kube := b.Client
	if err := b.Namespace(ctx, ns, "restricted"); err != nil {
		t.Fatal(err)
	}
	run := seedRun(t, ns)
	if err := b.Node(ctx, testenv.NodeSpec{Name: run.Nodes[0], GPUs: 1, Labels: map[string]string{"app": "tuning-phi-3"}, Taints: testenv.GPUTaints()}); err != nil {
		t.Fatal(err)
	}
	job, cm, err := Build(run, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	b.Await(ctx, t, ns, "the seed's tuning pod running on "+run.Nodes[0], func(ctx context.Context) (bool, string) {
		l, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=" + job.Name})
		if err != nil || len(l.Items) == 0 {
			return false, fmt.Sprintf("no pod (%v)", err)
		}
		p := l.Items[0]
		return p.Status.Phase == corev1.PodRunning && p.Spec.NodeName == run.Nodes[0],
			fmt.Sprintf("%s on %q: %+v", p.Status.Phase, p.Spec.NodeName, p.Status.Conditions)
	})
}
