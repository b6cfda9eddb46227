package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
)

// logsAPI is a stand-in for the API server, named: it serves the three reads Logs makes — the
// Jobs and the Pods a label selector picks (filtered with apimachinery's own selector parsing) and
// a pod's log, which the real API server proxies from the kubelet (the box's kwok serves none, and
// a CreationTimestamp cannot be set through the real one). It records the log requests' query.
type logsAPI struct {
	jobs []batchv1.Job
	pods []corev1.Pod
	mu   sync.Mutex
	logs []string // "POD?QUERY" of each log request
}

func (a *logsAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sel, err := labels.Parse(r.URL.Query().Get("labelSelector"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var out any
	switch p := r.URL.Path; {
	case strings.HasSuffix(p, "/log"):
		a.mu.Lock()
		a.logs = append(a.logs, strings.TrimSuffix(p[strings.LastIndex(strings.TrimSuffix(p, "/log"), "/")+1:], "/log")+"?"+r.URL.RawQuery)
		a.mu.Unlock()
		_, _ = w.Write([]byte("step 1 loss 2.0\n"))
		return
	case strings.HasSuffix(p, "/jobs"):
		out = &batchv1.JobList{TypeMeta: metav1.TypeMeta{Kind: "JobList", APIVersion: "batch/v1"},
			Items: slices.DeleteFunc(slices.Clone(a.jobs), func(j batchv1.Job) bool { return !sel.Matches(labels.Set(j.Labels)) })}
	case strings.HasSuffix(p, "/pods"):
		out = &corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
			Items: slices.DeleteFunc(slices.Clone(a.pods), func(pod corev1.Pod) bool { return !sel.Matches(labels.Set(pod.Labels)) })}
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// Logs reads the trainer container of the right pod: the generation's newest attempt (or the one
// asked), its newest pod, and asks for the trainer container's stream — through the typed client,
// against logsAPI.
func TestLogsReadTheAttemptsNewestPod(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	job := func(name string, gen, attempt int) batchv1.Job {
		return batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{
			LabelWorkspace: "ws", LabelNamespace: "default", LabelGeneration: strconv.Itoa(gen), LabelAttempt: strconv.Itoa(attempt)}}}
	}
	pod := func(name, job string, age time.Duration) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{LabelJob: job},
			CreationTimestamp: metav1.NewTime(at.Add(-age))}}
	}
	api := &logsAPI{
		jobs: []batchv1.Job{job("ws-1-a1", 1, 1), job("ws-1-a2", 1, 2), job("ws-0", 0, 1), job("ws-2", 2, 1)},
		pods: []corev1.Pod{pod("a1-pod", "ws-1-a1", time.Hour), pod("a2-old", "ws-1-a2", 30*time.Minute), pod("a2-new", "ws-1-a2", time.Minute),
			pod("gen0-pod", "ws-0", 2*time.Hour)},
	}
	srv := httptest.NewServer(api)
	defer srv.Close()
	client, err := kubeclient.New(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	tr := &Trainer{Client: client}
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
			p, err := tr.logPod(context.Background(), ref, tc.attempt)
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
	// The stream is the trainer container's, of the newest attempt's newest pod.
	var out bytes.Buffer
	if err := tr.Logs(context.Background(), ref, 0, false, &out); err != nil || out.String() != "step 1 loss 2.0\n" {
		t.Fatalf("logs: %v %q", err, out.String())
	}
	if want := "a2-new?container=" + trainerContainer; len(api.logs) != 1 || api.logs[0] != want {
		t.Errorf("log requests %q, want [%s]", api.logs, want)
	}
	// A Job without a pod yet has no log.
	if err := tr.Logs(context.Background(), events.Ref{Namespace: "default", Name: "ws", Generation: 2}, 0, false,
		&bytes.Buffer{}); !errors.Is(err, tune.ErrNoLogs) {
		t.Errorf("a Job without a pod: %v, want ErrNoLogs", err)
	}
}
