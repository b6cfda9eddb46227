package chatproxy

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
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

// maxJudged bounds the answer ids a replica remembers were judged (a ring: the oldest go first).
const maxJudged = 1 << 16

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
		out.Checkpoints = maps.Clone(s.Checkpoints)
		delete(out.Checkpoints, public) // a candidate is a run's final adapter
		if len(out.Checkpoints) == 0 {
			out.Checkpoints = nil
		}
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

// arm is the numbers of the stable adapter's or the candidate's answers; called with c.mu held.
func (c *liveCanary) arm(canary bool) *kaito.CanaryArm {
	if canary {
		return &c.live.Canary
	}
	return &c.live.Stable
}

// trial is one request a canary split: which adapter answered it, to be measured when it is done.
type trial struct {
	c      *liveCanary
	canary bool
	start  time.Time
}

// done records the request's outcome: its status (0: no answer from the model server), the time
// to its first byte and to its end, and its completion tokens (-1: unknown). A request its caller
// gave up on (cancelled) says nothing of the adapter and is not counted. An error is a 5xx, no
// answer, or a 404 (the model server does not have the adapter the route names); only 2xx answers
// count for latency and tokens (a 400 for a bad request says nothing of either adapter).
func (t *trial) done(status int, first, total time.Duration, tokens int64, cancelled bool) {
	if t == nil || cancelled {
		return
	}
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	arm := t.c.arm(t.canary)
	arm.Requests++
	switch {
	case status == 0 || status == http.StatusNotFound || status >= http.StatusInternalServerError:
		arm.Errors++
		return
	case status < 200 || status > 299:
		return
	}
	arm.Answered++
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
	t := &trial{c: c, start: time.Now()}
	if inShare(caller, c.canary) {
		t.canary, target = true, c.canary.Adapter
	}
	return target, t
}

// inShare decides whether a request is the canary's: by a hash of the caller with the canary
// (the same answer on every replica, and not the same callers in every canary) where one is
// named, else at random.
func inShare(caller string, c Canary) bool {
	if caller == "" {
		return mrand.IntN(100) < c.Share //nolint:gosec // a traffic split, not a secret
	}
	h := fnv.New64a()
	_, _ = fmt.Fprintf(h, "%s\x00%s\x00%d", caller, c.Adapter, c.Start.UnixNano())
	return int(h.Sum64()%100) < c.Share
}

// Same reports whether two canaries are the same one (the same candidate and start), whatever
// their times' representation.
func (c Canary) Same(o Canary) bool {
	return c.Adapter == o.Adapter && c.Generation == o.Generation && c.Share == o.Share && c.Start.Equal(o.Start) && c.Ends.Equal(o.Ends)
}

// LiveOf is what this replica measured of canary c of public, if c is the canary it runs there.
func (m *AdapterManager) LiveOf(public string, c Canary) (kaito.CanaryLive, bool) {
	m.mu.RLock()
	l := m.live[public]
	m.mu.RUnlock()
	if l == nil || !l.canary.Same(c) {
		return kaito.CanaryLive{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.live, true
}

// syncLive keeps the measurements of canaries set still runs and starts those of new ones;
// called with m.mu held, as set becomes the applied one.
func (m *AdapterManager) syncLive(set AdapterSet) {
	live := map[string]*liveCanary{}
	for public, c := range set.Canaries {
		if have := m.live[public]; have != nil && have.canary.Same(c) {
			live[public] = have
			continue
		}
		live[public] = &liveCanary{canary: c}
	}
	m.live = live
}

// Feedback errors.
var (
	ErrUnknownResponse = errors.New("not an answer id this service gave")
	ErrCanaryEnded     = errors.New("the canary that answer was part of has ended")
	ErrAlreadyRated    = errors.New("that answer has feedback already")
)

// answerID is what a response id says: the canary it was part of, which adapter gave it, and a
// random nonce that makes it unique. It is signed (responseIDs), so any replica of the service can
// count feedback on it, and nobody can make one up.
type answerID struct {
	generation int64
	start      int64 // the canary's start, Unix nanoseconds
	canary     bool
	nonce      string
}

func (a answerID) payload() string {
	arm := "s"
	if a.canary {
		arm = "c"
	}
	return fmt.Sprintf("%d.%d.%s.%s", a.generation, a.start, arm, a.nonce)
}

// responseIDs signs and checks answer ids with key: the service's replicas share it (the adapter
// set's admin token), so an id one replica gave is good on any.
type responseIDs struct{ key []byte }

func (r responseIDs) mac(payload string) string {
	h := hmac.New(sha256.New, r.key)
	_, _ = io.WriteString(h, payload)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// mint is the id of t's answer.
func (r responseIDs) mint(t *trial) string {
	n := make([]byte, 12)
	_, _ = rand.Read(n)
	a := answerID{generation: t.c.canary.Generation, start: t.c.canary.Start.UnixNano(), canary: t.canary, nonce: hex.EncodeToString(n)}
	return a.payload() + "." + r.mac(a.payload())
}

// parse checks id's signature and reads it.
func (r responseIDs) parse(id string) (answerID, error) {
	parts := strings.Split(id, ".")
	if len(parts) != 5 || len(id) > 200 {
		return answerID{}, ErrUnknownResponse
	}
	payload := strings.Join(parts[:4], ".")
	if !hmac.Equal([]byte(parts[4]), []byte(r.mac(payload))) {
		return answerID{}, ErrUnknownResponse
	}
	gen, err1 := strconv.ParseInt(parts[0], 10, 64)
	start, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil || (parts[2] != "c" && parts[2] != "s") {
		return answerID{}, ErrUnknownResponse
	}
	return answerID{generation: gen, start: start, canary: parts[2] == "c", nonce: parts[3]}, nil
}

// Feedback counts a user's judgement of an answer (up: good) for the adapter that gave it, in the
// canary it was part of: ErrCanaryEnded when that canary no longer runs here. An answer is judged
// once per replica (this replica remembers the latest maxJudged it counted).
func (m *AdapterManager) Feedback(a answerID, up bool) error {
	m.mu.RLock()
	var c *liveCanary
	for _, l := range m.live {
		if l.canary.Generation == a.generation && l.canary.Start.UnixNano() == a.start {
			c = l
		}
	}
	m.mu.RUnlock()
	if c == nil {
		return ErrCanaryEnded
	}
	if !m.judge(a.payload()) {
		return ErrAlreadyRated
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if arm := c.arm(a.canary); up {
		arm.Up++
	} else {
		arm.Down++
	}
	return nil
}

// judge notes that id was judged, false when it was already; the oldest are forgotten first.
func (m *AdapterManager) judge(id string) bool {
	m.fb.Lock()
	defer m.fb.Unlock()
	if m.judged[id] {
		return false
	}
	if m.judged == nil {
		m.judged = map[string]bool{}
	}
	if len(m.judgedOrder) >= maxJudged {
		delete(m.judged, m.judgedOrder[0])
		m.judgedOrder = m.judgedOrder[1:]
	}
	m.judged[id] = true
	m.judgedOrder = append(m.judgedOrder, id)
	return true
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

// finish records the answer on t; cancelled: the caller gave up on it.
func (w *measured) finish(t *trial, cancelled bool) {
	end := time.Now()
	first := end
	if !w.first.IsZero() {
		first = w.first
	}
	t.done(w.status, first.Sub(t.start), end.Sub(t.start), w.tokens(), cancelled)
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

// feedback answers POST /feedback. Whoever may chat may give feedback; an id is signed with the
// service's key, so only the caller an answer went to can judge it, on any replica.
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
	a, err := p.responseIDs().parse(in.ID)
	if err == nil {
		err = p.Adapters.Feedback(a, in.Rating == "up")
	}
	switch {
	case errors.Is(err, ErrUnknownResponse):
		Problem(w, http.StatusNotFound, "id: "+err.Error())
	case errors.Is(err, ErrCanaryEnded):
		Problem(w, http.StatusGone, "id: "+err.Error())
	case errors.Is(err, ErrAlreadyRated):
		Problem(w, http.StatusConflict, "id: "+err.Error())
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// responseIDs signs answer ids with FeedbackKey, else the admin token (which the service's
// replicas share), else a key of this process's own.
func (p *Proxy) responseIDs() responseIDs {
	if len(p.FeedbackKey) > 0 {
		return responseIDs{key: p.FeedbackKey}
	}
	if p.AdminTokenFile != "" {
		if b, err := os.ReadFile(p.AdminTokenFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return responseIDs{key: bytes.TrimSpace(b)}
		}
	}
	p.keyOnce.Do(func() {
		p.ownKey = make([]byte, 32)
		_, _ = rand.Read(p.ownKey)
	})
	return responseIDs{key: p.ownKey}
}
