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

	"github.com/kaitoflow/kaitoflow/functions/serve"
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
	proxy := httptest.NewServer((&serve.Proxy{Upstream: u, Model: "m"}).Handler())
	defer proxy.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	body := `{"model":"m","messages":[{"role":"user","content":"What is Kaito?"}]}`
	measure := func(base string, n int) []time.Duration {
		ds := make([]time.Duration, 0, n)
		for range n {
			start := time.Now()
			resp, err := client.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		return ds
	}
	for b.Loop() {
		measure(upstream.URL, 200) // warm both paths' connections
		measure(proxy.URL, 200)
		direct, via := measure(upstream.URL, 3000), measure(proxy.URL, 3000)
		p := func(ds []time.Duration, q float64) time.Duration { return ds[int(float64(len(ds)-1)*q)] }
		b.ReportMetric(float64(p(via, 0.99)-p(direct, 0.99))/1e3, "added-p99-µs")
		b.Logf("\n3000 requests\tp50\tp99\ndirect to the model server\t%s\t%s\nthrough chat-proxy\t%s\t%s\nadded by the proxy\t%s\t%s",
			p(direct, 0.5), p(direct, 0.99), p(via, 0.5), p(via, 0.99), p(via, 0.5)-p(direct, 0.5), p(via, 0.99)-p(direct, 0.99))
	}
}
