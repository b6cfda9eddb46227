package serve

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// SimRuntime is the sim driver's model server: the subset of vLLM's OpenAI-compatible API that
// chat-proxy uses (/health, /v1/models, /v1/chat/completions, /v1/completions, streaming or not)
// and vLLM's runtime LoRA API (/v1/load_lora_adapter, /v1/unload_lora_adapter). No model runs:
// every answer says it is simulated, names the model or adapter that would have answered, and
// echoes the prompt, word by word when streamed. Loading takes the configured time, as a real
// model's does, so what waits for it is tested for waiting.
type SimRuntime struct {
	// Base is the served base model's name.
	Base string
	// Describe names what a real deployment would run, for the answers.
	Describe string
	// TokenDelay paces streamed words, so a client sees them arrive one by one.
	TokenDelay time.Duration
	// LoadDelay is the simulated base-model load (health answers 503 until it has passed, counted
	// from the first request); LoRALoadDelay the time one load_lora_adapter takes.
	LoadDelay, LoRALoadDelay time.Duration
	// Files maps a lora_path as the model server sees it to where its files are here; nil: the
	// same path (a stand-in for a pod maps its mounts to the test's directories).
	Files func(path string) string

	once    sync.Once
	readyAt time.Time
	mu      sync.Mutex
	loras   map[string]string // name → path
}

// Handler returns the runtime's routes.
func (s *SimRuntime) Handler() http.Handler {
	s.once.Do(func() { s.readyAt = time.Now().Add(s.LoadDelay) })
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Ready() {
			problem(w, http.StatusServiceUnavailable, "loading the model (sim)")
			return
		}
		_, _ = w.Write([]byte("ok (sim)\n"))
	})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		data := []map[string]any{{"id": s.Base, "object": "model", "owned_by": "kaitoflow-sim", "root": s.Base}}
		s.mu.Lock()
		for _, n := range slices.Sorted(maps.Keys(s.loras)) {
			// vLLM lists a LoRA adapter with its path as root and the base model as parent.
			data = append(data, map[string]any{"id": n, "object": "model", "owned_by": "kaitoflow-sim", "root": s.loras[n], "parent": s.Base})
		}
		s.mu.Unlock()
		writeJSON(w, map[string]any{"object": "list", "data": data})
	})
	mux.HandleFunc("POST /v1/load_lora_adapter", s.loadLoRA)
	mux.HandleFunc("POST /v1/unload_lora_adapter", s.unloadLoRA)
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) { s.complete(w, r, true) })
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) { s.complete(w, r, false) })
	return mux
}

// ReadyAt is when the simulated model has loaded (zero before Handler is called).
func (s *SimRuntime) ReadyAt() time.Time { return s.readyAt }

// Ready reports whether the simulated model has loaded.
func (s *SimRuntime) Ready() bool { return !time.Now().Before(s.readyAt) }

// LoRAs are the loaded adapters' names.
func (s *SimRuntime) LoRAs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.loras))
}

type loraRequest struct {
	Name string `json:"lora_name"`
	Path string `json:"lora_path"`
}

// loadLoRA answers as vLLM does: 400 when a field is missing or the name is taken, an error when
// the path holds no adapter, 200 with a line of text on success. The adapter's files must really
// be there: the sim checks adapter_config.json, so a pull that did not happen fails here.
func (s *SimRuntime) loadLoRA(w http.ResponseWriter, r *http.Request) {
	var req loraRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		problem(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	if req.Name == "" || req.Path == "" {
		problem(w, http.StatusBadRequest, "Both 'lora_name' and 'lora_path' must be provided.")
		return
	}
	if !s.Ready() {
		problem(w, http.StatusServiceUnavailable, "the model is still loading (sim)")
		return
	}
	s.mu.Lock()
	_, taken := s.loras[req.Name]
	s.mu.Unlock()
	if taken {
		problem(w, http.StatusBadRequest, fmt.Sprintf("The lora adapter '%s' has already been loaded.", req.Name))
		return
	}
	dir := req.Path
	if s.Files != nil {
		dir = s.Files(dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "adapter_config.json")); err != nil {
		problem(w, http.StatusBadRequest, fmt.Sprintf("Failed to load LoRA adapter '%s': no adapter_config.json under %s", req.Name, req.Path))
		return
	}
	select {
	case <-time.After(s.LoRALoadDelay):
	case <-r.Context().Done():
		return
	}
	s.mu.Lock()
	if s.loras == nil {
		s.loras = map[string]string{}
	}
	s.loras[req.Name] = req.Path
	s.mu.Unlock()
	_, _ = fmt.Fprintf(w, "Success: LoRA adapter '%s' added successfully.", req.Name)
}

func (s *SimRuntime) unloadLoRA(w http.ResponseWriter, r *http.Request) {
	var req loraRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Name == "" {
		problem(w, http.StatusBadRequest, "'lora_name' must be provided.")
		return
	}
	s.mu.Lock()
	_, ok := s.loras[req.Name]
	delete(s.loras, req.Name)
	s.mu.Unlock()
	if !ok {
		problem(w, http.StatusNotFound, fmt.Sprintf("The lora adapter '%s' cannot be found.", req.Name))
		return
	}
	_, _ = fmt.Fprintf(w, "Success: LoRA adapter '%s' removed successfully.", req.Name)
}

func (s *SimRuntime) served(model string) (string, bool) {
	if model == s.Base {
		return s.Describe, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.loras[model]; ok {
		return s.Describe + " with adapter " + model, true
	}
	return "", false
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
	if !s.Ready() {
		problem(w, http.StatusServiceUnavailable, "the model is still loading (sim)")
		return
	}
	describe, ok := s.served(req.Model)
	if !ok {
		// vLLM's answer to a model it does not serve.
		problem(w, http.StatusNotFound, fmt.Sprintf("The model `%s` does not exist. (served: %s)", req.Model, strings.Join(append([]string{s.Base}, s.LoRAs()...), ", ")))
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
	words := strings.Fields(fmt.Sprintf("[sim] no model is loaded; %s would answer here. You said: %s", describe, prompt))
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
