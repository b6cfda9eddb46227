package testenv

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// Hub stands in for the Hugging Face Hub's model-info and file API, named as a stand-in wherever a
// test uses it: the models it holds, gated ones answering 401 without the right bearer token as
// the Hub does, and a switch that makes it fail with 503.
type Hub struct {
	// URL is where it listens.
	URL string
	// Token is the bearer token gated models want.
	Token string

	mu     sync.Mutex
	models map[string]HubModel
	down   bool
	calls  []string
}

// HubModel is a model the stand-in holds: the commit its revisions resolve to, config.json, its
// files' sizes, and whether it is gated.
type HubModel struct {
	SHA, Config string
	Files       map[string]int64
	Gated       bool
}

// Commits of the models NewHub holds.
const (
	QwenSHA    = "c1899de289a04d12100db370d81485cdf75e47ca"
	Llama70SHA = "6f6073b423013f6a7d4d9f39144961bfbfbc386b"
	MistralSHA = "d8cadc02ac76bd617a919d50b092e59d2d110aff"
)

// NewHub starts a stand-in Hub holding five models with their config.json values: Qwen3-0.6B (an
// explicit head_dim), Llama-3.3-70B-Instruct (gated), Mistral-7B-v0.3 (two copies of its
// weights), Gemma 3 4B (a multimodal config) and DeepSeek-V3-0324 (an attention the estimator
// cannot size).
func NewHub(t testing.TB) *Hub {
	t.Helper()
	h := &Hub{Token: "hf_test_token", models: map[string]HubModel{
		"Qwen/Qwen3-0.6B": {SHA: QwenSHA, Files: map[string]int64{"model.safetensors": 1503300328, "config.json": 726, "README.md": 14000},
			Config: `{"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3","num_hidden_layers":28,"hidden_size":1024,"intermediate_size":3072,
			"num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,"vocab_size":151936,"tie_word_embeddings":true,"max_position_embeddings":40960}`},
		"meta-llama/Llama-3.3-70B-Instruct": {SHA: Llama70SHA, Gated: true,
			Files: map[string]int64{"model-00001-of-00002.safetensors": 70553706496, "model-00002-of-00002.safetensors": 70553706496},
			Config: `{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":80,"hidden_size":8192,"intermediate_size":28672,
			"num_attention_heads":64,"num_key_value_heads":8,"vocab_size":128256,"max_position_embeddings":131072}`},
		// The transformers shards and Mistral's consolidated copy of the same weights, as the repo has them.
		"mistralai/Mistral-7B-v0.3": {SHA: MistralSHA,
			Files: map[string]int64{"model-00001-of-00003.safetensors": 4949453792, "model-00002-of-00003.safetensors": 5000000000,
				"model-00003-of-00003.safetensors": 4546592512,
				"consolidated.safetensors":         14496078512, "tokenizer.model.v3": 587404},
			Config: `{"architectures":["MistralForCausalLM"],"model_type":"mistral","num_hidden_layers":32,"hidden_size":4096,"intermediate_size":14336,
			"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":32768,"max_position_embeddings":32768}`},
		// A multimodal config whose text_config leaves out what transformers defaults; an original/
		// folder of other weights beside the ones vLLM loads.
		"google/gemma-3-4b-it": {SHA: "093f9f388b31de276ce2de164bdc2081324b9767",
			Files: map[string]int64{"model-00001-of-00002.safetensors": 4961251752, "model-00002-of-00002.safetensors": 3639026128,
				"original/model.safetensors": 8600000000},
			Config: `{"architectures":["Gemma3ForConditionalGeneration"],"model_type":"gemma3",
			"text_config":{"model_type":"gemma3_text","hidden_size":2560,"intermediate_size":10240,"num_hidden_layers":34,"sliding_window":1024},
			"vision_config":{"model_type":"siglip_vision_model","hidden_size":1152}}`},
		"deepseek-ai/DeepSeek-V3-0324": {SHA: "e9b33add76883f293d6bf61f6bd89b497e80e335", Files: map[string]int64{"model.safetensors": 1 << 40},
			Config: `{"architectures":["DeepseekV3ForCausalLM"],"model_type":"deepseek_v3","num_hidden_layers":61,"hidden_size":7168,"num_attention_heads":128,"max_position_embeddings":163840}`},
	}}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	h.URL = srv.URL
	return h
}

// SetDown makes every request fail with 503 (or work again).
func (h *Hub) SetDown(down bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.down = down
}

// Calls returns the paths requested so far, and forgets them.
func (h *Hub) Calls() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.calls
	h.calls = nil
	return c
}

func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, r.URL.Path)
	if h.down {
		http.Error(w, "upstream unavailable", http.StatusServiceUnavailable)
		return
	}
	for repo, m := range h.models {
		if !strings.Contains(r.URL.Path, "/"+repo+"/") {
			continue
		}
		if m.Gated && r.Header.Get("Authorization") != "Bearer "+h.Token {
			http.Error(w, "Access to model "+repo+" is restricted", http.StatusUnauthorized)
			return
		}
		switch {
		case strings.HasPrefix(r.URL.Path, "/api/models/"+repo+"/revision/"):
			if r.URL.Query().Get("blobs") != "true" {
				http.Error(w, "no sizes without blobs=true", http.StatusBadRequest)
				return
			}
			var sib []string
			for name, size := range m.Files {
				sib = append(sib, fmt.Sprintf(`{"rfilename":%q,"size":%d}`, name, size))
			}
			fmt.Fprintf(w, `{"id":%q,"sha":%q,"siblings":[%s]}`, repo, m.SHA, strings.Join(sib, ","))
			return
		case r.URL.Path == "/"+repo+"/resolve/"+m.SHA+"/config.json":
			fmt.Fprint(w, m.Config)
			return
		}
	}
	http.Error(w, "Repository Not Found", http.StatusNotFound)
}
