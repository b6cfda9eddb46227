package jobs

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

var (
	kube    kubernetes.Interface
	kubeErr error
	// client is the typed client the trainer runs with; kube, the generated clientset, is the
	// test's own view of the API server.
	client *kubeclient.Client
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(cfg *rest.Config, err error) {
		if kubeErr = err; cfg != nil {
			kube = kubernetes.NewForConfigOrDie(cfg)
			if client, err = kubeclient.New(cfg); err != nil {
				kubeErr, kube = err, nil
			}
		}
	}))
}

// testOptions are the defaults with the two images a deployment configures (stand-in names: the
// box's kubelet is kwok, which pulls nothing).
func testOptions() Options {
	o := DefaultOptions()
	o.TrainerImage, o.WrapperImage = "example.azurecr.io/kaitoflow/trainer:test", "example.azurecr.io/kaitoflow/job-run:test"
	return o
}

// seedRun is the seed workspace's run as provision plans it on its node.
func seedRun(t *testing.T, namespace string) tune.Job {
	t.Helper()
	ws, plan := testenv.Seed(t, namespace)
	ref := events.Ref{Namespace: namespace, Name: ws.Name, Generation: 1}
	return tune.Job{Name: tune.JobName(ref), Ref: ref, Workspace: *ws, Nodes: []string{"aks-kf89f6322161-vmss000000"}, Plan: plan}
}

func TestSeedJobGolden(t *testing.T) {
	checkJobGolden(t, "seed-job.yaml", func(t *testing.T) (*kaito.Workspace, *events.Plan) {
		job := seedRun(t, "default")
		return &job.Workspace, job.Plan
	})
}

func TestJobStatus(t *testing.T) {
	run := tune.Job{Name: "ws-tuning-1"}
	running := corev1.Pod{Spec: corev1.PodSpec{NodeName: "n0"}, Status: corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &metav1.Time{Time: time.Unix(100, 0)}}}
	terminated := func(reason string, code int32, msg string) corev1.Pod {
		return corev1.Pod{Spec: corev1.PodSpec{NodeName: "n0"}, Status: corev1.PodStatus{Phase: corev1.PodFailed, ContainerStatuses: []corev1.ContainerStatus{
			{Name: "trainer", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: reason, ExitCode: code, Message: msg}}}}}}
	}
	cond := func(typ batchv1.JobConditionType, reason string) batchv1.Job {
		return batchv1.Job{Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: typ, Status: corev1.ConditionTrue, Reason: reason, Message: "Job was active longer than specified deadline"}}}}
	}
	disrupted := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p0"}, Spec: corev1.PodSpec{NodeName: "n0"}, Status: corev1.PodStatus{Phase: corev1.PodFailed,
		Conditions: []corev1.PodCondition{{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: "DeletionByPodGC", Message: "PodGC: node no longer exists"}}}}
	summary := `{"location":"r.azurecr.io/a","files":[{"path":"adapter_model.safetensors","size":3,"digest":"sha256:abc"}]}`
	tests := []struct {
		name       string
		job        batchv1.Job
		pods       []corev1.Pod
		phase      tune.Phase
		reason     string
		messageHas string
	}{
		{"no pod yet", batchv1.Job{}, nil, tune.Pending, "", ""},
		{"running", batchv1.Job{}, []corev1.Pod{running}, tune.Running, "", ""},
		{"complete", cond(batchv1.JobComplete, ""), []corev1.Pod{terminated("Completed", 0, summary)}, tune.Succeeded, "", ""},
		{"complete without summary", cond(batchv1.JobComplete, ""), []corev1.Pod{terminated("Completed", 0, "")}, tune.Failed, "NoSummary", "summary"},
		{"out of memory", cond(batchv1.JobFailed, "PodFailurePolicy"), []corev1.Pod{terminated("OOMKilled", 137, "")}, tune.Failed, "OOMKilled", "per_device_train_batch_size"},
		{"bad data", cond(batchv1.JobFailed, "PodFailurePolicy"), []corev1.Pod{terminated("Error", 3, "unrecognised row with columns [instruction]")}, tune.Failed, "InvalidDataset", "unrecognised row"},
		{"weights refused", cond(batchv1.JobFailed, "PodFailurePolicy"), []corev1.Pod{terminated("Error", 5, "ModelDownloadFailed: HTTP 401: the token in Secret default/hf may not read meta-llama/Llama-3.1-8B-Instruct@abc")}, tune.Failed, ReasonModelDownloadFailed, "Secret default/hf"},
		{"unclassified exit", cond(batchv1.JobFailed, batchv1.JobReasonBackoffLimitExceeded), []corev1.Pod{terminated("Error", 1, "RuntimeError: boom")}, tune.Failed, "TrainerExit1", "boom"},
		{"deadline", cond(batchv1.JobFailed, batchv1.JobReasonDeadlineExceeded), []corev1.Pod{running}, tune.Failed, "DeadlineExceeded", "deadline"},
		{"node lost, pod still there", cond(batchv1.JobFailed, batchv1.JobReasonPodFailurePolicy), []corev1.Pod{disrupted}, tune.Failed, ReasonNodeLost, "pod p0 on node n0: DeletionByPodGC"},
		{"node lost, pod collected", batchv1.Job{Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobFailed, Status: corev1.ConditionTrue,
			Reason: batchv1.JobReasonPodFailurePolicy, Message: "Pod t/p0 has condition DisruptionTarget matching FailJob rule at index 1"}}}}, nil, tune.Failed, ReasonNodeLost, "matching FailJob rule"},
		{"image pull", batchv1.Job{}, []corev1.Pod{{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "trainer",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: "pull access denied"}}}}}}}, tune.Failed, "ImagePullError", "pull access denied"},
		{"token Secret missing", batchv1.Job{}, []corev1.Pod{{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "trainer",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CreateContainerConfigError", Message: `secret "hf-token" not found`}}}}}}}, tune.Failed, ReasonContainerConfig, `secret "hf-token" not found`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := jobStatus(run, &tc.job, tc.pods)
			if st.Phase != tc.phase || st.Reason != tc.reason || !strings.Contains(st.Message, tc.messageHas) {
				t.Errorf("got %s %s %q", st.Phase, st.Reason, st.Message)
			}
			if tc.phase == tune.Succeeded && (st.Result.Files[0].Digest != "sha256:abc" || st.Result.Location != "r.azurecr.io/a") {
				t.Errorf("result %+v", st.Result)
			}
		})
	}
}

func typesOf(evs []cloudevents.Event) string {
	var s []string
	for _, e := range evs {
		s = append(s, strings.TrimPrefix(e.Type(), "kaitoflow."))
	}
	return strings.Join(s, ",")
}

// The seed's run against a real API server; the test plays the Job controller and the kubelet.
func TestRunLifecycle(t *testing.T) {
	if kube == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := "tuning"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec := &testenv.Recorder{}
	go func() { _ = Watch(ctx, client, rec, slog.New(slog.DiscardHandler)) }()
	f := tune.New(&Trainer{Client: client, Options: testOptions(), Log: slog.New(slog.DiscardHandler)}, tune.Options{Log: slog.New(slog.DiscardHandler)})
	run := seedRun(t, ns)
	ready := events.Must(events.New("test", events.NodeReady, events.NodeReady, run.Ref, events.NodeReadyData{Workspace: run.Workspace, Nodes: run.Nodes, Plan: run.Plan}, nil))
	for range 2 { // the second is a redelivery
		out, err := f.Handle(ctx, ready)
		if err != nil || len(out) != 0 {
			t.Fatalf("node.ready: %s %v", typesOf(out), err)
		}
	}
	jobs, _ := kube.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{})
	if len(jobs.Items) != 1 {
		t.Fatalf("%d Jobs after a redelivered node.ready, want 1", len(jobs.Items))
	}
	cm, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, run.Name, metav1.GetOptions{})
	if err != nil || !strings.Contains(cm.Data["training_config.yaml"], "bnb_4bit_compute_dtype: float16") {
		t.Fatalf("ConfigMap: %v %v", cm, err)
	}

	// The Job controller creates the Pod; the scheduler binds it; the kubelet starts it.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: run.Name + "-abcde", Namespace: ns, Labels: jobs.Items[0].Spec.Template.Labels},
		Spec: corev1.PodSpec{NodeName: run.Nodes[0], RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "trainer", Image: "trainer"}}}}
	pod, err = kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	seen := rec.Len()
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &metav1.Time{Time: time.Now()},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "trainer", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}}
	if pod, err = kube.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err := f.Handle(ctx, last(rec.Wait(t, seen)))
	if err != nil || typesOf(out) != "tuning.started" {
		t.Fatalf("pod running: %s %v", typesOf(out), err)
	}
	var started events.TuningStartedData
	if err := events.Data(out[0], &started); err != nil || started.Node != run.Nodes[0] || started.Started.IsZero() {
		t.Errorf("tuning.started %+v %v", started, err)
	}

	// The trainer finishes; the wrapper has written its summary; the Job completes.
	summary, _ := json.Marshal(jobrun.Summary{Location: "acr_repo_here.azurecr.io/image_name_here", Files: []events.AdapterFile{
		{Path: "adapter_config.json", Size: 512, Digest: "sha256:" + strings.Repeat("a", 64)},
		{Path: "adapter_model.safetensors", Size: 25165824, Digest: "sha256:" + strings.Repeat("b", 64)}}, Metrics: map[string]float64{"train_loss": 1.02}})
	pod.Status.Phase = corev1.PodSucceeded
	pod.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", Message: string(summary)}}
	if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	j := &jobs.Items[0]
	now := metav1.Now()
	j.Status = batchv1.JobStatus{StartTime: &now, CompletionTime: &now, Succeeded: 1, Conditions: []batchv1.JobCondition{
		{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
	seen = rec.Len()
	if _, err := kube.BatchV1().Jobs(ns).UpdateStatus(ctx, j, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("Job status: %v", err)
	}
	out, err = f.Handle(ctx, last(rec.Wait(t, seen)))
	if err != nil || typesOf(out) != "tuning.started,tuning.completed" {
		t.Fatalf("job complete: %s %v", typesOf(out), err)
	}
	var done events.TuningCompletedData
	if err := events.Data(out[1], &done); err != nil || done.Files[1].Digest != "sha256:"+strings.Repeat("b", 64) || done.Metrics["train_loss"] != 1.02 {
		t.Fatalf("tuning.completed %+v %v", done, err)
	}
	// Reading tuning.completed back acknowledges the run; deletion removes it.
	if _, err := f.Handle(ctx, out[1]); err != nil {
		t.Fatal(err)
	}
	got, _ := kube.BatchV1().Jobs(ns).Get(ctx, run.Name, metav1.GetOptions{})
	if got.Annotations[AnnotationAcked] != "true" {
		t.Error("run not acknowledged")
	}
	// Serving scales the node away and the pod garbage collector removes the finished pod: the
	// Job, read again, has no summary — the stored outcome stands (the box found this failing
	// Ready workspaces with NoSummary).
	if err := kube.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	changed := events.Must(events.New("test", events.JobChanged, "job/"+run.Name+"/gone", run.Ref, map[string]string{"job": run.Name}, nil))
	if out, err := f.Handle(ctx, changed); err != nil || len(out) != 0 {
		t.Fatalf("a finished run judged again after its pod went: %s %v", typesOf(out), err)
	}
	if _, err := f.Handle(ctx, events.Must(events.New("test", events.WorkspaceDeleted, events.WorkspaceDeleted, run.Ref, events.WorkspaceDeletedData{Ref: run.Ref}, nil))); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.BatchV1().Jobs(ns).Get(ctx, run.Name, metav1.GetOptions{}); err == nil {
		if g, _ := kube.BatchV1().Jobs(ns).Get(ctx, run.Name, metav1.GetOptions{}); g.DeletionTimestamp == nil {
			t.Error("Job not deleted")
		}
	}
}

// A trainer killed for memory fails the workspace with OOMKilled, through the real API server.
func TestOOMKilledFailsTheWorkspace(t *testing.T) {
	if kube == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx := context.Background()
	ns := "tuning-oom"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f := tune.New(&Trainer{Client: client, Options: testOptions(), Log: slog.New(slog.DiscardHandler)}, tune.Options{Log: slog.New(slog.DiscardHandler)})
	run := seedRun(t, ns)
	ready := events.Must(events.New("test", events.NodeReady, events.NodeReady, run.Ref, events.NodeReadyData{Workspace: run.Workspace, Nodes: run.Nodes, Plan: run.Plan}, nil))
	if _, err := f.Handle(ctx, ready); err != nil {
		t.Fatal(err)
	}
	j, err := kube.BatchV1().Jobs(ns).Get(ctx, run.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: run.Name + "-oom", Namespace: ns, Labels: j.Spec.Template.Labels},
		Spec: corev1.PodSpec{NodeName: run.Nodes[0], RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "trainer", Image: "trainer"}}}}
	if pod, err = kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodFailed, StartTime: &metav1.Time{Time: time.Now()}, ContainerStatuses: []corev1.ContainerStatus{
		{Name: "trainer", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"}}}}}
	if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	j.Status = batchv1.JobStatus{StartTime: &now, Failed: 1, Conditions: []batchv1.JobCondition{
		{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", LastTransitionTime: now},
		{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit", LastTransitionTime: now}}}
	if _, err := kube.BatchV1().Jobs(ns).UpdateStatus(ctx, j, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("Job status: %v", err)
	}
	changed := events.Must(events.New("test", events.JobChanged, "changed", run.Ref, events.JobChangedData{Job: run.Name}, nil))
	out, err := f.Handle(ctx, changed)
	if err != nil || typesOf(out) != "tuning.started,workspace.failed" {
		t.Fatalf("got %s %v", typesOf(out), err)
	}
	var d events.WorkspaceFailedData
	if err := events.Data(out[1], &d); err != nil || d.Reason != "OOMKilled" || !strings.Contains(d.Message, "per_device_train_batch_size") {
		t.Fatalf("failure %+v %v", d, err)
	}
}

func last(evs []cloudevents.Event) cloudevents.Event { return evs[len(evs)-1] }
