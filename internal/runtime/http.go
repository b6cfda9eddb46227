package runtime

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// HTTP runs a function behind a CloudEvents HTTP receiver (binary and structured mode), as a
// Knative Service behind a Trigger. It answers 2xx only after the handler's outputs are stored
// by the Publisher, 5xx when a retry may help, and 4xx when it cannot, so the Trigger's retry and
// dead-letter policy applies. Before a 4xx it stores workspace.failed itself: the broker's dead
// letter sink alone would leave the workspace's status waiting forever.
type HTTP struct {
	core *core
}

// NewHTTP returns the HTTP transport for fn.
func NewHTTP(fn Function, d Deps) (*HTTP, error) {
	c, err := newCore(fn, d)
	if err != nil {
		return nil, err
	}
	return &HTTP{core: c}, nil
}

type httpError struct {
	Reason string `json:"reason"`
	Error  string `json:"error"`
}

// ServeHTTP implements http.Handler.
func (h *HTTP) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	c := h.core
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST a CloudEvent", http.StatusMethodNotAllowed)
		return
	}
	req.Body = http.MaxBytesReader(w, req.Body, events.MaxEventSize)
	ev, err := cehttp.NewEventFromHTTPRequest(req)
	if err == nil {
		err = ev.Validate()
	}
	if err != nil {
		c.log.Warn("undecodable event", "err", err)
		perr := &events.PermanentError{Reason: events.ReasonBadEvent, Err: err}
		h.refuse(w, req, nil, req.Header.Get("Ce-Subject"), perr)
		return
	}
	log := c.log.With("workspace", ev.Subject(), "event_id", ev.ID(), "event_type", ev.Type())
	if !c.fn.Accepts(ev.Type()) {
		pe := &events.PermanentError{Reason: events.ReasonUnknownType, Err: fmt.Errorf("function %s does not handle %s", c.fn.Name, ev.Type())}
		h.refuse(w, req, ev, ev.Subject(), pe)
		return
	}
	ctx := logctx.With(req.Context(), slog.String("workspace", ev.Subject()), slog.String("event_id", ev.ID()))
	err = c.run(ctx, *ev, log)
	if err == nil {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if perr, ok := events.AsPermanent(err); ok {
		log.Error("permanent failure", "reason", perr.Reason, "err", perr.Err)
		c.metrics.failed.WithLabelValues(c.fn.Name, ev.Type(), "permanent").Inc()
		h.refuse(w, req, ev, ev.Subject(), perr)
		return
	}
	log.Warn("retryable failure", "err", err)
	c.metrics.failed.WithLabelValues(c.fn.Name, ev.Type(), "retryable").Inc()
	writeJSON(w, http.StatusServiceUnavailable, httpError{Reason: "Retryable", Error: err.Error()})
}

func (h *HTTP) refuse(w http.ResponseWriter, req *http.Request, ev *cloudevents.Event, subject string, perr *events.PermanentError) {
	c := h.core
	if failed, ok := c.failureEvent(ev, subject, perr, 0); ok {
		if err := c.pub.Publish(req.Context(), failed); err != nil {
			// Not recorded yet: ask for a retry rather than lose the failure.
			writeJSON(w, http.StatusServiceUnavailable, httpError{Reason: "Retryable", Error: "record failure: " + err.Error()})
			return
		}
	}
	status := http.StatusUnprocessableEntity
	if perr.Reason == events.ReasonBadEvent || perr.Reason == events.ReasonUnknownType {
		status = http.StatusBadRequest
	}
	writeJSON(w, status, httpError{Reason: perr.Reason, Error: perr.Err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
