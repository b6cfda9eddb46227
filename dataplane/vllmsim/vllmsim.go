// Package vllmsim is a named stand-in for vLLM: the subset of its OpenAI-compatible API and its
// runtime LoRA API that chat-proxy uses, with vLLM's shapes and messages and no model behind them.
// The sim serving driver runs it in every replica; tests run it where a real vLLM is too slow.
package vllmsim

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server is the simulated model server: the subset of vLLM's OpenAI-compatible API that
// chat-proxy uses (/health, /v1/models, /v1/chat/completions, /v1/completions, streaming or not)
// and vLLM's runtime LoRA API (/v1/load_lora_adapter, /v1/unload_lora_adapter). No model runs:
// every answer says it is simulated, names the model or adapter that would have answered, and
// echoes the prompt, word by word when streamed. Loading takes the configured time, as a real
// model's does, so what waits for it is tested for waiting.
//
// Its answers have vLLM's shapes, status codes and messages (held against a real vLLM by
// TestRealVLLM): errors as {"error": {"message", "type", "param", "code"}} with paths in messages
// redacted as vLLM redacts them, /v1/models entries as vLLM lists them (in load order), an
// adapter above the server's maximum rank refused with vLLM's message. Where it differs: it
// answers 503 while the model loads (vLLM does not listen until it has loaded), and it checks an
// adapter's adapter_config.json (and its rank) but not its weights.
type Server struct {
	// Base is the served base model's name (vLLM's --served-model-name).
	Base string
	// Describe names what a real deployment would run, for the answers.
	Describe string
	// Root is the model as vLLM was given it (its Hugging Face id or directory), which /v1/models
	// reports as the base model's root; empty: Base.
	Root string
	// MaxModelLen is the base model's context length /v1/models reports (--max-model-len); 0:
	// not reported (null).
	MaxModelLen int
	// MaxLoRARank is the highest adapter rank the server loads (--max-lora-rank); 0: vLLM's
	// default, 16.
	MaxLoRARank int
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
	loras   []simLoRA // in load order, as vLLM lists them
}

type simLoRA struct{ name, path string }

// For is a Server for a model server started with vLLM's args (`vllm serve`'s, as
// the inference pod's model container has them): the served name, the model, its context length
// and the highest adapter rank it loads.
func For(args []string) *Server {
	value := func(flag string) string {
		if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
			return args[i+1]
		}
		return ""
	}
	s := &Server{Base: value("--served-model-name"), Root: value("--model")}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		s.Root = args[0] // the positional model wins over --model, as in vllm serve
	}
	if s.Base == "" {
		s.Base = s.Root
	}
	s.Describe = s.Base
	s.MaxModelLen, _ = strconv.Atoi(value("--max-model-len"))
	s.MaxLoRARank, _ = strconv.Atoi(value("--max-lora-rank"))
	return s
}

// Handler returns the runtime's routes.
func (s *Server) Handler() http.Handler {
	s.once.Do(func() { s.readyAt = time.Now().Add(s.LoadDelay) })
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Ready() {
			vllmError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", "loading the model (sim)", "")
			return
		}
		// vLLM's health check answers 200 with an empty body.
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /v1/models", s.models)
	mux.HandleFunc("POST /v1/load_lora_adapter", s.loadLoRA)
	mux.HandleFunc("POST /v1/unload_lora_adapter", s.unloadLoRA)
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) { s.complete(w, r, true) })
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) { s.complete(w, r, false) })
	// FastAPI's answer for a route the server does not have.
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"detail":"Not Found"}`))
	})
	return mux
}

// ReadyAt is when the simulated model has loaded (zero before Handler is called).
func (s *Server) ReadyAt() time.Time { return s.readyAt }

// Ready reports whether the simulated model has loaded.
func (s *Server) Ready() bool { return !time.Now().Before(s.readyAt) }

// LoRAs are the loaded adapters' names, sorted.
func (s *Server) LoRAs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, len(s.loras))
	for i, l := range s.loras {
		names[i] = l.name
	}
	slices.Sort(names)
	return names
}

func (s *Server) lora(name string) (simLoRA, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.loras, func(l simLoRA) bool { return l.name == name })
	if i < 0 {
		return simLoRA{}, false
	}
	return s.loras[i], true
}

// models lists the base model, then each adapter in the order it was loaded, as vLLM does: an
// adapter's root is its path, its parent the base model.
func (s *Server) models(w http.ResponseWriter, _ *http.Request) {
	now := time.Now().Unix()
	entry := func(id, root string, parent, maxLen any) map[string]any {
		return map[string]any{"id": id, "object": "model", "created": now, "owned_by": "vllm", "root": root, "parent": parent,
			"max_model_len": maxLen, "permission": []any{map[string]any{
				"id": "modelperm-" + randomHex(8), "object": "model_permission", "created": now, "allow_create_engine": false,
				"allow_sampling": true, "allow_logprobs": true, "allow_search_indices": false, "allow_view": true,
				"allow_fine_tuning": false, "organization": "*", "group": nil, "is_blocking": false}}}
	}
	var maxLen any
	if s.MaxModelLen > 0 {
		maxLen = s.MaxModelLen
	}
	root := s.Root
	if root == "" {
		root = s.Base
	}
	data := []map[string]any{entry(s.Base, root, nil, maxLen)}
	s.mu.Lock()
	for _, l := range s.loras {
		data = append(data, entry(l.name, l.path, s.Base, nil))
	}
	s.mu.Unlock()
	writeJSON(w, map[string]any{"object": "list", "data": data})
}

// loadLoRA answers as vLLM does: 400 for a missing field (the request's validation), an empty
// one, a name taken by the base model or by an adapter loaded before (unless load_inplace); 404
// when the path holds no adapter_config.json; 500 with the worker's message for an adapter above
// the maximum rank; 200 with a line of text on success. The adapter's files must really be there,
// so a pull that did not happen fails here.
func (s *Server) loadLoRA(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name    string `json:"lora_name"`
		Path    string `json:"lora_path"`
		Inplace bool   `json:"load_inplace"`
	}
	if !decodeRequest(w, r, &req, "lora_name", "lora_path") {
		return
	}
	if !s.Ready() {
		vllmError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", "the model is still loading (sim)", "")
		return
	}
	_, taken := s.lora(req.Name)
	switch {
	case req.Name == "" || req.Path == "":
		vllmError(w, http.StatusBadRequest, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.", "")
		return
	case req.Name == s.Base:
		vllmError(w, http.StatusBadRequest, "InvalidUserInput", fmt.Sprintf("The lora adapter '%s' conflicts with a served base model.", req.Name), "")
		return
	case taken && !req.Inplace:
		vllmError(w, http.StatusBadRequest, "InvalidUserInput",
			fmt.Sprintf("The lora adapter '%s' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True.", req.Name), "")
		return
	}
	dir := req.Path
	if s.Files != nil {
		dir = s.Files(dir)
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "adapter_config.json"))
	if err != nil {
		vllmError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("Loading lora %s failed: No adapter found for %s", req.Name, req.Path), "")
		return
	}
	if rank := loraRank(cfg); rank > cmp.Or(s.MaxLoRARank, 16) {
		// The engine's worker refuses it; the API server reports the failed call.
		vllmError(w, http.StatusInternalServerError, "InternalServerError", fmt.Sprintf(
			"Call to add_lora method failed: Worker failed with error 'LoRA rank %d is greater than max_lora_rank %d.', please check the stack "+
				"trace above for the root cause",
			rank, cmp.Or(s.MaxLoRARank, 16)), "")
		return
	}
	select {
	case <-time.After(s.LoRALoadDelay):
	case <-r.Context().Done():
		return
	}
	s.mu.Lock()
	if i := slices.IndexFunc(s.loras, func(l simLoRA) bool { return l.name == req.Name }); i >= 0 {
		s.loras[i].path = req.Path // in place
	} else {
		s.loras = append(s.loras, simLoRA{req.Name, req.Path})
	}
	s.mu.Unlock()
	textOK(w, fmt.Sprintf("Success: LoRA adapter '%s' added successfully.", req.Name))
}

func (s *Server) unloadLoRA(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"lora_name"`
	}
	if !decodeRequest(w, r, &req, "lora_name") {
		return
	}
	if req.Name == "" {
		vllmError(w, http.StatusBadRequest, "InvalidUserInput", "'lora_name' needs to be provided to unload a LoRA adapter.", "")
		return
	}
	s.mu.Lock()
	n := len(s.loras)
	s.loras = slices.DeleteFunc(s.loras, func(l simLoRA) bool { return l.name == req.Name })
	gone := len(s.loras) < n
	s.mu.Unlock()
	if !gone {
		vllmError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("The lora adapter '%s' cannot be found.", req.Name), "")
		return
	}
	textOK(w, fmt.Sprintf("Success: LoRA adapter '%s' removed successfully.", req.Name))
}

// loraRank is an adapter's rank from its adapter_config.json: r, or the highest of its
// rank_pattern; 0 when the file does not say.
func loraRank(config []byte) int {
	var c struct {
		R           int            `json:"r"`
		RankPattern map[string]int `json:"rank_pattern"`
	}
	_ = json.Unmarshal(config, &c)
	rank := c.R
	for _, r := range c.RankPattern {
		rank = max(rank, r)
	}
	return rank
}

func (s *Server) served(model string) (string, bool) {
	if model == s.Base {
		return s.Describe, true
	}
	if _, ok := s.lora(model); ok {
		return s.Describe + " with adapter " + model, true
	}
	return "", false
}

// completion is one answer being written: what the request asked and the words of the answer.
type completion struct {
	id, object, model string
	created           int64
	chat              bool
	words             []string
	finish            string
	usage             map[string]int
}

func (s *Server) complete(w http.ResponseWriter, r *http.Request, chat bool) {
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
	var required []string
	if chat {
		required = []string{"messages"}
	}
	if !decodeRequest(w, r, &req, required...) {
		return
	}
	if !s.Ready() {
		vllmError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", "the model is still loading (sim)", "")
		return
	}
	if req.Model == "" {
		req.Model = s.Base // vLLM answers a request that names no model with the base model
	}
	describe, ok := s.served(req.Model)
	if !ok {
		vllmError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("The model `%s` does not exist. Valid aliases: %s.", req.Model, s.Base), "model")
		return
	}
	prompt := fmt.Sprint(req.Prompt)
	if chat {
		if len(req.Messages) == 0 {
			vllmError(w, http.StatusBadRequest, "BadRequestError", "Cannot apply chat template to an empty conversation. Provide at least one message.", "")
			return
		}
		prompt = req.Messages[len(req.Messages)-1].Content
	}
	c := newCompletion(chat, req.Model, prompt, describe, req.MaxTokens)
	if req.Stream {
		s.stream(w, r, c)
		return
	}
	choice := map[string]any{"index": 0, "logprobs": nil, "finish_reason": c.finish, "stop_reason": nil}
	if chat {
		choice["message"] = map[string]any{"role": "assistant", "content": strings.Join(c.words, " ")}
	} else {
		choice["text"] = strings.Join(c.words, " ")
	}
	writeJSON(w, map[string]any{"id": c.id, "object": c.object, "created": c.created, "model": c.model, "choices": []any{choice},
		"usage": c.usage, "system_fingerprint": "kaitoflow-sim"})
}

// newCompletion is the sim's answer to prompt: it says no model ran and echoes the prompt, cut to
// maxTokens words when that is fewer.
func newCompletion(chat bool, model, prompt, describe string, maxTokens int) completion {
	c := completion{id: "cmpl-" + randomHex(8), object: "text_completion", model: model, created: time.Now().Unix(), chat: chat, finish: "stop"}
	if chat {
		c.id, c.object = "chatcmpl-"+randomHex(8), "chat.completion"
	}
	c.words = strings.Fields(fmt.Sprintf("[sim] no model is loaded; %s would answer here. You said: %s", describe, prompt))
	if maxTokens > 0 && maxTokens < len(c.words) {
		c.words, c.finish = c.words[:maxTokens], "length"
	}
	promptTokens := len(strings.Fields(prompt))
	c.usage = map[string]int{"prompt_tokens": promptTokens, "completion_tokens": len(c.words), "total_tokens": promptTokens + len(c.words)}
	return c
}

// stream writes c as vLLM streams, a chunk a token: chat chunks are chat.completion.chunk and open
// with the role, completion chunks keep the object text_completion; the last token's chunk carries
// the finish reason. A generation that stops on its own ends with the end token's chunk, which has
// no text.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, c completion) {
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	flusher, _ := w.(http.Flusher)
	send := func(text string, finish any, role bool) bool {
		if _, err := fmt.Fprintf(w, "data: %s\n\n", c.chunk(text, finish, role)); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	if c.chat && !send("", nil, true) {
		return
	}
	for i, word := range c.words {
		if i > 0 {
			word = " " + word
		}
		var finished any
		if i == len(c.words)-1 && c.finish == "length" {
			finished = c.finish
		}
		if !send(word, finished, false) {
			return
		}
		if s.TokenDelay > 0 {
			select {
			case <-time.After(s.TokenDelay):
			case <-r.Context().Done():
				return
			}
		}
	}
	if c.finish == "stop" && !send("", c.finish, false) {
		return
	}
	_, _ = fmt.Fprint(w, "data: [DONE]\n\n")
	if flusher != nil {
		flusher.Flush()
	}
}

// chunk is one streamed chunk's JSON: text, the finish reason (nil but on the last), and for a
// chat's first chunk the role.
func (c completion) chunk(text string, finish any, role bool) []byte {
	choice := map[string]any{"index": 0, "logprobs": nil, "finish_reason": finish}
	chunk := map[string]any{"id": c.id, "object": c.object, "created": c.created, "model": c.model, "choices": []any{choice}}
	if c.chat {
		delta := map[string]string{"content": text}
		if role {
			delta["role"] = "assistant"
		}
		choice["delta"], chunk["object"] = delta, "chat.completion.chunk"
	} else {
		choice["text"] = text
	}
	b, _ := json.Marshal(chunk)
	return b
}

// decodeRequest reads a JSON request body into v, answering as vLLM's request validation does
// (400, type "Bad Request", pydantic's message) when it is not JSON or lacks a required field.
func decodeRequest(w http.ResponseWriter, r *http.Request, v any, required ...string) bool {
	var body bytes.Buffer
	_, _ = body.ReadFrom(r.Body)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body.Bytes(), &fields); err != nil || fields == nil {
		validationError(w, []string{"{'type': 'json_invalid', 'loc': 'body.0', 'msg': 'JSON decode error', 'input': '<dict of 0 items>', 'ctx': " +
			"{'error': 'Expecting value'}}"}, "body.0")
		return false
	}
	var problems []string
	param := ""
	for _, f := range required {
		if _, ok := fields[f]; !ok {
			problems = append(problems, fmt.Sprintf("{'type': 'missing', 'loc': 'body.%s', 'msg': 'Field required', 'input': '<dict of %d items>'}",
				f, len(fields)))
			if param == "" {
				param = "body." + f
			}
		}
	}
	if len(problems) > 0 {
		validationError(w, problems, param)
		return false
	}
	if err := json.Unmarshal(body.Bytes(), v); err != nil {
		validationError(w, []string{fmt.Sprintf("{'type': 'value_error', 'loc': 'body', 'msg': %q}", err.Error())}, "body")
		return false
	}
	return true
}

func validationError(w http.ResponseWriter, problems []string, param string) {
	plural := "s"
	if len(problems) == 1 {
		plural = ""
	}
	vllmError(w, http.StatusBadRequest, "Bad Request", fmt.Sprintf("%d validation error%s:\n  %s", len(problems), plural, strings.Join(problems,
		"\n  ")), param)
}

// vllmError answers with vLLM's error body: {"error": {"message", "type", "param", "code"}}, the
// message with file paths redacted as vLLM redacts them.
func vllmError(w http.ResponseWriter, code int, typ, message, param string) {
	type info struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    int     `json:"code"`
	}
	e := info{Message: redactPaths(message), Type: typ, Code: code}
	if param != "" {
		e.Param = &param
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // <path> as vLLM writes it
	_ = enc.Encode(struct {
		Error info `json:"error"`
	}{e})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}

// vLLM replaces what looks like a file path in an error message with <path>: absolute paths under
// the usual top-level directories, and any path to a file with an extension.
var (
	systemPath = regexp.MustCompile(`/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+`)
	filePath   = regexp.MustCompile(`(?:/[\w\-]+)+/[\w\-]+\.\w+`)
)

func redactPaths(message string) string {
	return strings.TrimSpace(filePath.ReplaceAllString(systemPath.ReplaceAllString(message, "<path>"), "<path>"))
}

// textOK is vLLM's answer to a runtime LoRA call that succeeded: 200 and a line of text, with no
// content type.
func textOK(w http.ResponseWriter, msg string) {
	w.Header()["Content-Type"] = nil // not sniffed: vLLM sends none
	w.Header().Set("Content-Length", strconv.Itoa(len(msg)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(msg))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
