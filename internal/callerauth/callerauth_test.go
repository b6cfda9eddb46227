package callerauth

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
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
	reviews, err := kubeclient.New(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingReviewer{Reviewer: reviews}
	callers, err := New(counted, audience, []string{"system:serviceaccount:kaitoflow:" + trigger, "system:serviceaccount:kaitoflow:sources-*"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	triggerToken := token(trigger, audience)
	srv := httptest.NewServer(callers.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) })))
	defer srv.Close()

	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"the Trigger's token", triggerToken, http.StatusAccepted},
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
	// A token the API server reviewed is remembered for a while: the Trigger's next deliveries
	// do not ask again.
	before := counted.count()
	for range 3 {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, nil)
		req.Header.Set("Authorization", "Bearer "+triggerToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("%d, want 202", resp.StatusCode)
		}
	}
	if got := counted.count(); got != before {
		t.Errorf("%d more reviews for a token reviewed already", got-before)
	}
}

// countingReviewer counts the reviews that reach the API server.
type countingReviewer struct {
	Reviewer
	mu sync.Mutex
	n  int
}

func (c *countingReviewer) ReviewToken(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.Reviewer.ReviewToken(ctx, token, audiences)
}

func (c *countingReviewer) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// An API server that cannot be asked is not a refusal: the sender gets a 503 and retries (a 401
// would send a good event to the dead letters), and nothing is cached.
func TestAnUnreachableAPIServerIsRetryable(t *testing.T) {
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	defer down.Close()
	reviews, err := kubeclient.New(&rest.Config{Host: down.URL})
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingReviewer{Reviewer: reviews}
	callers, err := New(counted, "aud", []string{"system:serviceaccount:ns:sa"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h := callers.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	for range 2 {
		req := httptest.NewRequest(http.MethodPost, "/", nil)
		req.Header.Set("Authorization", "Bearer some-token")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%d %s, want 503", rec.Code, rec.Body)
		}
	}
	// Three tries per request (the backoff's steps), and the failure is not remembered.
	if got := counted.count(); got != 6 {
		t.Errorf("%d reviews, want 6", got)
	}
}

func TestBearer(t *testing.T) {
	for _, tc := range []struct {
		header, want string
		ok           bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer  abc ", "abc", true},
		{"Basic abc", "", false},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"", "", false},
	} {
		if got, ok := bearer(tc.header); got != tc.want || ok != tc.ok {
			t.Errorf("bearer(%q) = %q, %v; want %q, %v", tc.header, got, ok, tc.want, tc.ok)
		}
	}
}

func TestNewRefusesAnOpenDoor(t *testing.T) {
	// A reviewer that is there, so that only the subjects and the audience can be refused.
	reviews := &countingReviewer{}
	if _, err := New(reviews, "aud", []string{"system:serviceaccount:ns:sa", "system:serviceaccount:ns:*"}, nil); err != nil {
		t.Fatalf("a good configuration refused: %v", err)
	}
	for _, allowed := range [][]string{nil, {""}, {"*"}, {"system:*:x"}} {
		if _, err := New(reviews, "aud", allowed, nil); err == nil {
			t.Errorf("allowed %q accepted", allowed)
		}
	}
	if _, err := New(reviews, "", []string{"u"}, nil); err == nil {
		t.Error("no audience accepted")
	}
	if _, err := New(nil, "aud", []string{"u"}, nil); err == nil {
		t.Error("no token reviews accepted")
	}
}

func isExists(err error) bool { return apierrors.IsAlreadyExists(err) }
