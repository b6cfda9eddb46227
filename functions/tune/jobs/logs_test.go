package jobs

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
)

// Logs reads the trainer container of the right pod: the generation's newest attempt (or the one
// asked), its newest pod. Stand-in, named: client-go's fake clientset, whose log stream is a fixed
// text and names no pod (a kubelet serves the real one; the box's kwok serves none), so the pod is
// checked where it is chosen and the stream for its container.
func TestLogsReadTheAttemptsNewestPod(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	job := func(name string, gen, attempt int) *batchv1.Job {
		return &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{
			LabelWorkspace: "ws", LabelNamespace: "default", LabelGeneration: strconv.Itoa(gen), LabelAttempt: strconv.Itoa(attempt)}}}
	}
	pod := func(name, job string, age time.Duration) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{LabelJob: job},
			CreationTimestamp: metav1.NewTime(at.Add(-age))}}
	}
	objs := []runtime.Object{
		job("ws-1-a1", 1, 1), job("ws-1-a2", 1, 2), job("ws-0", 0, 1),
		pod("a1-pod", "ws-1-a1", time.Hour), pod("a2-old", "ws-1-a2", 30*time.Minute), pod("a2-new", "ws-1-a2", time.Minute),
		pod("gen0-pod", "ws-0", 2*time.Hour),
	}
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	for _, tc := range []struct {
		name    string
		attempt int
		pod     string
		err     error
	}{
		{name: "the newest attempt", pod: "a2-new"},
		{name: "attempt 1", attempt: 1, pod: "a1-pod"},
		{name: "no such attempt", attempt: 3, err: tune.ErrNoLogs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := (&Trainer{Client: fake.NewClientset(objs...)}).logPod(context.Background(), ref, tc.attempt)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || p.Name != tc.pod {
				t.Fatalf("pod %v, %v; want %s", p, err, tc.pod)
			}
		})
	}
	// The stream is the trainer container's.
	client := fake.NewClientset(objs...)
	var out bytes.Buffer
	if err := (&Trainer{Client: client}).Logs(context.Background(), ref, 0, false, &out); err != nil || out.Len() == 0 {
		t.Fatalf("logs: %v %q", err, out.String())
	}
	for _, a := range client.Actions() {
		if g, ok := a.(k8stesting.GenericAction); ok && a.GetSubresource() == "log" {
			if opts, _ := g.GetValue().(*corev1.PodLogOptions); opts == nil || opts.Container != trainerContainer {
				t.Errorf("log options %+v, want the %s container", opts, trainerContainer)
			}
		}
	}
	// A Job without a pod yet has no log.
	client = fake.NewClientset(job("ws-2", 2, 1))
	if err := (&Trainer{Client: client}).Logs(context.Background(), events.Ref{Namespace: "default", Name: "ws", Generation: 2}, 0, false,
		&bytes.Buffer{}); !errors.Is(err, tune.ErrNoLogs) {
		t.Errorf("a Job without a pod: %v, want ErrNoLogs", err)
	}
}
