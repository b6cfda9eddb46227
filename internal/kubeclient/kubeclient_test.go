package kubeclient_test

import (
	"context"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// Against a real API server, with the generated clientset as the reference: what this client
// reads is what the clientset wrote, a missing object is the API server's NotFound, an
// annotation patch keeps the Pod's others, and a token review answers for the audience asked.
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

	s, err := c.Secret(ctx, ns, "push")
	if err != nil || s.Type != corev1.SecretTypeDockerConfigJson || string(s.Data[corev1.DockerConfigJsonKey]) != `{"auths":{}}` {
		t.Fatalf("Secret = %+v, %v", s, err)
	}
	cm, err := c.ConfigMap(ctx, ns, "tuning")
	if err != nil || cm.Data["training_config.yaml"] != "a: 1" {
		t.Fatalf("ConfigMap = %+v, %v", cm, err)
	}
	for name, get := range map[string]func() error{
		"Secret":    func() error { _, err := c.Secret(ctx, ns, "absent"); return err },
		"ConfigMap": func() error { _, err := c.ConfigMap(ctx, ns, "absent"); return err },
	} {
		if err := get(); !apierrors.IsNotFound(err) {
			t.Errorf("a missing %s: %v, want NotFound", name, err)
		}
	}

	pod, err := ref.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "trainer", Annotations: map[string]string{"keep": "me"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AnnotatePod(ctx, ns, pod.Name, map[string]string{"kaitoflow.io/progress": `{"step":3}`}); err != nil {
		t.Fatal(err)
	}
	got, err := ref.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Annotations["kaitoflow.io/progress"] != `{"step":3}` || got.Annotations["keep"] != "me" {
		t.Errorf("annotations after the patch: %v", got.Annotations)
	}
	if err := c.AnnotatePod(ctx, ns, "absent", map[string]string{"a": "b"}); !apierrors.IsNotFound(err) {
		t.Errorf("annotating a missing pod: %v, want NotFound", err)
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
