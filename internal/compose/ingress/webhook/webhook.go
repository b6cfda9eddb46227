// Package webhook is `kaitoflow webhook`: dataset uploads become workspaces. Azure Event Grid
// delivers Microsoft.Storage.BlobCreated (Event Grid or CloudEvents 1.0 schema, single or batched,
// with either schema's handshake); other storage posts a signed {url, sha256} notification. Each
// matching upload becomes kaitoflow.workspace.requested from a workspace template, with the
// upload's URL as tuning.input.urls[0]. The answer is 200 only after JetStream stored the event,
// 4xx for bad or unauthenticated input (Event Grid does not retry those), 503 when the pipeline's
// bus is unavailable (it retries).
package webhook

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/internal/signature"
)

// Labels and annotations on the workspaces the webhook makes.
const (
	// LabelSourceVersion is the upload's version (its sequencer, eTag or sha256). It is part of
	// the spec, so a re-upload is a new generation, while a redelivered event is the same one.
	LabelSourceVersion = "kaitoflow.io/source-version"
	AnnotationSource   = "kaitoflow.io/source"
	AnnotationSHA256   = "kaitoflow.io/source-sha256"
)

// Headers.
const (
	HeaderKey       = "X-Kaitoflow-Key"
	HeaderSignature = signature.Header
)

// Submitter is what the webhook hands workspaces to (*ingress.Submitter).
type Submitter interface {
	Submit(ctx context.Context, ws *kaito.Workspace, origin string) (*ingress.Result, error)
}

// TokenVerifier checks an Entra ID bearer token (an *oidc.IDTokenVerifier).
type TokenVerifier interface {
	Verify(ctx context.Context, raw string) error
}

// Handler serves the webhook.
type Handler struct {
	// Template is the workspace every upload instantiates; it must have a tuning spec.
	Template *kaito.Workspace
	// Container limits Event Grid uploads to one blob container ("" any).
	Container string
	// Suffixes are the accepted blob name endings (".parquet", ".jsonl"); none accepts all.
	Suffixes []string
	// Keys are shared keys, any of which a request may carry in X-Kaitoflow-Key or ?code=.
	Keys []string
	// Verifier, when set, requires an Entra ID bearer token on Event Grid deliveries.
	Verifier TokenVerifier
	// SigningKey signs /upload notifications (signature.Sign: a timestamp and an HMAC-SHA256 of it and the
	// body, in X-Kaitoflow-Signature); empty disables /upload.
	SigningKey []byte
	// ReplayWindow bounds a signed notification's age (and clock skew); default
	// signature.DefaultWindow. Within it a replay submits the same generation again, which changes
	// nothing.
	ReplayWindow time.Duration
	// Now is the clock signatures are checked against; default time.Now.
	Now func() time.Time
	// AllowedRate is what the CloudEvents handshake grants (WebHook-Allowed-Rate); default "*".
	AllowedRate string
	MaxBody     int64
	Submitter   Submitter
	Log         *slog.Logger
}

// Routes returns the webhook's routes: /eventgrid (POST and the OPTIONS handshake), /upload.
func (h *Handler) Routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("OPTIONS /eventgrid", h.handshake)
	mux.HandleFunc("POST /eventgrid", h.eventGrid)
	mux.HandleFunc("POST /upload", h.upload)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	return mux
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func problem(w http.ResponseWriter, code int, msg string) {
	reply(w, code, map[string]string{"error": msg})
}

// authorized checks the shared key and the bearer token, whichever are configured.
func (h *Handler) authorized(r *http.Request) error {
	if len(h.Keys) > 0 {
		got := r.Header.Get(HeaderKey)
		if got == "" {
			got = r.URL.Query().Get("code")
		}
		ok := false
		for _, k := range h.Keys {
			// Constant time in the key's content; every key is compared.
			if subtle.ConstantTimeCompare([]byte(got), []byte(k)) == 1 {
				ok = true
			}
		}
		if !ok {
			return errors.New("missing or wrong key (X-Kaitoflow-Key header or code parameter)")
		}
	}
	if h.Verifier != nil {
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			return errors.New("missing bearer token")
		}
		if err := h.Verifier.Verify(r.Context(), raw); err != nil {
			return errors.New("bearer token refused")
		}
	}
	return nil
}

// handshake is the CloudEvents 1.0 webhook abuse protection: a sender asks, with OPTIONS, whether
// it may deliver here.
func (h *Handler) handshake(w http.ResponseWriter, r *http.Request) {
	if err := h.authorized(r); err != nil {
		problem(w, http.StatusUnauthorized, err.Error())
		return
	}
	origin := r.Header.Get("WebHook-Request-Origin")
	if origin == "" {
		problem(w, http.StatusBadRequest, "WebHook-Request-Origin: required")
		return
	}
	rate := h.AllowedRate
	if rate == "" {
		rate = "*"
	}
	w.Header().Set("WebHook-Allowed-Origin", origin)
	w.Header().Set("WebHook-Allowed-Rate", rate)
	w.Header().Set("Allow", "POST, OPTIONS")
	w.WriteHeader(http.StatusOK)
}

func (h *Handler) body(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	limit := h.MaxBody
	if limit <= 0 {
		limit = 1 << 20
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		problem(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", limit))
		return nil, false
	}
	return b, true
}

func (h *Handler) eventGrid(w http.ResponseWriter, r *http.Request) {
	if err := h.authorized(r); err != nil {
		logctx.Or(h.Log).Warn("webhook: unauthenticated delivery refused", "remote", r.RemoteAddr, "reason", err.Error())
		problem(w, http.StatusUnauthorized, err.Error())
		return
	}
	body, ok := h.body(w, r)
	if !ok {
		return
	}
	d, err := ParseDelivery(r.Header, body)
	if err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return
	}
	if d.ValidationCode != "" {
		logctx.Or(h.Log).Info("webhook: Event Grid subscription validated")
		reply(w, http.StatusOK, map[string]string{"validationResponse": d.ValidationCode})
		return
	}
	var uploads []upload
	for _, e := range d.Events {
		u, ok, why := h.match(e)
		if !ok {
			logctx.Or(h.Log).Debug("webhook: event skipped", "event_id", e.ID, "type", e.Type, "subject", e.Subject, "why", why)
			continue
		}
		// A delivery that pairs a subject with another URL is refused whole: it is not what
		// Event Grid sends.
		if err := e.CheckURL(); err != nil {
			logctx.Or(h.Log).Warn("webhook: delivery refused: an event's url is not its subject's blob", "event_id", e.ID, "remote", r.RemoteAddr, "err", err)
			problem(w, http.StatusBadRequest, err.Error())
			return
		}
		uploads = append(uploads, u)
	}
	h.submitAll(w, r.Context(), uploads)
}

// upload is one dataset that arrived: where, which version, and what names it.
type upload struct {
	url, version, key, sha256 string
}

// dataLakeIncomplete are BlobCreated APIs after which the blob is not yet whole: Data Lake
// announces CreateFile, then FlushWithClose once the data is written.
var dataLakeIncomplete = map[string]bool{"CreateFile": true}

func (h *Handler) match(e BlobEvent) (upload, bool, string) {
	if e.Type != TypeBlobCreated {
		return upload{}, false, "not a BlobCreated event"
	}
	if dataLakeIncomplete[e.Data.API] {
		return upload{}, false, "Data Lake CreateFile: waiting for FlushWithClose"
	}
	container, blob, ok := e.Blob()
	if !ok {
		return upload{}, false, "subject names no blob"
	}
	if h.Container != "" && container != h.Container {
		return upload{}, false, "another container"
	}
	if !h.suffixOK(blob) {
		return upload{}, false, "suffix not accepted"
	}

	version := e.Data.Sequencer
	if version == "" {
		version = strings.Trim(e.Data.ETag, `"`)
	}
	if version == "" {
		version = e.ID
	}
	return upload{url: e.Data.URL, version: version, key: container + "/" + blob}, true, ""
}

func (h *Handler) suffixOK(name string) bool {
	if len(h.Suffixes) == 0 {
		return true
	}
	for _, s := range h.Suffixes {
		if strings.HasSuffix(strings.ToLower(name), strings.ToLower(s)) {
			return true
		}
	}
	return false
}

// notification is the body of a generic upload notification.
type notification struct {
	URL    string `json:"url"`
	SHA256 string `json:"sha256"`
}

var hexSHA256 = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (h *Handler) upload(w http.ResponseWriter, r *http.Request) {
	if len(h.SigningKey) == 0 {
		problem(w, http.StatusNotFound, "upload notifications are not enabled (no signing key)")
		return
	}
	body, ok := h.body(w, r)
	if !ok {
		return
	}
	if err := h.verifySignature(r.Header.Get(HeaderSignature), body); err != nil {
		logctx.Or(h.Log).Warn("webhook: upload notification refused", "remote", r.RemoteAddr, "reason", err.Error())
		problem(w, http.StatusUnauthorized, HeaderSignature+": "+err.Error())
		return
	}
	var n notification
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil {
		problem(w, http.StatusBadRequest, `body must be {"url": "...", "sha256": "..."}: `+err.Error())
		return
	}
	u, err := url.Parse(n.URL)
	switch {
	case n.URL == "" || err != nil || u.Host == "":
		problem(w, http.StatusBadRequest, "url: required, an absolute URL")
		return
	case !hexSHA256.MatchString(n.SHA256):
		problem(w, http.StatusBadRequest, "sha256: required, 64 lowercase hex digits")
		return
	case !h.suffixOK(u.Path):
		problem(w, http.StatusBadRequest, fmt.Sprintf("url: the name must end in one of %v", h.Suffixes))
		return
	}
	h.submitAll(w, r.Context(), []upload{{url: n.URL, version: n.SHA256[:32], key: u.Host + u.Path, sha256: n.SHA256}})
}

func (h *Handler) verifySignature(header string, body []byte) error {
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	return signature.Verify(h.SigningKey, header, body, now(), cmp.Or(h.ReplayWindow, signature.DefaultWindow))
}

// submitAll submits each upload's workspace. Any transient failure answers 503, so the sender
// retries the delivery (the ones already submitted are then recognised by their ids); an invalid
// workspace answers 400 naming the field.
func (h *Handler) submitAll(w http.ResponseWriter, ctx context.Context, uploads []upload) {
	var submitted []string
	var invalid []string
	for _, u := range uploads {
		ws, err := h.workspace(u)
		if err != nil {
			invalid = append(invalid, err.Error())
			continue
		}
		res, err := h.Submitter.Submit(ctx, ws, u.key+"@"+u.version)
		var bad *ingress.InvalidError
		switch {
		case errors.As(err, &bad):
			invalid = append(invalid, bad.Error())
			continue
		case err != nil:
			logctx.Or(h.Log).Error("webhook: the pipeline is unavailable; the sender will retry", "err", err)
			problem(w, http.StatusServiceUnavailable, "the pipeline is unavailable; retry later")
			return
		}
		logctx.Or(h.Log).Info("webhook: workspace submitted for an upload", "workspace", res.Event.Subject(), "generation", res.Workspace.Generation,
			"event_id", res.Event.ID(), "unchanged", !res.Fresh, "source", u.key, "version", u.version)
		submitted = append(submitted, res.Event.Subject())
	}
	if len(invalid) > 0 {
		reply(w, http.StatusBadRequest, map[string]any{"error": strings.Join(invalid, "; "), "submitted": submitted})
		return
	}
	reply(w, http.StatusOK, map[string]any{"submitted": submitted})
}

// workspace instantiates the template for an upload: a name from the blob's path, the upload's
// URL as the only input, its version as a label.
func (h *Handler) workspace(u upload) (*kaito.Workspace, error) {
	b, err := json.Marshal(h.Template)
	if err != nil {
		return nil, err
	}
	var ws kaito.Workspace
	if err := json.Unmarshal(b, &ws); err != nil {
		return nil, err
	}
	if ws.Tuning == nil {
		return nil, errors.New("template: tuning is required")
	}
	ws.Name = Name(h.Template.Name, u.key)
	ws.ResourceVersion, ws.UID, ws.Generation = "", "", 0
	if ws.Labels == nil {
		ws.Labels = map[string]string{}
	}
	ws.Labels[LabelSourceVersion] = labelValue(u.version)
	if ws.Annotations == nil {
		ws.Annotations = map[string]string{}
	}
	ws.Annotations[AnnotationSource] = u.url
	if u.sha256 != "" {
		ws.Annotations[AnnotationSHA256] = u.sha256
	}
	ws.Tuning.Input = &kaito.DataSource{URLs: []string{u.url}}
	return &ws, nil
}

var nonName = regexp.MustCompile(`[^a-z0-9]+`)

// Name derives a workspace name from the template's and the upload's path: readable, a valid
// DNS label, and distinct for distinct paths. A hash of the whole path ends it, 128 bits of it:
// two paths that share a name become one workspace's generations (one team's upload trained on
// as another's), and with the 32 bits this once had, a colliding path took 63,814 tries.
func Name(prefix, key string) string {
	sum := sha256.Sum256([]byte(key))
	hash := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:16]))
	base := path.Base(key)
	if i := strings.IndexByte(base, '.'); i > 0 {
		base = base[:i]
	}
	slug := func(s string, n int) string {
		s = strings.Trim(nonName.ReplaceAllString(strings.ToLower(s), "-"), "-")
		if len(s) > n {
			s = strings.Trim(s[:n], "-")
		}
		return s
	}
	parts := []string{}
	// 26 characters of hash leave 16 + 16 for the readable parts within 60.
	for _, p := range []string{slug(prefix, 16), slug(base, 16), hash} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "-")
}

var nonLabel = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func labelValue(v string) string {
	v = strings.Trim(nonLabel.ReplaceAllString(v, "-"), "-._")
	if len(v) > 63 {
		v = strings.Trim(v[:63], "-._")
	}
	return v
}
