// Package api is kaitoflow's HTTP API: submit, list, get, watch and delete workspaces, and submit
// and list the ConfigMaps they name. It is what the CLI talks to in the embedded mode, and what a
// platform's own tooling can call.
package api

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// Source is the CloudEvents source of events the API emits.
const Source = "kaitoflow/api"

// Server serves the API.
type Server struct {
	Store     *status.Store
	Publisher events.Publisher
	Policy    netguard.AddressPolicy
	Log       *slog.Logger
	// Tracer starts each workspace's trace at submit; nil carries an incoming traceparent only.
	Tracer trace.TracerProvider
	// Plan is provision's fit check, run at submit: a workspace it refuses is answered 422 with
	// the field, not accepted to fail later.
	Plan func(ctx context.Context, ws *kaito.Workspace) (*events.Plan, error)
	// BodyTimeout is how long a request's body may take to arrive; BodyReadTimeout when zero.
	BodyTimeout time.Duration
	// Logs reads a workspace's trainer output (GET /v1/workspaces/{name}/logs); nil answers 501.
	Logs tune.Logs
	// MaxWatches bounds the watch streams open at once (a workspace's events, a list's
	// ?watch=true): each holds a JetStream watcher until its client leaves, so a client that
	// opens them without end would hold the server's memory. One more is answered 429.
	// DefaultMaxWatches when zero or less.
	MaxWatches int

	watches atomic.Int64
}

// DefaultMaxWatches is Server.MaxWatches' default: far more terminals and dashboards than one
// installation has, far fewer watchers than a server's memory holds.
const DefaultMaxWatches = 256

// FieldError is one validation problem, as the API returns it.
type FieldError struct {
	Field   string `json:"field"`
	Type    string `json:"type"`
	Message string `json:"message"`
}

// Problem is the body of every 4xx/5xx answer.
type Problem struct {
	Error  string       `json:"error"`
	Fields []FieldError `json:"fields,omitempty"`
}

// SubmitResult is the body of a successful submit.
type SubmitResult struct {
	Workspace status.Workspace `json:"workspace"`
	// Unchanged is true when the same spec was already submitted: nothing new was started.
	Unchanged bool `json:"unchanged"`
	// DryRun is true when the manifest was only validated (?dryRun=true).
	DryRun bool `json:"dryRun,omitempty"`
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/workspaces", s.submit)
	mux.HandleFunc("GET /v1/workspaces", s.list)
	mux.HandleFunc("GET /v1/workspaces/{name}", s.get)
	mux.HandleFunc("GET /v1/workspaces/{name}/events", s.watch)
	mux.HandleFunc("GET /v1/workspaces/{name}/logs", s.logs)
	mux.HandleFunc("DELETE /v1/workspaces/{name}", s.delete)
	mux.HandleFunc("POST /v1/workspaces/{name}/rollback", s.rollback)
	mux.HandleFunc("POST /v1/configmaps", s.submitConfigMap)
	mux.HandleFunc("GET /v1/configmaps", s.listConfigMaps)
	mux.HandleFunc("GET /v1/configmaps/{name}", s.getConfigMap)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A body has BodyReadTimeout to arrive whole: a client that opens requests and trickles
		// their bodies cannot hold the server's connections. Not a server-wide ReadTimeout, which
		// would also end the long-lived watch streams.
		if r.Body != nil && r.Body != http.NoBody {
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(cmp.Or(s.BodyTimeout, BodyReadTimeout)))
		}
		if ns := r.URL.Query().Get("namespace"); ns != "" {
			if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
				fe := field.Invalid(field.NewPath("namespace"), ns, strings.Join(msgs, "; "))
				writeJSON(w, http.StatusBadRequest, Problem{Error: fe.Error(), Fields: []FieldError{{Field: fe.Field, Type: string(fe.Type),
					Message: fe.Error()}}})
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// readBody reads a request's body up to the largest event, answering for it when it cannot: 413
// for a body over the bound, 408 for one that did not arrive within the body timeout, 400 else.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, events.MaxEventSize))
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil:
		return body, true
	case errors.As(err, &tooLarge):
		writeJSON(w, http.StatusRequestEntityTooLarge, Problem{Error: fmt.Sprintf("the body is over %d bytes", tooLarge.Limit)})
	case errors.Is(err, os.ErrDeadlineExceeded):
		writeJSON(w, http.StatusRequestTimeout, Problem{Error: fmt.Sprintf("the body did not arrive within %s", cmp.Or(s.BodyTimeout, BodyReadTimeout))})
	default:
		writeJSON(w, http.StatusBadRequest, Problem{Error: "reading the body: " + err.Error()})
	}
	return nil, false
}

// BodyReadTimeout bounds how long a request's body may take to arrive (Server.BodyTimeout).
const BodyReadTimeout = 30 * time.Second

// RequireToken serves next only to requests carrying token as their bearer token; an empty token
// admits every request. `up` wraps every route it serves in it (the API, the sim's inference
// endpoints and /metrics alike), so one token decides who may call any of them.
func RequireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="kaitoflow"`)
			writeJSON(w, http.StatusUnauthorized, Problem{Error: "missing or wrong bearer token (kaitoflow --token-file, or KAITOFLOW_TOKEN)"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func namespace(r *http.Request) string {
	if ns := r.URL.Query().Get("namespace"); ns != "" {
		return ns
	}
	return kaito.DefaultNamespace
}

// listNamespace is the namespace a list asks for: "" for allNamespaces, else namespace(r).
func listNamespace(r *http.Request) string {
	if r.URL.Query().Get("allNamespaces") != "" {
		return ""
	}
	return namespace(r)
}

func (s *Server) submit(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	// One workspace per request: a stream of several would have its first admitted and the rest
	// silently dropped (the CLI sends each document of a file on its own).
	if docs, err := kaito.SplitYAML(body); err == nil && len(docs) > 1 {
		writeJSON(w, http.StatusUnprocessableEntity, Problem{Error: fmt.Sprintf("the body holds %d YAML documents; submit one workspace per request",
			len(docs))})
		return
	}
	// A Workspace, or an InferenceSet served as the workspace it becomes.
	ws, err := kaito.DecodeManifest(body)
	var fields *kaito.FieldsError
	switch {
	case errors.As(err, &fields):
		writeInvalid(w, strings.ToLower(fields.Kind), cmp.Or(fields.Namespace, namespace(r)), fields.Name, fields.Errs)
		return
	case err != nil:
		writeJSON(w, http.StatusBadRequest, Problem{Error: err.Error()})
		return
	}
	if ws.Namespace == "" {
		ws.Namespace = namespace(r)
	}
	if ws.APIVersion == "" {
		ws.APIVersion, ws.Kind = kaito.APIVersion, kaito.Kind
	}
	if r.URL.Query().Get("dryRun") == "true" {
		// Validation only: a dry run precedes the ConfigMaps of the same file being stored (the
		// CLI checks every document first), so the fit check, which reads them, waits for the
		// submit itself.
		dry := s.submitter()
		dry.Plan = nil
		var invalid *ingress.InvalidError
		if err := dry.Check(r.Context(), ws); errors.As(err, &invalid) {
			writeInvalid(w, "workspace", invalid.Namespace, invalid.Name, invalid.Fields)
			return
		}
		writeJSON(w, http.StatusOK, SubmitResult{Workspace: status.Workspace{Namespace: ws.Namespace, Name: ws.Name, Phase: status.Pending}, DryRun: true})
		return
	}
	ctx, span := s.tracer().Start(s.traceContext(r), "submit workspace", trace.WithSpanKind(trace.SpanKindProducer))
	res, err := s.submitter().Submit(ctx, ws, "")
	span.End()
	var invalid *ingress.InvalidError
	switch {
	case errors.As(err, &invalid):
		writeInvalid(w, "workspace", invalid.Namespace, invalid.Name, invalid.Fields)
		return
	case err != nil:
		s.Log.Error("submit workspace", "workspace", ws.Namespace+"/"+ws.Name, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
		return
	}
	rec, fresh := res.Workspace, res.Fresh
	s.Log.Info("workspace submitted", "workspace", res.Event.Subject(), "generation", rec.Generation, "event_id", res.Event.ID(), "unchanged", !fresh)
	code := http.StatusAccepted
	if !fresh {
		code = http.StatusOK
	}
	writeJSON(w, code, SubmitResult{Workspace: *rec, Unchanged: !fresh})
}

func (s *Server) submitter() *ingress.Submitter {
	return &ingress.Submitter{Store: s.Store, Publisher: s.Publisher, Policy: s.Policy, Source: Source, Plan: s.Plan}
}

func writeInvalid(w http.ResponseWriter, kind, namespace, name string, errs field.ErrorList) {
	p := Problem{Error: fmt.Sprintf("%s %s/%s is invalid", kind, namespace, name)}
	for _, fe := range errs {
		p.Fields = append(p.Fields, FieldError{Field: fe.Field, Type: string(fe.Type), Message: fe.Error()})
	}
	writeJSON(w, http.StatusUnprocessableEntity, p)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("watch") == "true" {
		// kubectl's ?watch=true: every record of the namespace (or all) as it changes.
		if !s.openWatch(w) {
			return
		}
		defer s.watches.Add(-1)
		updates, err := s.Store.WatchNamespace(r.Context(), listNamespace(r))
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
			return
		}
		stream(w, r, updates, liveOnly())
		return
	}
	l, err := s.Store.List(r.Context(), listNamespace(r))
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
		return
	}
	if l == nil {
		l = []status.Workspace{}
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	if rec, ok := s.record(w, r, namespace(r), r.PathValue("name")); ok {
		writeJSON(w, http.StatusOK, rec)
	}
}

// record is the workspace's status record; when there is none (or it is deleted), or the store
// cannot be read, it answers the request itself and reports false.
func (s *Server) record(w http.ResponseWriter, r *http.Request, ns, name string) (*status.Workspace, bool) {
	rec, err := s.Store.Get(r.Context(), ns, name)
	if errors.Is(err, status.ErrNotFound) || (err == nil && rec.Phase == status.Deleted) {
		writeJSON(w, http.StatusNotFound, Problem{Error: fmt.Sprintf("workspace %s/%s not found", ns, name)})
		return nil, false
	}
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
		return nil, false
	}
	return rec, true
}

// logs streams the trainer's output of the workspace's generation (?attempt=N, the newest when
// absent), as text; ?follow=true keeps the stream open while the attempt runs.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	if s.Logs == nil {
		writeJSON(w, http.StatusNotImplemented, Problem{Error: "this server's trainer keeps no logs"})
		return
	}
	q := r.URL.Query()
	attempt, err := strconv.Atoi(cmp.Or(q.Get("attempt"), "0"))
	if err != nil || attempt < 0 {
		writeJSON(w, http.StatusBadRequest, Problem{Error: fmt.Sprintf("attempt %q: want a positive number", q.Get("attempt"))})
		return
	}
	follow := q.Get("follow") == "true"
	rec, ok := s.record(w, r, namespace(r), r.PathValue("name"))
	if !ok {
		return
	}
	ref := events.Ref{Namespace: rec.Namespace, Name: rec.Name, Generation: rec.Generation}
	// The first write commits the answer: until then a missing log is still a 404.
	out := &lazyText{w: w}
	err = s.Logs(r.Context(), ref, attempt, follow, out)
	switch {
	case errors.Is(err, tune.ErrNoLogs) && !out.started:
		writeJSON(w, http.StatusNotFound, Problem{Error: err.Error()})
	case err != nil && !out.started:
		writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
	case err != nil:
		// The answer is already 200: the reader learns of the cut from the stream itself.
		logctx.Or(s.Log).WarnContext(r.Context(), "logs stream ended", "workspace", ref.Subject(), "err", err)
		_, _ = fmt.Fprintf(out, "\n[kaitoflow: the log stream ended early: %v]\n", err)
	case !out.started:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
	}
}

// lazyText answers 200 text/plain at its first write and flushes every write, so a followed log
// arrives as the trainer writes it.
type lazyText struct {
	w       http.ResponseWriter
	started bool
}

func (l *lazyText) Write(p []byte) (int, error) {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		l.w.WriteHeader(http.StatusOK)
	}
	n, err := l.w.Write(p)
	_ = http.NewResponseController(l.w).Flush()
	return n, err
}

// watch streams the record each time it changes (stream).
func (s *Server) watch(w http.ResponseWriter, r *http.Request) {
	ns, name := namespace(r), r.PathValue("name")
	if _, err := s.Store.Get(r.Context(), ns, name); err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, status.ErrNotFound) {
			code = http.StatusNotFound
		}
		writeJSON(w, code, Problem{Error: err.Error()})
		return
	}
	if !s.openWatch(w) {
		return
	}
	defer s.watches.Add(-1)
	updates, err := s.Store.Watch(r.Context(), ns, name)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
		return
	}
	stream(w, r, updates, nil)
}

// openWatch counts one more watch stream, or answers 429 when MaxWatches are open; the caller
// counts it off when the stream ends.
func (s *Server) openWatch(w http.ResponseWriter) bool {
	limit := int64(DefaultMaxWatches)
	if s.MaxWatches > 0 {
		limit = int64(s.MaxWatches)
	}
	if s.watches.Add(1) > limit {
		s.watches.Add(-1)
		w.Header().Set("Retry-After", "5")
		msg := fmt.Sprintf("%d watch streams are open, the most this server keeps; close one or retry", limit)
		writeJSON(w, http.StatusTooManyRequests, Problem{Error: msg})
		return false
	}
	return true
}

// liveOnly keeps what a list shows: a deleted workspace's record (the store keeps it, with its
// generation) only as the change of one the stream has shown, never among the current ones.
func liveOnly() func(status.Workspace) bool {
	shown := map[string]bool{}
	return func(rec status.Workspace) bool {
		k := status.Key(rec.Namespace, rec.Name)
		if rec.Phase != status.Deleted {
			shown[k] = true
			return true
		}
		was := shown[k]
		delete(shown, k)
		return was
	}
}

// stream sends each record from updates that keep keeps (every one when keep is nil) as a
// server-sent event ("event: status"), and a comment every 15s so proxies keep the connection
// open, until the request or updates end.
func stream(w http.ResponseWriter, r *http.Request, updates <-chan status.Workspace, keep func(status.Workspace) bool) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeJSON(w, http.StatusInternalServerError, Problem{Error: "streaming unsupported"})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepalive.C:
			_, _ = io.WriteString(w, ": keepalive\n\n")
			flusher.Flush()
		case rec, ok := <-updates:
			if !ok {
				return
			}
			if keep != nil && !keep(rec) {
				continue
			}
			b, _ := json.Marshal(rec)
			_, _ = fmt.Fprintf(w, "event: status\ndata: %s\n\n", b)
			flusher.Flush()
		}
	}
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	ns, name := namespace(r), r.PathValue("name")
	rec, ok := s.record(w, r, ns, name)
	if !ok {
		return
	}
	ref := events.Ref{Namespace: ns, Name: name, Generation: rec.Generation}
	ev, err := events.New(Source, events.WorkspaceDeleted, events.WorkspaceDeleted, ref, events.WorkspaceDeletedData{Ref: ref}, nil)
	if err == nil {
		ctx, span := s.tracer().Start(s.traceContext(r), "delete workspace", trace.WithSpanKind(trace.SpanKindProducer))
		err = tracingPublisher{s.Publisher}.Publish(ctx, ev)
		span.End()
	}
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
		return
	}
	s.Log.Info("workspace deleted", "workspace", ref.String())
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) tracer() trace.Tracer {
	tp := s.Tracer
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	return tp.Tracer("github.com/kaitoflow/kaitoflow/internal/compose/api")
}

// traceContext continues the caller's trace when the request carries a traceparent header.
func (s *Server) traceContext(r *http.Request) context.Context {
	return propagation.TraceContext{}.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// RollbackRequest is the body of POST /v1/workspaces/{name}/rollback.
type RollbackRequest struct {
	// Generation whose adapter to serve; 0: the newest pushed before the one serving now.
	Generation int64 `json:"generation,omitempty"`
	// Reason is "rollback" (the default) or "promote": a held adapter served after all.
	Reason string `json:"reason,omitempty"`
	// Checkpoint is the step of the generation's checkpoint to serve (0: its final adapter).
	Checkpoint int `json:"checkpoint,omitempty"`
}

// rollback asks serve to serve an earlier generation's adapter, live in the running replicas. It
// answers 202 with the record; the record's servingGeneration changes once the replicas serve it.
func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	ns, name := namespace(r), r.PathValue("name")
	var req RollbackRequest
	if r.ContentLength != 0 {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, Problem{Error: `body must be JSON {"generation": N}: ` + err.Error()})
			return
		}
	}
	if req.Reason != "" && req.Reason != "rollback" && req.Reason != "promote" {
		writeJSON(w, http.StatusBadRequest, Problem{Error: "reason: want rollback or promote", Fields: []FieldError{{Field: "reason",
			Type: "FieldValueNotSupported", Message: req.Reason}}})
		return
	}
	if req.Checkpoint < 0 || (req.Checkpoint > 0 && req.Generation == 0) {
		writeJSON(w, http.StatusBadRequest, Problem{Error: "checkpoint: a step of a generation named", Fields: []FieldError{{Field: "checkpoint",
			Type: "FieldValueInvalid", Message: "a positive step, with the generation whose checkpoint it is"}}})
		return
	}
	if req.Reason == "promote" && req.Generation == 0 {
		writeJSON(w, http.StatusBadRequest, Problem{Error: "generation: required to promote", Fields: []FieldError{{Field: "generation",
			Type: "FieldValueRequired", Message: "the generation whose adapter to serve"}}})
		return
	}
	rec, ok := s.record(w, r, ns, name)
	if !ok {
		return
	}
	ctx, span := s.tracer().Start(s.traceContext(r), "roll back workspace", trace.WithSpanKind(trace.SpanKindProducer))
	target, err := ingress.Rollback(ctx, tracingPublisher{s.Publisher}, Source, rec, req.Generation, req.Checkpoint,
		strconv.FormatInt(time.Now().UnixNano(), 10), req.Reason)
	span.End()
	var refused *ingress.RollbackRefused
	switch {
	case errors.As(err, &refused):
		writeJSON(w, http.StatusConflict, Problem{Error: err.Error(), Fields: []FieldError{{Field: "generation", Type: "FieldValueInvalid",
			Message: err.Error()}}})
		return
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
		return
	}
	s.Log.Info("rollback requested", "workspace", ns+"/"+name, "to", target.Generation, "image", target.Image)
	writeJSON(w, http.StatusAccepted, rec)
}

// tracingPublisher carries the request's trace on what it publishes.
type tracingPublisher struct{ events.Publisher }

func (p tracingPublisher) Publish(ctx context.Context, evs ...cloudevents.Event) error {
	for i := range evs {
		runtime.InjectTrace(ctx, &evs[i])
	}
	return p.Publisher.Publish(ctx, evs...)
}
