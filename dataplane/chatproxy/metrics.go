package chatproxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// maxModelMetrics bounds the model server's GET /metrics answer passed through (vLLM's is tens of
// KiB; histograms per model grow it).
const maxModelMetrics = 8 << 20

// loraLists are the labels of vLLM's vllm:lora_requests_info that list adapters by name.
var loraLists = regexp.MustCompile(`(running_lora_adapters|waiting_lora_adapters)="([^"]*)"`)

// modelMetrics answers GET /metrics with the model server's, for an endpoint picker that scrapes
// each pod where it sends requests (the Gateway API Inference Extension's): queue depth and KV-cache
// use as vLLM reports them, and in vllm:lora_requests_info each loaded adapter under the public
// name requests carry (a candidate and the adapter it is compared with both under theirs), so the
// picker's LoRA affinity matches what clients ask for. The answer is bounded and cut off after 5 s.
func (p *Proxy) modelMetrics(w http.ResponseWriter, r *http.Request, client *http.Client) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	resp := p.upstreamGet(ctx, w, client, "/metrics")
	if resp == nil {
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxModelMetrics+1))
	if err != nil || len(body) > maxModelMetrics || resp.StatusCode != http.StatusOK {
		Problem(w, http.StatusBadGateway, "model server: GET /metrics: "+resp.Status)
		return
	}
	if p.Adapters != nil {
		body = publicLoRANames(body, p.Adapters.publicNames())
	}
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	_, _ = w.Write(body)
}

// publicNames maps each adapter the applied set loads to the public name it answers for.
func (m *AdapterManager) publicNames() map[string]string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := map[string]string{}
	for public, adapter := range m.applied.Routes {
		out[adapter] = public
	}
	for public, c := range m.applied.Canaries {
		out[c.Adapter] = public
	}
	return out
}

// publicLoRANames rewrites the adapter lists of vllm:lora_requests_info lines from the names
// adapters are loaded under to their public names (each once, in order); other lines pass as
// they are.
func publicLoRANames(metrics []byte, public map[string]string) []byte {
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(metrics))
	sc.Buffer(make([]byte, 64<<10), maxModelMetrics)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "vllm:lora_requests_info{") {
			line = loraLists.ReplaceAllStringFunc(line, func(m string) string {
				sub := loraLists.FindStringSubmatch(m)
				var names []string
				for _, n := range strings.Split(sub[2], ",") {
					if p, ok := public[n]; ok {
						n = p
					}
					if n != "" && !slices.Contains(names, n) {
						names = append(names, n)
					}
				}
				return sub[1] + `="` + strings.Join(names, ",") + `"`
			})
		}
		out.WriteString(line)
		out.WriteByte('\n')
	}
	return out.Bytes()
}
