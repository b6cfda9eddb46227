package serve

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// SimRuntime is the sim driver's model server: the subset of vLLM's OpenAI-compatible API that
// chat-proxy fronts (/health, /v1/models, /v1/chat/completions, /v1/completions, streaming or
// not). No model runs: every answer says it is simulated, names what would have answered, and
// echoes the prompt, word by word when streamed.
type SimRuntime struct {
	// Models are the served model names (the base model, then adapters).
	Models []string
	// Describe names what a real deployment would run, for the answers.
	Describe string
	// TokenDelay paces streamed words, so a client sees them arrive one by one.
	TokenDelay time.Duration
}

// Handler returns the runtime's routes.
func (s *SimRuntime) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok (sim)\n")) })
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		var data []map[string]string
		for _, m := range s.Models {
			data = append(data, map[string]string{"id": m, "object": "model", "owned_by": "kaitoflow-sim"})
		}
		writeJSON(w, map[string]any{"object": "list", "data": data})
	})
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) { s.complete(w, r, true) })
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) { s.complete(w, r, false) })
	return mux
}

func (s *SimRuntime) complete(w http.ResponseWriter, r *http.Request, chat bool) {
	var req struct {
		Model    string `json:"model"`
		Prompt   any    `json:"prompt"`
		Stream   bool   `json:"stream"`
		Messages []struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"messages"`
		MaxTokens int `json:"max_tokens"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		problem(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	if !slices.Contains(s.Models, req.Model) {
		// vLLM's answer to a model it does not serve.
		problem(w, http.StatusNotFound, fmt.Sprintf("model %q: not served here (served: %s)", req.Model, strings.Join(s.Models, ", ")))
		return
	}
	prompt := fmt.Sprint(req.Prompt)
	if chat {
		if len(req.Messages) == 0 {
			problem(w, http.StatusBadRequest, "messages: required")
			return
		}
		prompt = req.Messages[len(req.Messages)-1].Content
	}
	words := strings.Fields(fmt.Sprintf("[sim] no model is loaded; %s would answer here. You said: %s", s.Describe, prompt))
	if req.MaxTokens > 0 && req.MaxTokens < len(words) {
		words = words[:req.MaxTokens]
	}
	id := fmt.Sprintf("sim-%d", time.Now().UnixNano())
	choice := func(text string, final bool) map[string]any {
		c := map[string]any{"index": 0}
		switch {
		case chat && req.Stream:
			c["delta"] = map[string]string{"content": text}
		case chat:
			c["message"] = map[string]string{"role": "assistant", "content": text}
		default:
			c["text"] = text
		}
		if final {
			c["finish_reason"] = "stop"
		}
		return c
	}
	object := "text_completion"
	if chat {
		object = "chat.completion"
	}
	if !req.Stream {
		writeJSON(w, map[string]any{"id": id, "object": object, "model": req.Model, "choices": []any{choice(strings.Join(words, " "), true)},
			"usage": map[string]int{"completion_tokens": len(words)}})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	flusher, _ := w.(http.Flusher)
	for i, word := range words {
		if i > 0 {
			word = " " + word
		}
		b, _ := json.Marshal(map[string]any{"id": id, "object": object + ".chunk", "model": req.Model, "choices": []any{choice(word, i == len(words)-1)}})
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
		if s.TokenDelay > 0 {
			select {
			case <-time.After(s.TokenDelay):
			case <-r.Context().Done():
				return
			}
		}
	}
	_, _ = fmt.Fprint(w, "data: [DONE]\n\n")
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
