// Package callerauth says who may call a function over HTTP: a caller presents a Kubernetes
// ServiceAccount token (Knative Eventing's OIDC sends one per Trigger, minted for the audience the
// Trigger names), the API server vouches for it in a TokenReview for that audience, and the
// token's subject must be one the function was told to accept. Without this, any pod that reaches
// a function's Service could hand it a workspace.requested of its own making.
package callerauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/request/bearertoken"
	"k8s.io/apiserver/pkg/authentication/token/cache"
	"k8s.io/apiserver/plugin/pkg/authenticator/token/webhook"
	authenticationv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
)

// Callers admits requests from the allowed subjects only.
type Callers struct {
	auth     authenticator.Request
	audience authenticator.Audiences
	allowed  []string
	log      *slog.Logger
}

// New returns Callers that review tokens for audience with reviews (the API server's
// authentication client: the function's ServiceAccount needs tokenreviews: create), and admit the
// subjects in allowed: exact user names (system:serviceaccount:NS:NAME), or prefixes ending in *.
// A token's review is cached for a minute (Knative's tokens live an hour), a refusal for ten
// seconds.
func New(reviews authenticationv1.AuthenticationV1Interface, audience string, allowed []string, log *slog.Logger) (*Callers, error) {
	if audience == "" || len(allowed) == 0 {
		return nil, errors.New("caller authentication needs an audience and at least one allowed subject")
	}
	for _, a := range allowed {
		if a == "" || a == "*" || strings.Contains(strings.TrimSuffix(a, "*"), "*") {
			return nil, fmt.Errorf("allowed caller %q: want a user name, or a prefix ending in * (not * alone)", a)
		}
	}
	noop := webhook.AuthenticatorMetrics{
		RecordRequestTotal:   func(context.Context, string) {},
		RecordRequestLatency: func(context.Context, string, float64) {},
	}
	backoff := wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 3}
	review, err := webhook.NewFromInterface(reviews, authenticator.Audiences{audience}, backoff, 10*time.Second, noop)
	if err != nil {
		return nil, fmt.Errorf("token review: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	auth := bearertoken.New(cache.New(review, false, time.Minute, 10*time.Second))
	return &Callers{auth: auth, audience: authenticator.Audiences{audience}, allowed: allowed, log: log}, nil
}

// Allowed reports whether user may call.
func (c *Callers) Allowed(user string) bool {
	for _, a := range c.allowed {
		if p, ok := strings.CutSuffix(a, "*"); ok && strings.HasPrefix(user, p) || a == user {
			return true
		}
	}
	return false
}

// Wrap answers 401 to a request without a token the API server vouches for (for the audience),
// 403 to one from a subject not allowed, and passes the rest to next. Neither answer says more
// than that: why a token failed is logged, not told.
func (c *Callers) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The review asks for this audience (without it the API server checks its own).
		resp, ok, err := c.auth.AuthenticateRequest(r.WithContext(authenticator.WithAudiences(r.Context(), c.audience)))
		if err != nil || !ok {
			c.log.Warn("caller refused: no token the API server vouches for", "remote", r.RemoteAddr, "err", err)
			w.Header().Set("WWW-Authenticate", `Bearer`)
			http.Error(w, "a ServiceAccount token for this function's audience is required", http.StatusUnauthorized)
			return
		}
		if user := resp.User.GetName(); !c.Allowed(user) {
			c.log.Warn("caller refused: not an allowed subject", "remote", r.RemoteAddr, "user", user)
			http.Error(w, "this caller may not deliver events here", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}
