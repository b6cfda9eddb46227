package chatproxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/dataplane/vllmsim"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// With ModelMetrics, chat-proxy serves the model server's GET /metrics for an endpoint picker, the
// loaded adapters under the public names requests carry (a canary's candidate too); without it,
// there is no /metrics on the routed port.
func TestModelMetricsNameAdaptersAsClientsDo(t *testing.T) {
	ctx := context.Background()
	host := testenv.Registry(t)
	v1, v2 := testenv.PushAdapter(t, host, "ws", "v1"), testenv.PushAdapter(t, host, "ws", "v2")
	m := newManager(t, &vllmsim.Server{Base: "phi-3"})
	if err := m.Apply(ctx, canarySet(1, v1, v2, 10)); err != nil {
		t.Fatal(err)
	}
	metrics := "# HELP vllm:num_requests_waiting waiting\nvllm:num_requests_waiting{model_name=\"phi-3\"} 2.0\n" +
		"vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"" + loraName("ws", v1) + "," + loraName("ws", v2) +
		",other\",waiting_lora_adapters=\"" + loraName("ws", v2) + "\"} 1.7e+09\n"
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			_, _ = io.WriteString(w, metrics)
		}
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	get := func(modelMetrics bool) (int, string) {
		srv := httptest.NewServer((&Proxy{Upstream: u, Adapters: m, ModelMetrics: modelMetrics}).Handler())
		defer srv.Close()
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get(true)
	if code != http.StatusOK || !strings.Contains(body, `running_lora_adapters="ws,other",waiting_lora_adapters="ws"`) ||
		!strings.Contains(body, `vllm:num_requests_waiting{model_name="phi-3"} 2.0`) {
		t.Errorf("/metrics: %d\n%s", code, body)
	}
	if code, _ := get(false); code == http.StatusOK {
		t.Error("/metrics served without ModelMetrics")
	}
}
