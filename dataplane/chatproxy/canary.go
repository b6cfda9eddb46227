package chatproxy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
)

// Canary splits a public name's requests between the adapter its route names (the one serving)
// and a candidate: Share percent of them go to Adapter. Every replica decides per request alone,
// by a hash of the caller's header where there is one (so a caller stays with one adapter, on any
// replica) and at random otherwise.
type Canary struct {
	// Adapter is the candidate, one of the set's adapters; Generation the workspace generation it
	// comes from.
	Adapter    string `json:"adapter"`
	Generation int64  `json:"generation"`
	// Share is the percentage of requests it answers, 1 to 99.
	Share int `json:"share"`
	// Start and Ends are the canary's window: at its end the deployer judges it on what the
	// replicas measured (GET /adapters' live numbers).
	Start time.Time `json:"start"`
	Ends  time.Time `json:"ends"`
}

// HeaderCaller names the caller a canary keeps on one adapter: requests with the same value are
// answered by the same adapter (a user's session sees one behaviour, not a mix).
const HeaderCaller = "Kaitoflow-Caller"

// HeaderResponseID carries the id of an answer a canary split, for POST /feedback.
const HeaderResponseID = "Kaitoflow-Response-Id"

// maxRemembered bounds the answers kept for feedback per replica (a ring: the oldest go first).
const maxRemembered = 1 << 16

// maxMeasuredBody bounds how much of an answer that is not streamed is kept to read its usage;
// a longer one is measured without its tokens.
const maxMeasuredBody = 64 << 10

// EndCanary is the set after public's canary ends: the candidate takes the route (promote) or
// goes (rollback), and adapters nothing routes to leave the set. The Version is unchanged: the
// writer of the set moves it on. A set with no canary for public is returned as it is.
func (s AdapterSet) EndCanary(public string, promote bool) AdapterSet {
	c, ok := s.Canaries[public]
	if !ok {
		return s
	}
	out := s
	out.Routes, out.Generations, out.Canaries = maps.Clone(s.Routes), maps.Clone(s.Generations), maps.Clone(s.Canaries)
	delete(out.Canaries, public)
	if len(out.Canaries) == 0 {
		out.Canaries = nil
	}
	if promote {
		out.Routes[public], out.Generations[public] = c.Adapter, c.Generation
	}
	used := map[string]bool{}
	for _, a := range out.Routes {
		used[a] = true
	}
	for _, c := range out.Canaries {
		used[c.Adapter] = true
	}
	out.Adapters = slices.DeleteFunc(slices.Clone(s.Adapters), func(a AdapterSpec) bool { return !used[a.Name] })
	return out
}

// validateCanaries checks that every canary splits a route of the set with another of its adapters.
func (s AdapterSet) validateCanaries() error {
	for public, c := range s.Canaries {
		target, ok := s.Routes[public]
		switch {
		case !ok:
			return fmt.Errorf("adapter set: canaries[%s]: no route of that name", public)
		case !slices.ContainsFunc(s.Adapters, func(a AdapterSpec) bool { return a.Name == c.Adapter }):
			return fmt.Errorf("adapter set: canaries[%s].adapter: %q is not in the set", public, c.Adapter)
		case c.Adapter == target:
			return fmt.Errorf("adapter set: canaries[%s].adapter: %q is the route's own adapter", public, c.Adapter)
		case c.Share < 1 || c.Share > 99:
			return fmt.Errorf("adapter set: canaries[%s].share: %d, want 1 to 99", public, c.Share)
		}
	}
	return nil
}

// liveCanary is what one replica measured of one canary since it loaded it.
type liveCanary struct {
	canary Canary
	mu     sync.Mutex
	live   kaito.CanaryLive
}

// trial is one request a canary split: which adapter answered it, to be measured when it is done.
type trial struct {
	c      *liveCanary
	canary bool
	id     string
	start  time.Time
	rated  bool // guarded by the manager's fb
}

// done records the request's outcome: its status (0: no answer from the model server), the time
// to its first byte and to its end, and its completion tokens (-1: unknown).
func (t *trial) done(status int, first, total time.Duration, tokens int64) {
	if t == nil {
		return
	}
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	arm := &t.c.live.Stable
	if t.canary {
		arm = &t.c.live.Canary
	}
	arm.Requests++
	if status == 0 || status >= http.StatusInternalServerError {
		arm.Errors++
		return
	}
	arm.FirstTokenSeconds += first.Seconds()
	if tokens >= 0 && total > 0 {
		arm.Tokens += tokens
		arm.TokenSeconds += total.Seconds()
	}
}

// pick is the adapter that answers a request for model now, and the canary trial it is part of
// (nil where model has no canary). caller keeps a caller on one adapter (HeaderCaller).
func (m *AdapterManager) pick(model, caller string) (string, *trial) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	target, ok := m.applied.Routes[model]
	if !ok {
		return model, nil
	}
	c := m.live[model]
	if c == nil {
		return target, nil
	}
	t := &trial{c: c, start: time.Now(), id: responseID()}
	if inShare(caller, c.canary.Share) {
		t.canary, target = true, c.canary.Adapter
	}
	return target, t
}

// inShare decides whether a request is the canary's: by the caller's hash where one is named (the
// same answer on every replica), else at random.
func inShare(caller string, share int) bool {
	if caller == "" {
		return mrand.IntN(100) < share //nolint:gosec // a traffic split, not a secret
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(caller))
	return int(h.Sum64()%100) < share
}

func responseID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// syncLive keeps the measurements of canaries set still runs and starts those of new ones;
// called with m.mu held, as set becomes the applied one.
func (m *AdapterManager) syncLive(set AdapterSet) {
	live := map[string]*liveCanary{}
	for public, c := range set.Canaries {
		if have := m.live[public]; have != nil && have.canary == c {
			live[public] = have
			continue
		}
		live[public] = &liveCanary{canary: c}
	}
	m.live = live
}

// remember keeps t's answer for feedback, the oldest going once maxRemembered are kept.
func (m *AdapterManager) remember(t *trial) {
	m.fb.Lock()
	defer m.fb.Unlock()
	if m.answers == nil {
		m.answers = map[string]*trial{}
	}
	if len(m.order) >= maxRemembered {
		delete(m.answers, m.order[0])
		m.order = m.order[1:]
	}
	m.answers[t.id] = t
	m.order = append(m.order, t.id)
}

// Feedback errors.
var (
	ErrUnknownResponse = errors.New("no answer with that id: ids are given to answers a canary split, and kept for the latest 65536")
	ErrAlreadyRated    = errors.New("that answer has feedback already")
)

// Feedback counts a user's judgement of an answer (up: good) for the adapter that gave it. An
// answer is judged once.
func (m *AdapterManager) Feedback(id string, up bool) error {
	m.fb.Lock()
	t, ok := m.answers[id]
	rated := ok && t.rated
	if ok {
		t.rated = true
	}
	m.fb.Unlock()
	switch {
	case !ok:
		return ErrUnknownResponse
	case rated:
		return ErrAlreadyRated
	}
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	arm := &t.c.live.Stable
	if t.canary {
		arm = &t.c.live.Canary
	}
	if up {
		arm.Up++
	} else {
		arm.Down++
	}
	return nil
}

// Live is what this replica measured of each canary it runs, by public name.
func (m *AdapterManager) Live() map[string]kaito.CanaryLive {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if len(m.live) == 0 {
		return nil
	}
	out := map[string]kaito.CanaryLive{}
	for public, c := range m.live {
		c.mu.Lock()
		out[public] = c.live
		c.mu.Unlock()
	}
	return out
}

// measured is a ResponseWriter that notes what a canary judges an answer by: its status, when its
// first byte went, and its completion tokens (one per streamed chunk, or the usage of an answer
// that is not streamed).
type measured struct {
	http.ResponseWriter
	status   int
	first    time.Time
	stream   bool
	chunks   int64
	body     bytes.Buffer
	overflow bool
}

func (w *measured) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		w.stream = strings.HasPrefix(w.Header().Get("Content-Type"), "text/event-stream")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *measured) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.first.IsZero() {
		w.first = time.Now()
	}
	switch {
	case w.stream:
		w.chunks += int64(bytes.Count(b, []byte("data: {")))
	case w.body.Len()+len(b) <= maxMeasuredBody:
		w.body.Write(b)
	default:
		w.overflow = true
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController flush the writer underneath.
func (w *measured) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish records the answer on t.
func (w *measured) finish(t *trial) {
	end := time.Now()
	first := end
	if !w.first.IsZero() {
		first = w.first
	}
	t.done(w.status, first.Sub(t.start), end.Sub(t.start), w.tokens())
}

// tokens are the answer's completion tokens, -1 when unknown.
func (w *measured) tokens() int64 {
	if w.stream {
		return w.chunks
	}
	if w.overflow {
		return -1
	}
	return usageTokens(w.body.Bytes())
}

// usageTokens reads an OpenAI answer's usage.completion_tokens, -1 when it has none.
func usageTokens(body []byte) int64 {
	var a struct {
		Usage *struct {
			CompletionTokens int64 `json:"completion_tokens"`
		} `json:"usage"`
	}
	if json.Unmarshal(body, &a) != nil || a.Usage == nil {
		return -1
	}
	return a.Usage.CompletionTokens
}

// feedbackRequest is POST /feedback's body: an answer's id (HeaderResponseID) and "up" or "down".
type feedbackRequest struct {
	ID     string `json:"id"`
	Rating string `json:"rating"`
}

// maxFeedback bounds POST /feedback's body.
const maxFeedback = 4 << 10

// feedback answers POST /feedback. Whoever may chat may give feedback; an id is unguessable, so
// only the caller an answer went to can judge it.
func (p *Proxy) feedback(w http.ResponseWriter, r *http.Request) {
	if p.Adapters == nil {
		Problem(w, http.StatusNotFound, "this replica has no adapter set (--adapter-set): no answers to judge")
		return
	}
	var in feedbackRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxFeedback))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		Problem(w, http.StatusBadRequest, `body must be JSON {"id": "<`+HeaderResponseID+`>", "rating": "up"|"down"}: `+err.Error())
		return
	}
	if in.Rating != "up" && in.Rating != "down" {
		Problem(w, http.StatusBadRequest, fmt.Sprintf("rating: %q, want up or down", in.Rating))
		return
	}
	switch err := p.Adapters.Feedback(in.ID, in.Rating == "up"); {
	case errors.Is(err, ErrUnknownResponse):
		Problem(w, http.StatusNotFound, "id: "+err.Error())
	case errors.Is(err, ErrAlreadyRated):
		Problem(w, http.StatusConflict, "id: "+err.Error())
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}
