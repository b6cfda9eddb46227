package chatproxy

import (
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// DefaultMaxBody bounds request bodies: a chat request, not a dataset.
const DefaultMaxBody = 1 << 20

// Proxy is `kaitoflow chat-proxy`, the serving container in front of the model server (vLLM's
// OpenAI-compatible server on localhost in the same pod). It answers Kaito's POST /chat, passes
// the OpenAI API through — streaming server-sent events as they come — and reports the runtime's
// readiness on /health.
type Proxy struct {
	// Upstream is the model server, e.g. http://127.0.0.1:8000.
	Upstream *url.URL
	// Model is the model (or LoRA adapter) /chat talks to: the served model name.
	Model   string
	MaxBody int64
	Client  *http.Client
	// Transport carries the requests to Upstream; nil: a keep-alive pool of its own. (The sim sets
	// one that signs requests to its runtime, which `up` serves behind its token.)
	Transport http.RoundTripper
	Log       *slog.Logger
	// Adapters, when set, is the replica's adapter reconciler: public model names route to the
	// adapter loaded for them now, /adapters reports what the replica serves, and /health stays
	// unready until the first adapter set is loaded, so no request reaches a replica that would
	// answer with the base model in place of the workspace's adapter.
	Adapters *AdapterManager
	// AdminTokenFile, when set, holds the bearer token GET /adapters requires (the deployer's, in
	// the adapter set's ConfigMap): the admin port answers serve alone, whatever reaches the pod.
	// Read at every request, so a token that arrives or changes later counts; while the file cannot
	// be read, every admin request is refused.
	AdminTokenFile string
	// FeedbackKey signs the ids of answers a canary split, so any replica can count feedback on
	// them: every replica of a service needs the same. Empty: the admin token, else a key of this
	// process's own (feedback then counts only where the answer came from).
	FeedbackKey []byte
	// ModelMetrics serves the model server's GET /metrics on the routed port, for an endpoint
	// picker that scrapes the pods it routes to (the Gateway API Inference Extension's): whoever
	// can call the endpoint can read them.
	ModelMetrics bool

	keyOnce sync.Once
	ownKey  []byte
}

// Handler returns the proxy's routes.
func (p *Proxy) Handler() http.Handler {
	maxBody := p.MaxBody
	if maxBody <= 0 {
		maxBody = DefaultMaxBody
	}
	// One keep-alive pool to the model server on localhost: a new connection per request would
	// cost more than everything else the proxy does.
	var transport http.RoundTripper = &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second, DisableCompression: true}
	if p.Transport != nil {
		transport = p.Transport
	}
	client := p.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Minute, Transport: transport}
	}
	// The OpenAI API passes through a lean forwarder rather than httputil.ReverseProxy: the same
	// request and response, minus hop-by-hop headers, with streamed answers flushed per write. It
	// adds about a third of ReverseProxy's p99 (bench: BenchmarkChatProxy).
	fwd := &forwarder{upstream: p.Upstream, transport: transport}
	limited := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			h.ServeHTTP(w, r)
		})
	}
	var api http.Handler = fwd
	if p.Adapters != nil {
		api = p.routed(fwd, maxBody)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /v1/chat/completions", limited(api))
	mux.Handle("POST /v1/completions", limited(api))
	if p.Adapters != nil {
		mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) { p.models(w, r, client) })
	} else {
		mux.Handle("GET /v1/models", fwd)
	}
	mux.HandleFunc("POST /chat", func(w http.ResponseWriter, r *http.Request) { p.chat(w, r, client, maxBody) })
	mux.HandleFunc("POST /feedback", p.feedback)
	if p.ModelMetrics {
		mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) { p.modelMetrics(w, r, client) })
	}
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		if p.Adapters != nil && p.Adapters.Applied() == 0 {
			Problem(w, http.StatusServiceUnavailable, "adapters not loaded yet")
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, p.Upstream.JoinPath("/health").String(), nil)
		resp, err := client.Do(req)
		if err != nil {
			Problem(w, http.StatusServiceUnavailable, "model server not answering: "+err.Error())
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			Problem(w, http.StatusServiceUnavailable, "model server not ready: "+resp.Status)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

// AdminHandler serves what only kaitoflow asks a replica, on a port Knative does not route to:
// GET /adapters, what this replica serves (the adapter set's version, the loaded adapters, the
// routes, why a set is not applied yet), to callers with the admin token (AdminTokenFile).
func (p *Proxy) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /adapters", func(w http.ResponseWriter, r *http.Request) {
		if !p.adminAllowed(r) {
			w.Header().Set("WWW-Authenticate", "Bearer")
			Problem(w, http.StatusUnauthorized, "GET /adapters needs the adapter set's admin token")
			return
		}
		if p.Adapters == nil {
			Problem(w, http.StatusNotFound, "this replica has no adapter set (--adapter-set)")
			return
		}
		writeJSON(w, p.Adapters.Status(r.Context()))
	})
	return mux
}

// adminAllowed reports whether r carries the admin token, or no token is configured.
func (p *Proxy) adminAllowed(r *http.Request) bool {
	if p.AdminTokenFile == "" {
		return true
	}
	b, err := os.ReadFile(p.AdminTokenFile)
	token := strings.TrimSpace(string(b))
	if err != nil || token == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+token)) == 1
}

// models answers GET /v1/models with the model server's list plus each public name routed to an
// adapter (what clients send), its root naming the adapter that answers for it now.
func (p *Proxy) models(w http.ResponseWriter, r *http.Request, client *http.Client) {
	resp := p.upstreamGet(r.Context(), w, client, "/v1/models")
	if resp == nil {
		return
	}
	defer resp.Body.Close()
	var list struct {
		Object string           `json:"object"`
		Data   []map[string]any `json:"data"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, maxModelList)).Decode(&list) != nil {
		Problem(w, http.StatusBadGateway, "model server: GET /v1/models: "+resp.Status)
		return
	}
	for _, public := range p.Adapters.Public() {
		list.Data = append(list.Data, map[string]any{"id": public, "object": "model", "owned_by": "kaitoflow", "root": p.Adapters.Route(public)})
	}
	writeJSON(w, list)
}

// upstreamGet asks the model server for path; when it cannot, it answers w itself (500, or 502
// when the model server does not answer) and returns nil.
func (p *Proxy) upstreamGet(ctx context.Context, w http.ResponseWriter, client *http.Client, path string) *http.Response {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.Upstream.JoinPath(path).String(), nil)
	if err != nil {
		Problem(w, http.StatusInternalServerError, err.Error())
		return nil
	}
	resp, err := client.Do(req)
	if err != nil {
		Problem(w, http.StatusBadGateway, "model server unavailable: "+err.Error())
		return nil
	}
	return resp
}

// routed rewrites the request's model from a public name to the adapter that answers for it now.
// Only the body's "model" changes; the rest is passed as it came.
func (p *Proxy) routed(next http.Handler, maxBody int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !p.Adapters.routing() {
			next.ServeHTTP(w, r) // nothing to rewrite: the body streams through unread
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			Problem(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", maxBody))
			return
		}
		var fields map[string]json.RawMessage
		var t *trial
		if json.Unmarshal(body, &fields) == nil {
			var model string
			if json.Unmarshal(fields["model"], &model) == nil {
				var to string
				if to, t = p.Adapters.pick(model, r.Header.Get(HeaderCaller)); to != model {
					fields["model"], _ = json.Marshal(to)
					body, _ = json.Marshal(fields)
				}
			}
		}
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		r.Header.Del("Content-Length")
		if t == nil {
			next.ServeHTTP(w, r)
			return
		}
		// A canary splits this name: the answer is measured for its adapter, and gets an id the
		// caller can send feedback on.
		w.Header().Set(HeaderResponseID, p.responseIDs().mint(t))
		mw := &measured{ResponseWriter: w}
		next.ServeHTTP(mw, r)
		mw.finish(t, r.Context().Err() != nil)
	})
}

// ChatRequest is Kaito's /chat body, plus kaitoflow's optional model: the model name to answer
// with where one endpoint serves several (a serving pool).
type ChatRequest struct {
	Prompt         string         `json:"prompt"`
	GenerateKwargs map[string]any `json:"generate_kwargs,omitempty"`
	Model          string         `json:"model,omitempty"`
}

// generate_kwargs (transformers' names, which Kaito's API takes) mapped to OpenAI's.
var kwargs = map[string]string{
	"max_new_tokens": "max_tokens", "max_length": "max_tokens", "temperature": "temperature",
	"top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repetition_penalty",
	"stop": "stop", "seed": "seed", "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
}

// chat answers Kaito's POST /chat by way of the OpenAI chat completions API.
func (p *Proxy) chat(w http.ResponseWriter, r *http.Request, client *http.Client, maxBody int64) {
	var in ChatRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := dec.Decode(&in); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			Problem(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", maxBody))
			return
		}
		Problem(w, http.StatusBadRequest, `body must be JSON {"prompt": "...", "generate_kwargs": {...}}: `+err.Error())
		return
	}
	if in.Prompt == "" {
		Problem(w, http.StatusBadRequest, "prompt: required")
		return
	}
	out, t, status, msg := p.completionRequest(in, r.Header.Get(HeaderCaller))
	if status != 0 {
		Problem(w, status, msg)
		return
	}
	if t != nil {
		w.Header().Set(HeaderResponseID, p.responseIDs().mint(t))
	}
	start := time.Now()
	content, tokens, status, msg := p.complete(r.Context(), client, out)
	// Not streamed: the whole answer's time is its time to first token too.
	t.done(status, time.Since(start), time.Since(start), tokens, r.Context().Err() != nil)
	if status != http.StatusOK {
		Problem(w, cmp.Or(status, http.StatusBadGateway), msg)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"Result": content})
}

// complete asks the model server for a chat completion: its content and completion tokens (-1:
// not reported), or the status (0: no answer) and message of the failure.
func (p *Proxy) complete(ctx context.Context, client *http.Client, out map[string]any) (string, int64, int, string) {
	body, _ := json.Marshal(out)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.Upstream.JoinPath("/v1/chat/completions").String(), bytes.NewReader(body))
	if err != nil {
		return "", -1, http.StatusInternalServerError, err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", -1, 0, "model server unavailable: " + err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", -1, resp.StatusCode, "model server: " + string(bytes.TrimSpace(b))
	}
	var completion struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
		Usage *struct {
			CompletionTokens int64 `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxCompletion)).Decode(&completion); err != nil || len(completion.Choices) == 0 {
		return "", -1, 0, "model server answered without a choice"
	}
	tokens := int64(-1)
	if completion.Usage != nil {
		tokens = completion.Usage.CompletionTokens
	}
	return completion.Choices[0].Message.Content, tokens, http.StatusOK, ""
}

// completionRequest is Kaito's /chat request as an OpenAI chat completion for the model it
// routes to (with the canary trial it is part of, if any), or the status and message refusing it.
func (p *Proxy) completionRequest(in ChatRequest, caller string) (map[string]any, *trial, int, string) {
	model := cmp.Or(in.Model, p.Model)
	var t *trial
	if p.Adapters != nil {
		if in.Model == "" && p.Adapters.Default() == "" && len(p.Adapters.Public()) > 0 {
			return nil, nil, http.StatusBadRequest, fmt.Sprintf(`model: required, this endpoint serves several (%s): {"prompt": "...", "model": "..."}`,
				strings.Join(p.Adapters.Public(), ", "))
		}
		model, t = p.Adapters.pick(cmp.Or(in.Model, p.Adapters.Default(), model), caller)
	}
	out := map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": in.Prompt}}}
	for k, v := range in.GenerateKwargs {
		name, ok := kwargs[k]
		if !ok {
			return nil, nil, http.StatusBadRequest, fmt.Sprintf("generate_kwargs.%s: not supported (supported: max_new_tokens, max_length, temperature, "+
				"top_p, top_k, "+
				"repetition_penalty, stop, seed, presence_penalty, frequency_penalty)", k)
		}
		out[name] = v
	}
	return out, t, 0, ""
}

// Problem answers an error as chat-proxy answers one: {"error": msg} with status.
func Problem(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// forwarder passes a request to the model server and its answer back.
type forwarder struct {
	upstream  *url.URL
	transport http.RoundTripper
}

// hopByHop are the headers that belong to one connection (RFC 9110 §7.6.1), never forwarded.
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer",
	"Transfer-Encoding", "Upgrade"}

func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		dst[k] = append(dst[k], vs...)
	}
	for _, name := range src.Values("Connection") {
		for _, h := range strings.Split(name, ",") {
			dst.Del(strings.TrimSpace(h))
		}
	}
	for _, h := range hopByHop {
		dst.Del(h)
	}
}

func (f *forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u := *f.upstream
	u.Path, u.RawPath = f.upstream.JoinPath(r.URL.Path).Path, ""
	u.RawQuery = r.URL.RawQuery
	out, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), r.Body)
	if err != nil {
		Problem(w, http.StatusBadRequest, err.Error())
		return
	}
	if r.ContentLength == 0 {
		out.Body = nil
	}
	out.ContentLength = r.ContentLength
	copyHeader(out.Header, r.Header)
	resp, err := f.transport.RoundTrip(out)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			Problem(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", tooBig.Limit))
			return
		}
		Problem(w, http.StatusBadGateway, "model server unavailable: "+err.Error())
		return
	}
	defer resp.Body.Close()
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	// Token streams (server-sent events, or any answer of unknown length) are flushed after each
	// read, so the first token reaches the client before the model has finished; answers of known
	// length are copied in one go.
	if resp.ContentLength >= 0 && !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		_, _ = io.Copy(w, resp.Body)
		return
	}
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if err != nil {
			return
		}
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
