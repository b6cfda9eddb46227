package jobs

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

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
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	run := seedRun(t, ns)
	if err := b.Node(ctx, testenv.NodeSpec{Name: run.Nodes[0], GPUs: 1, Labels: map[string]string{"app": "tuning-phi-3"},
		Taints: []corev1.Taint{{Key: "sku", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}}}); err != nil {
		t.Fatal(err)
	}
	job, cm, err := Build(run, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var last string
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		l, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=" + job.Name})
		if err != nil || len(l.Items) == 0 {
			if j, err := kube.BatchV1().Jobs(ns).Get(ctx, job.Name, metav1.GetOptions{}); err == nil {
				last = fmt.Sprintf("no pod; Job conditions: %+v", j.Status.Conditions)
			}
			return false, nil
		}
		p := l.Items[0]
		last = string(p.Status.Phase) + " on " + p.Spec.NodeName + ": " + podConditions(p.Status.Conditions)
		return p.Status.Phase == corev1.PodRunning && p.Spec.NodeName == run.Nodes[0], nil
	})
	if err != nil {
		events, _ := kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
		for _, e := range events.Items {
			t.Logf("event %s/%s: %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
		t.Fatalf("the seed's tuning pod did not run on %s: %s", run.Nodes[0], last)
	}
}

func podConditions(c []corev1.PodCondition) string {
	var s string
	for _, x := range c {
		s += string(x.Type) + "=" + string(x.Status) + " " + x.Reason + " " + x.Message + "; "
	}
	return s
}
