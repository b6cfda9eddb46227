package kubeclient_test

import (
	"context"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/types"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// Against a real API server, with the generated clientset as the reference: what the typed
// clients read is what the clientset wrote (core and batch), a missing object is the API server's
// NotFound, a merge patch keeps a Pod's other annotations, a list selects by label, and a token
// review answers for the audience asked.
func TestTheNarrowClientAgainstTheAPIServer(t *testing.T) {
	env := testenv.API(t)
	ctx := context.Background()
	ref, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubeclient.New(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "team"
	if _, err := ref.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ref.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "push"}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{}}`)}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ref.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "tuning"},
		Data: map[string]string{"training_config.yaml": "a: 1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	s, err := c.Secrets(ns).Get(ctx, "push", metav1.GetOptions{})
	if err != nil || s.Type != corev1.SecretTypeDockerConfigJson || string(s.Data[corev1.DockerConfigJsonKey]) != `{"auths":{}}` {
		t.Fatalf("Secret = %+v, %v", s, err)
	}
	cm, err := c.ConfigMaps(ns).Get(ctx, "tuning", metav1.GetOptions{})
	if err != nil || cm.Data["training_config.yaml"] != "a: 1" {
		t.Fatalf("ConfigMap = %+v, %v", cm, err)
	}
	// Update writes at the object's resourceVersion: a stale one is the API server's Conflict.
	cm.Data["training_config.yaml"] = "a: 2"
	updated, err := c.ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
	if err != nil || updated.Data["training_config.yaml"] != "a: 2" {
		t.Fatalf("Update = %+v, %v", updated, err)
	}
	if _, err := c.ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Errorf("an update at a stale resourceVersion: %v, want Conflict", err)
	}
	if err := c.ConfigMaps(ns).Delete(ctx, "tuning", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, get := range map[string]func() error{
		"Secret":    func() error { _, err := c.Secrets(ns).Get(ctx, "absent", metav1.GetOptions{}); return err },
		"ConfigMap": func() error { _, err := c.ConfigMaps(ns).Get(ctx, "tuning", metav1.GetOptions{}); return err },
		"Job":       func() error { _, err := c.Jobs(ns).Get(ctx, "absent", metav1.GetOptions{}); return err },
	} {
		if err := get(); !apierrors.IsNotFound(err) {
			t.Errorf("a missing %s: %v, want NotFound", name, err)
		}
	}

	pod, err := ref.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "trainer", Annotations: map[string]string{"keep": "me"},
		Labels: map[string]string{"role": "trainer"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	patch := []byte(`{"metadata":{"annotations":{"kaitoflow.io/progress":"{\"step\":3}"}}}`)
	if _, err := c.Pods(ns).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if l, err := c.Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "role=trainer"}); err != nil || len(l.Items) != 1 || l.Items[0].Name != pod.Name {
		t.Errorf("pods role=trainer: %+v, %v", l, err)
	}
	if l, err := c.Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "role=other"}); err != nil || len(l.Items) != 0 {
		t.Errorf("pods role=other: %+v, %v", l, err)
	}
	got, err := ref.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Annotations["kaitoflow.io/progress"] != `{"step":3}` || got.Annotations["keep"] != "me" {
		t.Errorf("annotations after the patch: %v", got.Annotations)
	}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "tune"}, Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "c", Image: "i"}}}}}}
	if _, err := c.Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if j, err := ref.BatchV1().Jobs(ns).Get(ctx, "tune", metav1.GetOptions{}); err != nil || j.Spec.Template.Spec.Containers[0].Image != "i" {
		t.Errorf("the Job the typed client created: %+v, %v", j, err)
	}

	if _, err := ref.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "caller"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := ref.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "caller", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"fn"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.ReviewToken(ctx, tr.Status.Token, []string{"fn"})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Authenticated || st.User.Username != "system:serviceaccount:team:caller" || len(st.Audiences) != 1 || st.Audiences[0] != "fn" {
		t.Errorf("review for the token's audience: %+v", st)
	}
	if st, err = c.ReviewToken(ctx, tr.Status.Token, []string{"another"}); err != nil || st.Authenticated {
		t.Errorf("review for another audience: %+v, %v", st, err)
	}
}
