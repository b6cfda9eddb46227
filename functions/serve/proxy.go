package serve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
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
	Log     *slog.Logger
}

// Handler returns the proxy's routes.
func (p *Proxy) Handler() http.Handler {
	maxBody := p.MaxBody
	if maxBody <= 0 {
		maxBody = DefaultMaxBody
	}
	// One keep-alive pool to the model server on localhost: a new connection per request would
	// cost more than everything else the proxy does.
	transport := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second, DisableCompression: true}
	client := p.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Minute, Transport: transport}
	}
	rp := &httputil.ReverseProxy{
		Transport: transport,
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(p.Upstream)
			r.Out.Host = p.Upstream.Host
		},
		// No periodic flushing: ReverseProxy flushes text/event-stream (and unknown-length)
		// responses after every write on its own, so token streams are never buffered, while
		// ordinary answers cost one write.
		FlushInterval: 0,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			problem(w, http.StatusBadGateway, "model server unavailable: "+err.Error())
		},
	}
	limited := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			h.ServeHTTP(w, r)
		})
	}
	mux := http.NewServeMux()
	mux.Handle("POST /v1/chat/completions", limited(rp))
	mux.Handle("POST /v1/completions", limited(rp))
	mux.Handle("GET /v1/models", rp)
	mux.HandleFunc("POST /chat", func(w http.ResponseWriter, r *http.Request) { p.chat(w, r, client, maxBody) })
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, p.Upstream.JoinPath("/health").String(), nil)
		resp, err := client.Do(req)
		if err != nil {
			problem(w, http.StatusServiceUnavailable, "model server not answering: "+err.Error())
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			problem(w, http.StatusServiceUnavailable, "model server not ready: "+resp.Status)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

// ChatRequest is Kaito's /chat body.
type ChatRequest struct {
	Prompt         string         `json:"prompt"`
	GenerateKwargs map[string]any `json:"generate_kwargs,omitempty"`
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
			problem(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", maxBody))
			return
		}
		problem(w, http.StatusBadRequest, `body must be JSON {"prompt": "...", "generate_kwargs": {...}}: `+err.Error())
		return
	}
	if in.Prompt == "" {
		problem(w, http.StatusBadRequest, "prompt: required")
		return
	}
	out := map[string]any{"model": p.Model, "messages": []map[string]string{{"role": "user", "content": in.Prompt}}}
	for k, v := range in.GenerateKwargs {
		name, ok := kwargs[k]
		if !ok {
			problem(w, http.StatusBadRequest, fmt.Sprintf("generate_kwargs.%s: not supported (supported: max_new_tokens, max_length, temperature, top_p, top_k, repetition_penalty, stop, seed, presence_penalty, frequency_penalty)", k))
			return
		}
		out[name] = v
	}
	body, _ := json.Marshal(out)
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, p.Upstream.JoinPath("/v1/chat/completions").String(), bytes.NewReader(body))
	if err != nil {
		problem(w, http.StatusInternalServerError, err.Error())
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		problem(w, http.StatusBadGateway, "model server unavailable: "+err.Error())
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		problem(w, resp.StatusCode, "model server: "+string(bytes.TrimSpace(b)))
		return
	}
	var completion struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&completion); err != nil || len(completion.Choices) == 0 {
		problem(w, http.StatusBadGateway, "model server answered without a choice")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"Result": completion.Choices[0].Message.Content})
}

func problem(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
