package jobs

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/functions/tune"
)

// A run that cannot start because of its configuration fails within minutes with the Job
// controller's or the kubelet's own words, instead of holding the GPU node until the Job's
// 12-hour deadline: the trainer's ServiceAccount missing (no pod is ever created) and the push
// Secret missing (the pod's volume never mounts; the quickstart's placeholder name does this).
// Against a real API server (field selectors on Events included); the test writes the Events the
// Job controller and the kubelet write — stand-ins: the box's API server runs without the
// ServiceAccount admission plugin and kwok mounts no volumes, so neither failure happens there.
func TestConfigErrorsFailTheRunFast(t *testing.T) {
	if kube == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name, kind, reason, message, want string
		pod                               bool
	}{
		{"missing ServiceAccount", "Job", "FailedCreate", `Error creating: pods "x" is forbidden: error looking up service account cfg-1/kaitoflow-trainer: serviceaccount "kaitoflow-trainer" not found`, ReasonPodNotCreated, false},
		{"missing push Secret", "Pod", "FailedMount", `MountVolume.SetUp failed for volume "push-secret" : secret "ACR_REGISTRY_SECRET_HERE" not found`, ReasonVolumeMount, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := "cfg-" + strings.ToLower(strings.ReplaceAll(tc.name, " ", "-"))
			if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			tr := &Trainer{Client: client, Options: testOptions(), Log: slog.New(slog.DiscardHandler), ConfigGrace: time.Second}
			run := seedRun(t, ns)
			if err := tr.Start(ctx, run); err != nil {
				t.Fatal(err)
			}
			st, err := tr.Status(ctx, run.Ref)
			if err != nil || st.Phase != tune.Pending {
				t.Fatalf("a new run: %+v %v", st, err)
			}
			involved := corev1.ObjectReference{Kind: "Job", Namespace: ns, Name: run.Name}
			if tc.pod {
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: run.Name + "-abcde", Namespace: ns, Labels: map[string]string{LabelJob: run.Name}},
					Spec: corev1.PodSpec{NodeName: run.Nodes[0], Containers: []corev1.Container{{Name: "trainer", Image: "x"}}}}
				if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				involved = corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod.Name}
			}
			time.Sleep(1100 * time.Millisecond) // the grace
			// Within the grace nothing is decided; past it, a failure still being reported is.
			if st, _ := tr.Status(ctx, run.Ref); st.Phase == tune.Failed {
				t.Fatalf("failed with no Event: %+v", st)
			}
			now := metav1.Now()
			ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{GenerateName: "cfg-", Namespace: ns}, InvolvedObject: involved,
				Reason: tc.reason, Message: tc.message, Type: corev1.EventTypeWarning, FirstTimestamp: now, LastTimestamp: now, Count: 5}
			if _, err := kube.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			st, err = tr.Status(ctx, run.Ref)
			if err != nil || st.Phase != tune.Failed || st.Reason != tc.want || !strings.Contains(st.Message, tc.message) {
				t.Fatalf("got %+v %v, want %s with the Event's message", st, err, tc.want)
			}
		})
	}
}

func TestConfigFailureIgnoresResolvedEvents(t *testing.T) {
	now := time.Now()
	old := corev1.Event{Reason: "FailedMount", Message: "secret not found", LastTimestamp: metav1.NewTime(now.Add(-time.Hour))}
	if reason, _ := configFailureOf([]corev1.Event{old}, "FailedMount", ReasonVolumeMount, now); reason != "" {
		t.Errorf("an hour-old FailedMount failed the run: %s", reason)
	}
	fresh := corev1.Event{Reason: "FailedMount", Message: "secret not found", EventTime: metav1.NewMicroTime(now.Add(-time.Minute))}
	if reason, _ := configFailureOf([]corev1.Event{old, fresh}, "FailedMount", ReasonVolumeMount, now); reason != ReasonVolumeMount {
		t.Errorf("a FailedMount a minute old did not: %q", reason)
	}
}
