// Package callerauth says who may call a function over HTTP: a caller presents a Kubernetes
// ServiceAccount token (Knative Eventing's OIDC sends one per Trigger, minted for the audience the
// Trigger names), the API server vouches for it in a TokenReview for that audience, and the
// token's subject must be one the function was told to accept. Without this, any pod that reaches
// a function's Service could hand it a workspace.requested of its own making.
package callerauth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
)

// Reviewer asks the API server who presented a token, for audiences: a TokenReview
// (internal/kubeclient's Client is one).
type Reviewer interface {
	ReviewToken(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error)
}

// How long a review is trusted: a token the API server vouched for for a minute (Knative's
// tokens live an hour), a refused one for ten seconds. At most cached tokens are remembered,
// by their SHA-256, never the token itself.
const (
	admittedFor = time.Minute
	refusedFor  = 10 * time.Second
	cached      = 4096
	// reviewTimeout bounds a token's review, its retries included.
	reviewTimeout = 10 * time.Second
)

// Callers admits requests from the allowed subjects only.
type Callers struct {
	reviews  Reviewer
	audience string
	allowed  []string
	log      *slog.Logger
	seen     *cache.LRUExpireCache // sha256(token) -> review
}

// review is what the API server said of one token: who presented it, or that nobody it knows did.
type review struct {
	user          string
	authenticated bool
}

// New returns Callers that review tokens for audience with reviews (the function's ServiceAccount
// needs tokenreviews: create), and admit the subjects in allowed: exact user names
// (system:serviceaccount:NS:NAME), or prefixes ending in *.
func New(reviews Reviewer, audience string, allowed []string, log *slog.Logger) (*Callers, error) {
	if audience == "" || len(allowed) == 0 {
		return nil, errors.New("caller authentication needs an audience and at least one allowed subject")
	}
	for _, a := range allowed {
		if a == "" || a == "*" || strings.Contains(strings.TrimSuffix(a, "*"), "*") {
			return nil, fmt.Errorf("allowed caller %q: want a user name, or a prefix ending in * (not * alone)", a)
		}
	}
	if reviews == nil {
		return nil, errors.New("caller authentication needs the API server's token reviews")
	}
	if log == nil {
		log = slog.Default()
	}
	return &Callers{reviews: reviews, audience: audience, allowed: allowed, log: log, seen: cache.NewLRUExpireCache(cached)}, nil
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
// 403 to one from a subject not allowed, 503 when the API server could not be asked (the sender
// retries), and passes the rest to next. None of the answers says more than that: why a token
// failed is logged, not told.
func (c *Callers) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearer(r.Header.Get("Authorization"))
		if !ok {
			c.refuse(w, r, errors.New("no bearer token"))
			return
		}
		rv, err := c.review(r.Context(), token)
		switch {
		case err != nil:
			c.log.Warn("caller not checked: the API server did not answer the token review", "remote", r.RemoteAddr, "err", err)
			w.Header().Set("Retry-After", "1")
			http.Error(w, "the caller's token could not be checked now", http.StatusServiceUnavailable)
		case !rv.authenticated:
			c.refuse(w, r, errors.New("the API server does not vouch for the token for this audience"))
		case !c.Allowed(rv.user):
			c.log.Warn("caller refused: not an allowed subject", "remote", r.RemoteAddr, "user", rv.user)
			http.Error(w, "this caller may not deliver events here", http.StatusForbidden)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func (c *Callers) refuse(w http.ResponseWriter, r *http.Request, why error) {
	c.log.Warn("caller refused: no token the API server vouches for", "remote", r.RemoteAddr, "err", why)
	w.Header().Set("WWW-Authenticate", `Bearer`)
	http.Error(w, "a ServiceAccount token for this function's audience is required", http.StatusUnauthorized)
}

// bearer is the token of an Authorization header "Bearer TOKEN" (the scheme in any case).
func bearer(header string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(header), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}

// review is the API server's word on token for the audience, from the cache while it lasts. A
// review that failed (the API server unreachable, throttling) is retried briefly and not cached.
func (c *Callers) review(ctx context.Context, token string) (review, error) {
	key := sha256.Sum256([]byte(token))
	if v, ok := c.seen.Get(key); ok {
		return v.(review), nil
	}
	ctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	var st *authenticationv1.TokenReviewStatus
	backoff := wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 3}
	err := retry.OnError(backoff, transient, func() error {
		var err error
		st, err = c.reviews.ReviewToken(ctx, token, []string{c.audience})
		return err
	})
	if err != nil {
		return review{}, fmt.Errorf("token review: %w", err)
	}
	// The API server answers with the requested audiences the token is valid for: ours must be
	// among them, or the token was minted for another function.
	rv := review{user: st.User.Username, authenticated: st.Authenticated && slices.Contains(st.Audiences, c.audience)}
	ttl := admittedFor
	if !rv.authenticated {
		ttl = refusedFor
		if st.Error != "" {
			c.log.Debug("token review refused the token", "reason", st.Error)
		}
	}
	c.seen.Add(key, rv, ttl)
	return rv, nil
}

// transient reports whether a failed review is worth asking again: not when the function's own
// identity may not review tokens, nor when the request itself was refused.
func transient(err error) bool {
	return !apierrors.IsForbidden(err) && !apierrors.IsUnauthorized(err) && !apierrors.IsBadRequest(err) &&
		!apierrors.IsInvalid(err) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}
