package bench

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
)

// BenchmarkChatProxy sends the same chat completion request straight to a model server and
// through `kaitoflow chat-proxy`, in the same run, and prints the latency each adds at p50/p99.
func BenchmarkChatProxy(b *testing.B) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"choices":[{"message":{"role":"assistant","content":"Kaito is an operator."}}]}`)
	}))
	defer upstream.Close()
	u, _ := url.Parse(upstream.URL)
	proxy := httptest.NewServer((&chatproxy.Proxy{Upstream: u, Model: "m"}).Handler())
	defer proxy.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	const n = 10000
	openai := `{"model":"m","messages":[{"role":"user","content":"What is Kaito?"}]}`
	kaito := `{"prompt":"What is Kaito?","generate_kwargs":{"max_new_tokens":64}}`
	do := func(url, body string) time.Duration {
		start := time.Now()
		resp, err := client.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("%s: HTTP %d", url, resp.StatusCode)
		}
		return time.Since(start)
	}
	// Alternate direct and proxied requests so both see the same noise on a shared machine.
	measure := func(viaPath, viaBody string) (direct, via []time.Duration) {
		for range 500 { // warm both paths' connections
			do(upstream.URL+"/v1/chat/completions", openai)
			do(proxy.URL+viaPath, viaBody)
		}
		for range n {
			direct = append(direct, do(upstream.URL+"/v1/chat/completions", openai))
			via = append(via, do(proxy.URL+viaPath, viaBody))
		}
		slices.Sort(direct)
		slices.Sort(via)
		return direct, via
	}
	p := func(ds []time.Duration, q float64) time.Duration { return ds[int(float64(len(ds)-1)*q)] }
	for b.Loop() {
		direct, via := measure("/v1/chat/completions", openai)
		_, chat := measure("/chat", kaito)
		b.ReportMetric(float64(p(via, 0.99)-p(direct, 0.99))/1e3, "added-p99-µs")
		b.ReportMetric(float64(p(chat, 0.99)-p(direct, 0.99))/1e3, "chat-added-p99-µs")
		b.Logf("\n%d requests each\tp50\tp99\ndirect to the model server\t%s\t%s\nthrough chat-proxy (/v1 passthrough)\t%s\t%s\nthrough chat-proxy (Kaito /chat translated)\t%s\t%s\nadded by the proxy (/v1)\t%s\t%s\nadded by the proxy (/chat)\t%s\t%s",
			n, p(direct, 0.5), p(direct, 0.99), p(via, 0.5), p(via, 0.99), p(chat, 0.5), p(chat, 0.99),
			p(via, 0.5)-p(direct, 0.5), p(via, 0.99)-p(direct, 0.99), p(chat, 0.5)-p(direct, 0.5), p(chat, 0.99)-p(direct, 0.99))
	}
}
