package deploy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// The trainer's `pods: patch` reaches only its own pod: admission.yaml's ValidatingAdmissionPolicy,
// installed on a real API server with rbac.yaml, as the trainer's ServiceAccount (impersonated
// with the pod name a pod-bound token carries). Before it, RBAC let the trainer — and the model
// code running beside its token — rewrite every pod of the workspace's namespace.
func TestTrainerMayPatchOnlyItsOwnPod(t *testing.T) {
	if restCfg == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	objs := newObjects(restCfg)
	applyRBAC(t, objs)
	const ns = "admission"
	admin := kubernetes.NewForConfigOrDie(restCfg)
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	installTrainerAccount(t, objs, ns)
	for _, o := range load(t, "knative") {
		if o.file != "admission.yaml" {
			continue
		}
		ri, err := objs.of(o.u)
		if err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		if _, err := ri.Apply(ctx, o.u.GetName(), o.u, metav1.ApplyOptions{FieldManager: "kaitoflow-admission-test", Force: true}); err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		t.Cleanup(func() { _ = ri.Delete(context.Background(), o.u.GetName(), metav1.DeleteOptions{}) })
	}
	for _, name := range []string{"tuning-pod", "someone-else"} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		if _, err := admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	trainer := func(podName string) kubernetes.Interface {
		c := rest.CopyConfig(restCfg)
		c.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":kaitoflow-trainer"}
		if podName != "" {
			c.Impersonate.Extra = map[string][]string{"authentication.kubernetes.io/pod-name": {podName}}
		}
		return kubernetes.NewForConfigOrDie(c)
	}
	patch := func(as kubernetes.Interface, pod string) error {
		_, err := as.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, []byte(`{"metadata":{"annotations":{"kaitoflow.io/progress":"{}"}}}`), metav1.PatchOptions{})
		return err
	}
	// The API server picks a new policy up within a second or two: wait for the first refusal.
	deadline := time.Now().Add(30 * time.Second)
	for err := patch(trainer("tuning-pod"), "someone-else"); err == nil; err = patch(trainer("tuning-pod"), "someone-else") {
		if time.Now().After(deadline) {
			t.Fatal("the trainer patched another pod: the policy never took effect")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := patch(trainer("tuning-pod"), "someone-else"); err == nil || !strings.Contains(err.Error(), "the trainer may change only its own pod") {
		t.Errorf("another pod: %v", err)
	}
	if err := patch(trainer(""), "tuning-pod"); err == nil {
		t.Error("a token bound to no pod patched a pod")
	}
	if err := patch(trainer("tuning-pod"), "tuning-pod"); err != nil {
		t.Errorf("its own pod: %v", err)
	}
	// Anyone else is not the policy's business.
	if err := patch(admin, "someone-else"); err != nil {
		t.Errorf("an administrator: %v", err)
	}
}

// The functions read a workspace's Secrets (push, model access) only in namespaces that grant it
// with rbac.yaml's per-namespace RoleBinding: before, provision, tune and publish could get every
// Secret of the cluster, with the workspace choosing the name and the namespace.
func TestFunctionsReadSecretsOnlyWhereANamespaceGrantsIt(t *testing.T) {
	if restCfg == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	objs := newObjects(restCfg)
	applyRBAC(t, objs)
	admin := kubernetes.NewForConfigOrDie(restCfg)
	for _, ns := range []string{"secrets-granted", "secrets-other-team"} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "acr-push"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	installTrainerAccount(t, objs, "secrets-granted")
	for _, sa := range []string{"kaitoflow-provision", "kaitoflow-tune", "kaitoflow-publish", "kaitoflow-serve", "kaitoflow-controller", "kaitoflow-sources"} {
		c := kubernetes.NewForConfigOrDie(as(restCfg, sa))
		_, err := c.CoreV1().Secrets("secrets-granted").Get(ctx, "acr-push", metav1.GetOptions{})
		if reads := sa == "kaitoflow-provision" || sa == "kaitoflow-tune" || sa == "kaitoflow-publish"; reads && err != nil {
			t.Errorf("%s cannot read a granted namespace's Secret: %v", sa, err)
		} else if !reads && !apierrors.IsForbidden(err) {
			t.Errorf("%s reads Secrets it has no use for: %v", sa, err)
		}
		if _, err := c.CoreV1().Secrets("secrets-other-team").Get(ctx, "acr-push", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("%s reads a Secret of a namespace that granted nothing: %v", sa, err)
		}
	}
	// publish, handed a workspace of that namespace, fails it at once and says how to grant.
	ws, _ := testenv.Seed(t, "secrets-other-team")
	_, err := registryauth.Secrets{Read: secretsAs(t, restCfg, "kaitoflow-publish")}.For(ctx, ws)
	if perr, ok := events.AsPermanent(err); !ok || !strings.Contains(err.Error(), "kaitoflow-workspace-secrets") {
		t.Errorf("want a permanent refusal that names the grant, got %v (%+v)", err, perr)
	}
}
