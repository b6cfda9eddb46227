package presets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// Models that are not in the catalog are read from the Hugging Face Hub when a plan needs them:
// Kaito's presets that kaitoflow keeps by name only (the hub section of models.yaml), and any
// Hugging Face repository id a workspace names as its preset (org/name, optionally @revision), as
// Kaito serves them since v0.9. The model's config.json gives the architecture, the sizes of its
// weight files give the memory the weights take, in whatever precision the checkpoint has.

// HubPreset is a Kaito preset name and the Hugging Face model and revision Kaito serves for it.
type HubPreset struct {
	Name        string `json:"name"`
	HuggingFace string `json:"huggingFace"`
	Revision    string `json:"revision"`
	// Tuning is where Kaito allows tuning the preset.
	Tuning bool `json:"tuning"`
	// Gated models need presetOptions.modelAccessSecret.
	Gated bool `json:"gated,omitempty"`
}

// HubRef is a model to read from the Hub: a Kaito preset kept by name, or a repository id.
type HubRef struct {
	// Name is the preset as the workspace named it.
	Name     string
	Repo     string
	Revision string
	Tuning   bool
	Gated    bool
}

// hubID is a Hugging Face repository id (owner/name) with an optional @revision.
var hubID = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9._-]{0,95})/([A-Za-z0-9][A-Za-z0-9._-]{0,95})(?:@([A-Za-z0-9][A-Za-z0-9._/-]{0,127}))?$`)

// ParseHubID splits a preset name of the form owner/name[@revision]; ok is false for any other
// name.
func ParseHubID(name string) (repo, revision string, ok bool) {
	m := hubID.FindStringSubmatch(name)
	if m == nil || strings.Contains(m[3], "..") {
		return "", "", false
	}
	return m[1] + "/" + m[2], m[3], true
}

// Resolve finds what a preset name stands for: a catalog model (by name, Kaito alias or its
// Hugging Face id at the pinned revision), or a model to read from the Hub (a Kaito preset kept by
// name, or any repository id). An unknown name that is not a repository id is an ErrUnknown.
func (c *Catalog) Resolve(name string) (*Model, *HubRef, error) {
	if m, err := c.Model(name); err == nil {
		return m, nil, nil
	}
	for _, h := range c.Hub {
		if strings.EqualFold(h.Name, name) {
			return nil, &HubRef{Name: name, Repo: h.HuggingFace, Revision: h.Revision, Tuning: h.Tuning, Gated: h.Gated}, nil
		}
	}
	repo, rev, ok := ParseHubID(name)
	if !ok {
		return nil, nil, fmt.Errorf("%w preset %q%s: not a preset name (%s, and Kaito's %s) or a Hugging Face repository id (owner/name[@revision])",
			ErrUnknown, name, didYouMean(name, append(c.ModelNames(), c.HubNames()...)), strings.Join(c.ModelNames(), ", "), strings.Join(c.HubNames(), ", "))
	}
	for i := range c.Models {
		m := &c.Models[i]
		if strings.EqualFold(m.HuggingFace, repo) && (rev == "" || rev == m.Revision) {
			return m, nil, nil
		}
	}
	// Kaito's presets by their id: Kaito's pin, gating and tuning.
	for _, h := range c.Hub {
		if strings.EqualFold(h.HuggingFace, repo) && (rev == "" || rev == h.Revision) {
			return nil, &HubRef{Name: name, Repo: h.HuggingFace, Revision: h.Revision, Tuning: h.Tuning, Gated: h.Gated}, nil
		}
	}
	return nil, &HubRef{Name: name, Repo: repo, Revision: rev}, nil
}

// HubNames lists the Kaito presets read from the Hub.
func (c *Catalog) HubNames() []string {
	names := make([]string, len(c.Hub))
	for i, h := range c.Hub {
		names[i] = h.Name
	}
	return names
}

// TunableNames lists every preset name that may be tuned.
func (c *Catalog) TunableNames() []string {
	var names []string
	for _, m := range c.Models {
		if m.Tuning {
			names = append(names, m.Name)
		}
	}
	for _, h := range c.Hub {
		if h.Tuning {
			names = append(names, h.Name)
		}
	}
	return names
}

// HubModel is what the Hub says of a model at a revision.
type HubModel struct {
	Repo string
	// SHA is the commit the revision resolved to: plans pin it.
	SHA string
	// Config is config.json.
	Config []byte
	// WeightBytes is the size of the weight files (safetensors, else PyTorch .bin).
	WeightBytes int64
}

// HubError is the Hub's refusal, with its HTTP status.
type HubError struct {
	Status int
	URL    string
	Body   string
}

func (e *HubError) Error() string {
	return fmt.Sprintf("%s: HTTP %d %s", e.URL, e.Status, e.Body)
}

// Permanent reports whether asking again cannot help: any 4xx but 429.
func (e *HubError) Permanent() bool {
	return e.Status >= 400 && e.Status < 500 && e.Status != http.StatusTooManyRequests
}

// Hub reads model metadata from the Hugging Face Hub's HTTP API, or a mirror of it.
type Hub struct {
	// BaseURL is the Hub's address; empty means https://huggingface.co.
	BaseURL string
	// Client makes the requests; callers give one that enforces their address policy.
	Client *http.Client
}

// Model reads repo's model info at revision ("" means main; the answer pins the commit) and its
// config.json at that commit. The token, when given, is sent as a bearer token (gated models).
func (h *Hub) Model(ctx context.Context, repo, revision, token string) (*HubModel, error) {
	base := strings.TrimSuffix(h.BaseURL, "/")
	if base == "" {
		base = "https://huggingface.co"
	}
	if revision == "" {
		revision = "main"
	}
	var info struct {
		SHA      string `json:"sha"`
		Siblings []struct {
			Name string `json:"rfilename"`
			Size int64  `json:"size"`
		} `json:"siblings"`
	}
	// blobs=true adds each file's size, which is how the weights are sized.
	infoURL := base + "/api/models/" + repo + "/revision/" + url.PathEscape(revision) + "?blobs=true"
	b, err := h.get(ctx, infoURL, token, 16<<20)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &info); err != nil || info.SHA == "" {
		return nil, fmt.Errorf("%s: not a model info document: %w", infoURL, err)
	}
	m := &HubModel{Repo: repo, SHA: info.SHA}
	// What vLLM loads: the root's safetensors (transformers' model*.safetensors rather than
	// Mistral's consolidated*.safetensors copy when both are there; never a subfolder's, such as
	// original/), else PyTorch .bin files.
	var hf, consolidated, bins int64
	for _, s := range info.Siblings {
		switch {
		case strings.Contains(s.Name, "/"):
		case strings.HasSuffix(s.Name, ".safetensors") && strings.HasPrefix(s.Name, "consolidated"):
			consolidated += s.Size
		case strings.HasSuffix(s.Name, ".safetensors"):
			hf += s.Size
		case strings.HasSuffix(s.Name, ".bin") && strings.HasPrefix(s.Name, "pytorch_model"):
			bins += s.Size
		}
	}
	for _, n := range []int64{hf, consolidated, bins} {
		if n > 0 {
			m.WeightBytes = n
			break
		}
	}
	if m.Config, err = h.get(ctx, base+"/"+repo+"/resolve/"+info.SHA+"/config.json", token, 4<<20); err != nil {
		return nil, err
	}
	return m, nil
}

func (h *Hub) get(ctx context.Context, u, token string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := h.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &HubError{Status: resp.StatusCode, URL: u, Body: firstLine(string(b))}
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: more than %d bytes", u, limit)
	}
	return b, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// hubConfig is the part of a transformers config.json the estimator needs. Multimodal models
// (Gemma 3, Mistral 3) keep the language model's under text_config.
type hubConfig struct {
	ModelType             string     `json:"model_type"`
	Architectures         []string   `json:"architectures"`
	Layers                int        `json:"num_hidden_layers"`
	HiddenSize            int        `json:"hidden_size"`
	IntermediateSize      int        `json:"intermediate_size"`
	Heads                 int        `json:"num_attention_heads"`
	KVHeads               int        `json:"num_key_value_heads"`
	HeadDim               int        `json:"head_dim"`
	Vocab                 int        `json:"vocab_size"`
	TiedEmbeddings        bool       `json:"tie_word_embeddings"`
	MaxPositionEmbeddings int        `json:"max_position_embeddings"`
	TextConfig            *hubConfig `json:"text_config"`
}

// textDefaults are the values transformers gives a text config's fields that a multimodal model's
// config.json leaves out (Gemma 3's text_config names little more than its sizes).
var textDefaults = map[string]hubConfig{
	"gemma3_text": {Heads: 8, KVHeads: 4, HeadDim: 256, Vocab: 262208, MaxPositionEmbeddings: 131072},
}

// withDefaults fills a text_config's missing fields from the model type's defaults, then from
// the outer config.
func withDefaults(text, outer hubConfig) hubConfig {
	if text.ModelType == "" {
		text.ModelType = outer.ModelType
	}
	for _, d := range []hubConfig{textDefaults[text.ModelType], outer} {
		pick := func(v *int, def int) {
			if *v == 0 {
				*v = def
			}
		}
		pick(&text.Layers, d.Layers)
		pick(&text.HiddenSize, d.HiddenSize)
		pick(&text.IntermediateSize, d.IntermediateSize)
		pick(&text.Heads, d.Heads)
		pick(&text.KVHeads, d.KVHeads)
		pick(&text.HeadDim, d.HeadDim)
		pick(&text.Vocab, d.Vocab)
		pick(&text.MaxPositionEmbeddings, d.MaxPositionEmbeddings)
	}
	return text
}

// hubFamilies are the model types whose attention the estimator's KV cache formula describes
// (grouped-query attention with num_key_value_heads), by the LoRA module names they use.
var hubFamilies = map[string]string{
	"llama": "llama", "mistral": "llama", "mixtral": "llama", "qwen2": "llama", "qwen2_moe": "llama",
	"qwen3": "llama", "qwen3_moe": "llama", "gemma": "llama", "gemma2": "llama", "gemma3": "llama",
	"gemma3_text": "llama", "mistral3": "llama", "ministral3": "llama", "granite": "llama", "gpt_oss": "llama", "phi3": "phi3",
}

// defaultLoRATargets are the modules LoRA adapts in a family when the preset names none.
func defaultLoRATargets(family string) []string {
	if family == "phi3" {
		return []string{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
	}
	return []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
}

// ModelFromHub makes a preset of a model read from the Hub. The weights are sized by their files
// (a quantized checkpoint counts as what it is), the KV cache by the config's layers and heads. An
// architecture whose attention the estimator cannot size is refused, naming it.
func ModelFromHub(ref *HubRef, hm *HubModel) (*Model, error) {
	var c hubConfig
	if err := json.Unmarshal(hm.Config, &c); err != nil {
		return nil, fmt.Errorf("%s config.json: %w", hm.Repo, err)
	}
	text := c
	if c.TextConfig != nil {
		text = withDefaults(*c.TextConfig, c)
	}
	family, ok := hubFamilies[text.ModelType]
	if !ok {
		known := make([]string, 0, len(hubFamilies))
		for k := range hubFamilies {
			known = append(known, k)
		}
		slices.Sort(known)
		return nil, fmt.Errorf("%w architecture %s (model_type %q) of %s: kaitoflow sizes %s", ErrUnknown,
			strings.Join(c.Architectures, ", "), text.ModelType, hm.Repo, strings.Join(known, ", "))
	}
	if text.KVHeads == 0 {
		text.KVHeads = text.Heads
	}
	if text.Layers <= 0 || text.HiddenSize <= 0 || text.Heads <= 0 || text.MaxPositionEmbeddings <= 0 {
		return nil, fmt.Errorf("%s config.json (model_type %s): num_hidden_layers, hidden_size, num_attention_heads and max_position_embeddings are "+
			"required", hm.Repo, c.ModelType)
	}
	if text.HeadDim == 0 && text.HiddenSize < text.Heads {
		return nil, fmt.Errorf("%s config.json: hidden_size %d is smaller than num_attention_heads %d and there is no head_dim", hm.Repo,
			text.HiddenSize, text.Heads)
	}
	if hm.WeightBytes <= 0 {
		return nil, fmt.Errorf("%s at %s has no safetensors or PyTorch weight files", hm.Repo, hm.SHA)
	}
	m := &Model{
		Name: ref.Name, HuggingFace: hm.Repo, Revision: hm.SHA,
		// Parameters stand for the weights' bytes at 16 bits each, which is what the estimator
		// multiplies back out.
		Parameters: hm.WeightBytes / bytes16,
		Architecture: Architecture{Family: family, Layers: text.Layers, HiddenSize: text.HiddenSize,
			IntermediateSize: text.IntermediateSize, Heads: text.Heads, KVHeads: text.KVHeads, HeadDimension: text.HeadDim,
			Vocab: text.Vocab, TiedEmbeddings: text.TiedEmbeddings || c.TiedEmbeddings},
		MaxContext: text.MaxPositionEmbeddings,
		Tuning:     ref.Tuning,
		Gated:      ref.Gated,
	}
	if m.Tuning {
		m.LoRATargets = defaultLoRATargets(family)
	}
	return m, nil
}

// IsHubRefusal reports whether err is the Hub refusing a request for good (a 4xx but 429).
func IsHubRefusal(err error) bool {
	var he *HubError
	return errors.As(err, &he) && he.Permanent()
}
