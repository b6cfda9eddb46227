package callerauth

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// Against a real API server: a ServiceAccount token minted for the function's audience (what
// Knative Eventing's OIDC sends per Trigger) from an allowed subject is let through; no token,
// a forged one, one for another audience, or one of another ServiceAccount is refused.
func TestOnlyAllowedServiceAccountsForTheAudienceMayCall(t *testing.T) {
	env := testenv.API(t)
	ctx := context.Background()
	kube, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "kaitoflow"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token := func(sa, audience string) string {
		t.Helper()
		if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil && !isExists(err) {
			t.Fatal(err)
		}
		tr, err := kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	const audience = "serving.knative.dev/service/kaitoflow/kaitoflow-provision"
	trigger := "kaitoflow-provision-oidc-eventing.knative.dev-trigger"
	callers, err := New(kube.AuthenticationV1(), audience, []string{"system:serviceaccount:kaitoflow:" + trigger, "system:serviceaccount:kaitoflow:sources-*"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(callers.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) })))
	defer srv.Close()

	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"the Trigger's token", token(trigger, audience), http.StatusAccepted},
		{"a prefix-allowed ServiceAccount", token("sources-ping", audience), http.StatusAccepted},
		{"no token", "", http.StatusUnauthorized},
		{"a forged token", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a2FpdG9mbG93OngifQ.c2ln", http.StatusUnauthorized},
		{"another audience", token(trigger, "serving.knative.dev/service/kaitoflow/kaitoflow-tune"), http.StatusUnauthorized},
		{"another ServiceAccount", token("some-pod", audience), http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%d %s, want %d", resp.StatusCode, b, tc.want)
			}
		})
	}
}

func TestNewRefusesAnOpenDoor(t *testing.T) {
	for _, allowed := range [][]string{nil, {""}, {"*"}, {"system:*:x"}} {
		if _, err := New(nil, "aud", allowed, nil); err == nil {
			t.Errorf("allowed %q accepted", allowed)
		}
	}
	if _, err := New(nil, "", []string{"u"}, nil); err == nil {
		t.Error("no audience accepted")
	}
}

func isExists(err error) bool { return apierrors.IsAlreadyExists(err) }
