package chatproxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/dataplane/vllmsim"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// canarySet is the set serving "ws" from stable, with a canary of candidate answering share% of
// its requests.
func canarySet(version int64, stable, candidate string, share int) AdapterSet {
	set := setOf(version, route{"ws", stable})
	name := loraName("ws", candidate)
	set.Adapters = append(set.Adapters, AdapterSpec{Name: name, Image: candidate})
	set.Canaries = map[string]Canary{"ws": {Adapter: name, Generation: 2, Share: share, Start: time.Unix(1000, 0), Ends: time.Unix(2800, 0)}}
	return set
}

// ask sends one chat completion for "ws" as caller and returns the adapter that answered (the
// sim runtime names it) and the answer's id.
func ask(t *testing.T, srv *httptest.Server, caller string, stream bool) (answeredBy, id string) {
	t.Helper()
	body := fmt.Sprintf(`{"model":"ws","messages":[{"role":"user","content":"hello there"}],"stream":%t}`, stream)
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", strings.NewReader(body))
	if caller != "" {
		req.Header.Set(HeaderCaller, caller)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chat: %s %s", resp.Status, b)
	}
	_, rest, ok := strings.Cut(string(b), `"model":"`)
	if !ok {
		t.Fatalf("no model named in %s", b)
	}
	return rest[:strings.IndexByte(rest, '"')], resp.Header.Get(HeaderResponseID)
}

func TestCanarySplitsMeasuresAndTakesFeedback(t *testing.T) {
	ctx := context.Background()
	host := testenv.Registry(t)
	v1, v2 := testenv.PushAdapter(t, host, "ws", "v1"), testenv.PushAdapter(t, host, "ws", "v2")
	rt := &vllmsim.Server{Base: "phi-3"}
	m := newManager(t, rt)
	if err := m.Apply(ctx, canarySet(1, v1, v2, 30)); err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(rt.Handler())
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	key := []byte("the service's key")
	srv := httptest.NewServer((&Proxy{Upstream: u, Adapters: m, FeedbackKey: key}).Handler())
	t.Cleanup(srv.Close)
	// Another replica of the same service (the same set, the same key): feedback on an answer
	// counts wherever it lands.
	other := newManager(t, &vllmsim.Server{Base: "phi-3"})
	if err := other.Apply(ctx, canarySet(1, v1, v2, 30)); err != nil {
		t.Fatal(err)
	}
	otherSrv := httptest.NewServer((&Proxy{Upstream: u, Adapters: other, FeedbackKey: key}).Handler())
	t.Cleanup(otherSrv.Close)
	// A replica of another service (another key) knows none of these answers.
	strangerSrv := httptest.NewServer((&Proxy{Upstream: u, Adapters: other, FeedbackKey: []byte("another key")}).Handler())
	t.Cleanup(strangerSrv.Close)
	stable, candidate := loraName("ws", v1), loraName("ws", v2)

	// Without a caller, each request is split at random: 30% within a tolerance of 10 points
	// (more than four standard deviations at 400 requests).
	const n = 400
	count := map[string]int{}
	var canaryID, stableID string
	for i := range n {
		by, id := ask(t, srv, "", i%4 == 0)
		count[by]++
		if id == "" {
			t.Fatal("an answer a canary split has no id")
		}
		if by == candidate {
			canaryID = id
		} else {
			stableID = id
		}
	}
	if share := float64(count[candidate]) / n; share < 0.2 || share > 0.4 || count[stable]+count[candidate] != n {
		t.Fatalf("split %v: canary share %.2f, want 0.30±0.10", count, share)
	}

	// A caller stays with one adapter, whichever it is.
	seen := map[string]bool{}
	for c := range 20 {
		caller := fmt.Sprintf("user-%d", c)
		first, _ := ask(t, srv, caller, false)
		for range 5 {
			if by, _ := ask(t, srv, caller, false); by != first {
				t.Fatalf("caller %s answered by %s, then %s", caller, first, by)
			}
		}
		seen[first] = true
	}
	if !seen[stable] || !seen[candidate] {
		t.Errorf("20 callers all on one adapter: %v", seen)
	}

	// Feedback counts once per answer, for the adapter that gave it.
	feedbackTo := func(srv *httptest.Server, body string) int {
		resp, err := srv.Client().Post(srv.URL+"/feedback", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	feedback := func(body string) int { return feedbackTo(srv, body) }
	for _, tc := range []struct {
		body string
		want int
	}{
		{`{"id":"` + canaryID + `","rating":"down"}`, http.StatusNoContent},
		{`{"id":"` + strings.Replace(canaryID, ".c.", ".s.", 1) + `","rating":"up"}`, http.StatusNotFound}, // the arm changed: the signature fails
		{`{"id":"` + canaryID + `","rating":"up"}`, http.StatusConflict},
		{`{"id":"` + stableID + `","rating":"up"}`, http.StatusNoContent},
		{`{"id":"00","rating":"up"}`, http.StatusNotFound},
		{`{"id":"` + stableID + `","rating":"meh"}`, http.StatusBadRequest},
		{`{"id":"` + stableID + `","rating":"up","extra":1}`, http.StatusBadRequest},
		{strings.Repeat(" ", maxFeedback+1), http.StatusBadRequest},
	} {
		if got := feedback(tc.body); got != tc.want {
			t.Errorf("feedback %.60q: %d, want %d", tc.body, got, tc.want)
		}
	}

	// On the other replica of the service, the same answer is judged once there; a stranger
	// does not know it.
	if got := feedbackTo(otherSrv, `{"id":"`+canaryID+`","rating":"down"}`); got != http.StatusNoContent {
		t.Errorf("feedback on another replica: %d", got)
	}
	if got := feedbackTo(strangerSrv, `{"id":"`+canaryID+`","rating":"down"}`); got != http.StatusNotFound {
		t.Errorf("feedback on another service's replica: %d", got)
	}
	if o := other.Live()["ws"]; o.Canary.Down != 1 {
		t.Errorf("the other replica counted %+v", o)
	}

	live := m.Live()["ws"]
	total := n + 20*6
	if got := live.Stable.Requests + live.Canary.Requests; got != int64(total) || live.Canary.Requests < int64(count[candidate]) {
		t.Fatalf("measured %d requests (%+v), want %d", got, live, total)
	}
	if live.Canary.Errors != 0 || live.Canary.Down != 1 || live.Canary.Up != 0 || live.Stable.Up != 1 {
		t.Errorf("live numbers: %+v", live)
	}
	if live.Canary.FirstToken() <= 0 || live.Canary.TokensPerSecond() <= 0 || live.Stable.TokensPerSecond() <= 0 {
		t.Errorf("no latency or tokens measured: %+v", live)
	}
	// GET /adapters reports them, with the canary.
	st := m.Status(ctx)
	if st.Canaries["ws"].Adapter != candidate || st.Live["ws"].Canary.Requests != live.Canary.Requests {
		b, _ := json.Marshal(st)
		t.Errorf("status: %s", b)
	}

	// A model server that fails answers counts errors against the adapter that was asked.
	srvDown := httptest.NewServer((&Proxy{Upstream: &url.URL{Scheme: "http", Host: "127.0.0.1:1"}, Adapters: m}).Handler())
	t.Cleanup(srvDown.Close)
	resp, err := srvDown.Client().Post(srvDown.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"ws","messages":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	after := m.Live()["ws"]
	if after.Stable.Errors+after.Canary.Errors != 1 {
		t.Errorf("an unreachable model server: errors %+v", after)
	}

	// The set that ends the canary: promoted, the candidate takes the route and the stable one
	// leaves the set; rolled back, the candidate leaves. Measurements end with the canary.
	set := canarySet(1, v1, v2, 30)
	promoted, rolledBack := set.EndCanary("ws", true), set.EndCanary("ws", false)
	if promoted.Routes["ws"] != candidate || promoted.Generations["ws"] != 2 || len(promoted.Adapters) != 1 || promoted.Canaries != nil {
		t.Errorf("promoted: %+v", promoted)
	}
	if rolledBack.Routes["ws"] != stable || rolledBack.Generations["ws"] != 1 || len(rolledBack.Adapters) != 1 || rolledBack.Canaries != nil {
		t.Errorf("rolled back: %+v", rolledBack)
	}
	if set.Canaries == nil || len(set.Adapters) != 2 {
		t.Error("EndCanary changed the set it was called on")
	}
	promoted.Version = 2
	if err := m.Apply(ctx, promoted); err != nil {
		t.Fatal(err)
	}
	if by, id := ask(t, srv, "", false); by != candidate || id != "" || m.Live() != nil {
		t.Errorf("after promotion: answered by %s (id %q), live %v", by, id, m.Live())
	}
	// Feedback on an answer of the ended canary: gone.
	if got := feedback(`{"id":"` + stableID + `","rating":"down"}`); got != http.StatusGone {
		t.Errorf("feedback after the canary ended: %d, want 410", got)
	}
}

func TestDecodeAdapterSetRefusesBadCanaries(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*AdapterSet)
		want string
	}{
		{"no route", func(s *AdapterSet) { s.Canaries["other"] = s.Canaries["ws"] }, "canaries[other]: no route"},
		{"adapter not in the set", func(s *AdapterSet) { c := s.Canaries["ws"]; c.Adapter = "nope"; s.Canaries["ws"] = c }, `"nope" is not in the set`},
		{"the route's own", func(s *AdapterSet) { c := s.Canaries["ws"]; c.Adapter = s.Routes["ws"]; s.Canaries["ws"] = c }, "the route's own adapter"},
		{"share", func(s *AdapterSet) { c := s.Canaries["ws"]; c.Share = 100; s.Canaries["ws"] = c }, "share: 100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := canarySet(1, "r/ws:v1", "r/ws:v2", 10)
			tc.edit(&set)
			b, _ := json.Marshal(set)
			if _, err := DecodeAdapterSet(b); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%v, want %q", err, tc.want)
			}
		})
	}
	b, _ := json.Marshal(canarySet(1, "r/ws:v1", "r/ws:v2", 10))
	if _, err := DecodeAdapterSet(b); err != nil {
		t.Errorf("a good canary refused: %v", err)
	}
}
