package chatproxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeVLLM answers like vLLM's OpenAI server. Its stream waits for release before the second
// chunk, so a proxy that buffers never delivers the first.
type fakeVLLM struct {
	ready   atomic.Bool
	release chan struct{}
	last    atomic.Value // the last chat request body
}

func (f *fakeVLLM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/health":
		if !f.ready.Load() {
			http.Error(w, "loading", http.StatusServiceUnavailable)
			return
		}
	case "/v1/models":
		_, _ = io.WriteString(w, `{"object":"list","data":[{"id":"phi-3-mini-128k-instruct"},{"id":"workspace-tuning-phi-3"}]}`)
	case "/v1/chat/completions":
		var req map[string]any
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.last.Store(req)
		if req["stream"] == true {
			w.Header().Set("Content-Type", "text/event-stream")
			fl := w.(http.Flusher)
			fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n")
			fl.Flush()
			<-f.release
			fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n")
			return
		}
		_, _ = io.WriteString(w, `{"choices":[{"message":{"role":"assistant","content":"Kaito is an operator."}}]}`)
	default:
		http.NotFound(w, r)
	}
}

func proxyFor(t *testing.T, f *fakeVLLM) *httptest.Server {
	t.Helper()
	up := httptest.NewServer(f)
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	srv := httptest.NewServer((&Proxy{Upstream: u, Model: "workspace-tuning-phi-3", MaxBody: 4096}).Handler())
	t.Cleanup(srv.Close)
	return srv
}

func TestKaitoChat(t *testing.T) {
	f := &fakeVLLM{release: make(chan struct{})}
	srv := proxyFor(t, f)
	resp, err := http.Post(srv.URL+"/chat", "application/json", strings.NewReader(`{"prompt":"What is Kaito?","generate_kwargs":{"max_length":200,"temperature":0.2}}`))
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != 200 || out["Result"] != "Kaito is an operator." {
		t.Fatalf("got %d %v", resp.StatusCode, out)
	}
	req := f.last.Load().(map[string]any)
	msgs := req["messages"].([]any)
	if req["model"] != "workspace-tuning-phi-3" || req["max_tokens"] != float64(200) || req["temperature"] != 0.2 || msgs[0].(map[string]any)["content"] != "What is Kaito?" {
		t.Errorf("upstream request %v", req)
	}
	for _, tc := range []struct {
		body   string
		status int
		has    string
	}{
		{`{"prompt":`, 400, "body must be JSON"},
		{`{"generate_kwargs":{}}`, 400, "prompt: required"},
		{`{"prompt":"x","generate_kwargs":{"beam_width":3}}`, 400, "generate_kwargs.beam_width"},
		{`{"prompt":"` + strings.Repeat("x", 5000) + `"}`, 413, "over 4096 bytes"},
	} {
		resp, err := http.Post(srv.URL+"/chat", "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.has) {
			t.Errorf("%.30s: %d %s", tc.body, resp.StatusCode, b)
		}
	}
}

func TestStreamsWithoutBuffering(t *testing.T) {
	f := &fakeVLLM{release: make(chan struct{})}
	srv := proxyFor(t, f)
	resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		first <- line
	}()
	select {
	case line := <-first:
		if !strings.Contains(line, "Hel") {
			t.Errorf("first chunk %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first token never arrived: the proxy buffers the stream")
	}
	close(f.release)
}

func TestHealthFollowsTheRuntimeAndModelsPassThrough(t *testing.T) {
	f := &fakeVLLM{release: make(chan struct{})}
	srv := proxyFor(t, f)
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/health"); code != 503 {
		t.Errorf("health while loading: %d", code)
	}
	f.ready.Store(true)
	if code, _ := get("/health"); code != 200 {
		t.Errorf("health when ready: %d", code)
	}
	if code, body := get("/v1/models"); code != 200 || !strings.Contains(body, "workspace-tuning-phi-3") {
		t.Errorf("models: %d %s", code, body)
	}
}

func TestPassthroughLimitsAndHeaders(t *testing.T) {
	var got atomic.Value
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		got.Store(r.Header.Clone())
		w.Header().Set("Connection", "X-Internal")
		w.Header().Set("X-Internal", "hop")
		w.Header().Set("X-Request-Id", "abc")
		_, _ = io.WriteString(w, `{"query":"`+r.URL.RawQuery+`"}`)
	}))
	defer upstream.Close()
	u, _ := url.Parse(upstream.URL)
	srv := httptest.NewServer((&Proxy{Upstream: u, Model: "m", MaxBody: 4096}).Handler())
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/completions?echo=1", strings.NewReader(`{"model":"m","prompt":"x"}`))
	req.Header.Set("Authorization", "Bearer token")
	req.Header.Set("Proxy-Authorization", "Basic secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	h := got.Load().(http.Header)
	if resp.StatusCode != 200 || string(b) != `{"query":"echo=1"}` || h.Get("Authorization") != "Bearer token" || h.Get("Proxy-Authorization") != "" {
		t.Errorf("passthrough: %d %s, upstream saw %v", resp.StatusCode, b, h)
	}
	if resp.Header.Get("X-Internal") != "" || resp.Header.Get("X-Request-Id") != "abc" {
		t.Errorf("response headers %v", resp.Header)
	}

	resp, err = http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"m","prompt":"`+strings.Repeat("x", 5000)+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(b), "over 4096 bytes") {
		t.Errorf("oversized passthrough: %d %s", resp.StatusCode, b)
	}
}

// The admin port answers only the adapter set's token (serve's): none, a wrong one, or a token
// file that is missing or empty is 401; the token read at the request counts.
func TestAdminPortAnswersOnlyTheToken(t *testing.T) {
	file := filepath.Join(t.TempDir(), "admin-token")
	p := &Proxy{AdminTokenFile: file}
	srv := httptest.NewServer(p.AdminHandler())
	defer srv.Close()
	get := func(auth string) int {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/adapters", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("Bearer anything"); code != http.StatusUnauthorized {
		t.Errorf("no token file: %d, want 401", code)
	}
	if err := os.WriteFile(file, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"", http.StatusUnauthorized},
		{"Bearer wrong", http.StatusUnauthorized},
		{"Basic s3cret", http.StatusUnauthorized},
		{"Bearer s3cret", http.StatusNotFound}, // admitted: this proxy has no adapter set to report
	} {
		if code := get(tc.auth); code != tc.want {
			t.Errorf("Authorization %q: %d, want %d", tc.auth, code, tc.want)
		}
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code := get("Bearer "); code != http.StatusUnauthorized {
		t.Errorf("empty token file: %d, want 401", code)
	}
}
