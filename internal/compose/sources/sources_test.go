package sources

import (
	"context"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/events"
)

func knativeEvent(t *testing.T, typ string, obj any) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID("k1")
	e.SetSource("https://10.0.0.1:443")
	e.SetType(typ)
	e.SetTime(time.Date(2026, 11, 29, 1, 0, 30, 0, time.UTC))
	if obj != nil {
		if err := e.SetData(cloudevents.ApplicationJSON, obj); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func TestSignals(t *testing.T) {
	labels := map[string]string{events.LabelWorkspace: "ws", events.LabelNamespace: "team-a", events.LabelGeneration: "2", events.LabelJob: "ws-tuning-2"}
	meta := metav1.ObjectMeta{Name: "obj", Namespace: "team-a", UID: "u-1", ResourceVersion: "42", Labels: labels}
	node := &corev1.Node{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}, ObjectMeta: meta}
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: meta}
	job := map[string]any{"apiVersion": "batch/v1", "kind": "Job", "metadata": map[string]any{"name": "ws-tuning-2", "uid": "u-2", "resourceVersion": "7", "labels": labels}}
	ksvc := map[string]any{"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": map[string]any{"name": "ws", "uid": "u-3", "resourceVersion": "9", "labels": labels}}
	unlabelled := &corev1.Node{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}, ObjectMeta: metav1.ObjectMeta{Name: "n"}}
	cm := map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "c"}}
	s := &Signals{TickEvery: time.Minute}
	for _, tc := range []struct {
		name, typ string
		obj       any
		want      string // the signal's type, "" for none
		id        string
		err       bool
	}{
		{"node", ResourceUpdate, node, events.NodeChanged, "u-1/42", false},
		{"pod", ResourceAdd, pod, events.JobChanged, "u-1/42", false},
		{"job deleted", ResourceDelete, job, events.JobChanged, "u-2/7/deleted", false},
		{"knative service", ResourceUpdate, ksvc, events.ServiceChanged, "u-3/9", false},
		{"ping", Ping, nil, events.Tick, events.TickAt(time.Date(2026, 11, 29, 1, 0, 30, 0, time.UTC), time.Minute).ID(), false},
		{"an object of no workspace", ResourceUpdate, unlabelled, "", "", false},
		{"a kind kaitoflow does not watch", ResourceUpdate, cm, "", "", true},
		{"reference mode", ResourceUpdate, "not an object", "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := s.Handle(context.Background(), knativeEvent(t, tc.typ, tc.obj))
			if tc.err {
				if _, ok := events.AsPermanent(err); !ok {
					t.Fatalf("want a permanent error, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if len(out) != 0 {
					t.Fatalf("emitted %v", out)
				}
				return
			}
			if len(out) != 1 || out[0].Type() != tc.want || out[0].ID() != tc.id {
				t.Fatalf("got %v", out)
			}
			if tc.want != events.Tick && (out[0].Subject() != "team-a/ws" || out[0].Extensions()[events.ExtGeneration] != "2") {
				t.Errorf("subject %q extensions %v", out[0].Subject(), out[0].Extensions())
			}
		})
	}
}

func TestDeadLetters(t *testing.T) {
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	ev := events.Must(events.New("kaitoflow/provision", events.NodeReady, events.NodeReady, ref, events.NodeReadyData{}, nil))
	ev.SetExtension(ExtErrorDest, "http://kaitoflow-tune.kaitoflow.svc")
	ev.SetExtension(ExtErrorCode, "503")
	out, err := (&DeadLetters{}).Handle(context.Background(), ev)
	if err != nil || len(out) != 1 || out[0].Type() != events.WorkspaceFailed {
		t.Fatalf("%v %v", out, err)
	}
	var d events.WorkspaceFailedData
	if err := events.Data(out[0], &d); err != nil {
		t.Fatal(err)
	}
	if d.Reason != ReasonDeliveryFailed || d.EventType != events.NodeReady || d.Ref != ref {
		t.Errorf("%+v", d)
	}
	for _, e := range []cloudevents.Event{events.TickAt(time.Now(), time.Minute), out[0]} {
		if out, err := (&DeadLetters{}).Handle(context.Background(), e); err != nil || len(out) != 0 {
			t.Errorf("%s: %v %v", e.Type(), out, err)
		}
	}
}
