package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve/knative"
	"github.com/kaitoflow/kaitoflow/functions/tune/jobs"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// as returns a config for cfg's API server that acts as the ServiceAccount sa of deploy/knative:
// the API server authorizes every request with that account's RBAC, so a verb missing from
// rbac.yaml fails here.
func as(cfg *rest.Config, sa string) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:kaitoflow:" + sa,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kaitoflow", "system:authenticated"}}
	return c
}

// secretsAs is how publish reads a workspace's imagePushSecret, acting as sa.
func secretsAs(t testing.TB, cfg *rest.Config, sa string) func(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	t.Helper()
	c, err := kubeclient.New(as(cfg, sa))
	if err != nil {
		t.Fatal(err)
	}
	return func(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
		return c.Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	}
}

// applyRBAC installs rbac.yaml for real.
func applyRBAC(t *testing.T, objs objects) {
	t.Helper()
	ctx := context.Background()
	for _, ns := range []string{"kaitoflow"} {
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
		if _, err := objs.dyn.Resource(schemaNamespaces).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	for _, o := range load(t, "knative") {
		if o.file != "rbac.yaml" {
			continue
		}
		ri, err := objs.of(o.u)
		if err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		if _, err := ri.Apply(ctx, o.u.GetName(), o.u, metav1.ApplyOptions{FieldManager: "kaitoflow-e2e", Force: true}); err != nil {
			t.Fatalf("%s: %v", o, err)
		}
	}
}

// installTrainerAccount copies rbac.yaml's per-namespace objects (the trainer's ServiceAccount
// and its Role, the functions' Secret reads) into ns, as docs/install.md tells users to do for every
// namespace that runs workspaces.
func installTrainerAccount(t *testing.T, objs objects, ns string) {
	t.Helper()
	for _, o := range load(t, "knative") {
		if o.file == "rbac.yaml" && o.u.GetNamespace() == "default" {
			u := o.u.DeepCopy()
			u.SetNamespace(ns)
			if subjects, ok := u.Object["subjects"].([]any); ok {
				for _, sub := range subjects {
					// The namespace's own accounts move with it; kaitoflow's functions stay.
					if m := sub.(map[string]any); m["namespace"] == "default" {
						m["namespace"] = ns
					}
				}
			}
			ri, err := objs.of(u)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ri.Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// finishAsJobRun does what job-run does when the trainer has finished in the pod: it uploads the
// adapter layer to the output repository (image, rewritten to registry, the stand-in for ACR),
// then the kubelet reports the trainer container terminated with job-run's summary as its
// termination message. It returns the repository the layer went to.
func finishAsJobRun(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, pod, registry, image string) name.Reference {
	t.Helper()
	dir := t.TempDir()
	files := testenv.Adapter(t, dir)
	layer, err := adapter.Layer(dir, files)
	if err != nil {
		t.Fatal(err)
	}
	target, err := adapter.Rewrite(registry, image)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(target.Context(), layer); err != nil {
		t.Fatal(err)
	}
	blob, err := adapter.Describe(layer)
	if err != nil {
		t.Fatal(err)
	}
	summary, _ := json.Marshal(jobrun.Summary{Location: target.Context().String(), Files: files, Layer: &blob, Metrics: map[string]float64{"train_loss": 1.02}})
	trainerSucceeded(ctx, t, client, ns, pod, string(summary))
	return target
}

// trainerSucceeded is the kubelet's report of a tuning pod whose trainer exited 0 with summary
// (job-run's) as its termination message.
func trainerSucceeded(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, pod, summary string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		p.Status.Phase = corev1.PodSucceeded
		for i := range p.Status.Conditions {
			if p.Status.Conditions[i].Type == corev1.PodReady || p.Status.Conditions[i].Type == corev1.ContainersReady {
				p.Status.Conditions[i].Status = corev1.ConditionFalse
			}
		}
		for i := range p.Status.ContainerStatuses {
			cs := &p.Status.ContainerStatuses[i]
			cs.Ready, cs.State = false, corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", FinishedAt: now}}
			if cs.Name == "trainer" {
				cs.State.Terminated.Message = summary
			}
		}
		_, err = client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The seed's Workspace, applied as a custom resource to a real API server, through every step:
// provision (byo; the test plays the kubelet of a GPU node), tune (a Job; the test plays the Job
// controller and the kubelet, and job-run's upload of the adapter layer), publish (to the in-process
// registry, with the imagePushSecret read from the cluster), serve (a Knative Service; the test plays
// Knative's controller and marks it Ready), until the Workspace's status says WORKSPACEREADY True.
// Deleting it releases everything. Every function runs as its own ServiceAccount from rbac.yaml.
func TestClusterEndToEnd(t *testing.T) {
	if restCfg == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := kubernetes.NewForConfigOrDie(restCfg)
	adminDyn := dynamic.NewForConfigOrDie(restCfg)
	objs := newObjects(restCfg)
	applyRBAC(t, objs)
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	// A namespace of its own, with the trainer's ServiceAccount copied into it as docs/install.md tells
	// users to do for every namespace that runs workspaces.
	ns := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	installTrainerAccount(t, objs, ns)

	// The user's side: a GPU node (byo), the push secret, and the seed's manifest with its
	// placeholders filled in as the guide asks.
	if err := (testenv.Kubelet{Client: admin}).Node(ctx, "aks-gpu-e2e-0", map[string]string{"app": "tuning-phi-3"}, true, 1); err != nil {
		t.Fatal(err)
	}
	pushSecret(ctx, t, admin, ns)

	// kaitoflow: every function with its own identity, assembled as `kaitoflow up` assembles it.
	p, err := embedded.Start(ctx, embedded.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: log, TickInterval: time.Second,
		Functions: assembly.Config{
			Drivers:    testDrivers("byo"),
			Controller: true,
			Cluster:    func(identity string) (*rest.Config, error) { return as(restCfg, "kaitoflow-"+identity), nil },
			// The push goes to the in-process registry, which needs no credentials; reading the
			// imagePushSecret as publish's ServiceAccount is what a push to ACR does first.
			PushKeychain: registryauth.Secrets{Read: secretsAs(t, restCfg, "kaitoflow-publish")}.For,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// kubectl apply -f.
	name, wsClient := applyWorkspace(ctx, t, restCfg, ns, seedManifest(t))

	// tune's Job appears; the Job controller, the scheduler and the kubelet do their part.
	var job batchv1.Job
	testenv.Eventually(t, 30*time.Second, "the tuning Job", func() bool {
		l, err := admin.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{LabelSelector: events.LabelWorkspace + "=" + name})
		if err == nil && len(l.Items) == 1 {
			job = l.Items[0]
			return true
		}
		return false
	})
	if job.Spec.Template.Spec.ServiceAccountName != jobs.TrainerServiceAccount {
		t.Errorf("tuning pods run as %q", job.Spec.Template.Spec.ServiceAccountName)
	}
	pod, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: job.Name + "-x7k2p", Labels: job.Spec.Template.Labels},
		Spec: corev1.PodSpec{NodeName: "aks-gpu-e2e-0", RestartPolicy: corev1.RestartPolicyNever, ServiceAccountName: jobs.TrainerServiceAccount,
			Containers: []corev1.Container{{Name: "trainer", Image: "trainer"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &metav1.Time{Time: time.Now()},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "trainer", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}}
	if pod, err = admin.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// job-run (as kaitoflow-trainer) reports progress on its own Pod.
	trainer, err := kubeclient.New(func() *rest.Config {
		c := rest.CopyConfig(restCfg)
		// As the pod's bound ServiceAccount token says: the account, and the pod it was issued to.
		c.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + jobs.TrainerServiceAccount,
			Extra: map[string][]string{"authentication.kubernetes.io/pod-name": {pod.Name}}}
		return c
	}())
	if err != nil {
		t.Fatal(err)
	}
	if err := (&jobrun.PodAnnotator{Client: trainer, Namespace: ns, Pod: pod.Name}).Report(ctx, events.TuningProgressData{Step: 50, MaxSteps: 100, Loss: 1.4}); err != nil {
		t.Fatalf("the trainer's ServiceAccount cannot report progress: %v", err)
	}
	target := finishAsJobRun(ctx, t, admin, ns, pod.Name, p.Registry, "example.azurecr.io/adapters/phi-3:0.0.1")
	now := metav1.Now()
	job.Status = batchv1.JobStatus{StartTime: &now, CompletionTime: &now, Succeeded: 1, Conditions: []batchv1.JobCondition{
		{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
	if _, err := admin.BatchV1().Jobs(ns).UpdateStatus(ctx, &job, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// serve's Knative Service appears; Knative's controller marks it Ready.
	ksvcs := adminDyn.Resource(knative.Services).Namespace(ns)
	testenv.Eventually(t, 30*time.Second, "the Knative Service", func() bool {
		_, err = ksvcs.Get(ctx, name, metav1.GetOptions{})
		return err == nil
	})
	// The adapter set its replicas load names the pushed adapter by digest.
	// The set is written right after the Service it is owned by.
	var cm *corev1.ConfigMap
	testenv.Eventually(t, 30*time.Second, "the adapter set", func() bool {
		cm, err = admin.CoreV1().ConfigMaps(ns).Get(ctx, knative.AdapterSetName(name), metav1.GetOptions{})
		return err == nil
	})
	if set, err := chatproxy.DecodeAdapterSet([]byte(cm.Data[knative.AdapterSetKey])); err != nil || len(set.Adapters) != 1 ||
		!strings.HasPrefix(set.Adapters[0].Image, target.Context().String()+"@sha256:") {
		t.Errorf("the inference Service's adapter set does not name the pushed adapter by digest: %+v %v", set, err)
	}
	// serve annotates the Service's metadata meanwhile (the adapter set's version): the status is
	// written against the latest object, retried on conflict, as Knative's controller does.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ksvc, err := ksvcs.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ksvc.Object["status"] = map[string]any{"observedGeneration": ksvc.GetGeneration(), "url": "http://" + name + "." + ns + ".example.com",
			"latestCreatedRevisionName": name + "-00001", "latestReadyRevisionName": name + "-00001",
			"conditions": []any{map[string]any{"type": "Ready", "status": "True", "lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}}}
		_, err = ksvcs.UpdateStatus(ctx, ksvc, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// kubectl get workspace: WORKSPACEREADY True, each condition with its reason.
	var got *unstructured.Unstructured
	conds := []string{status.CondResourceReady, status.CondJobStarted, status.CondWorkspaceSucceeded, status.CondInferenceReady, status.CondWorkspaceReady}
	testenv.Eventually(t, 30*time.Second, "every condition True on the custom resource", func() bool {
		if got, err = wsClient.Get(ctx, name, metav1.GetOptions{}); err != nil {
			return false
		}
		for _, c := range conds {
			if conditionOf(got, c)["status"] != "True" {
				return false
			}
		}
		return true
	})
	for _, c := range conds {
		cond := conditionOf(got, c)
		if cond["status"] != "True" || cond["reason"] == "" {
			t.Errorf("condition %s: %v", c, cond)
		}
		t.Logf("%-18s %s  %v: %v", c, cond["status"], cond["reason"], cond["message"])
	}
	if ep, _, _ := unstructured.NestedString(got.Object, "status", "endpoint"); ep != "http://"+name+"."+ns+".example.com" {
		t.Errorf("endpoint %q", ep)
	}
	if workers, _, _ := unstructured.NestedStringSlice(got.Object, "status", "workerNodes"); len(workers) != 1 || workers[0] != "aks-gpu-e2e-0" {
		t.Errorf("workerNodes %v", workers)
	}

	// kubectl delete: the Job and the Knative Service go, capacity is released, then the object.
	if err := wsClient.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the Workspace gone (finalizer released)", func() bool {
		_, err := wsClient.Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	testenv.Eventually(t, 30*time.Second, "the Knative Service and the Job gone", func() bool {
		_, e1 := ksvcs.Get(ctx, name, metav1.GetOptions{})
		j, e2 := admin.BatchV1().Jobs(ns).Get(ctx, job.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(e1) && (apierrors.IsNotFound(e2) || j.DeletionTimestamp != nil)
	})
	rec, err := p.Store.Get(ctx, ns, name)
	if err != nil || rec.Phase != status.Deleted || rec.Released == nil {
		t.Errorf("record after deletion: %+v %v", rec, err)
	}
}

func conditionOf(u *unstructured.Unstructured, typ string) map[string]any {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == typ {
			return m
		}
	}
	return map[string]any{}
}
