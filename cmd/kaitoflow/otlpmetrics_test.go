package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	"google.golang.org/protobuf/proto"

	"github.com/kaitoflow/kaitoflow/internal/compose/sources"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// A function Knative scales to zero is gone before a scrape finds it: with an OTLP endpoint in
// its environment it pushes its metrics, the last ones as it stops. Here `fn signals` takes one
// PingSource event over HTTP, is stopped, and an OTLP/HTTP receiver (a stand-in for a collector
// that decodes the protobuf request as one would) holds kaitoflow_events_handled_total for it,
// with the function's service name; the export interval is an hour, so only the push at shutdown
// can have carried it.
func TestFunctionPushesItsMetricsWhenItStops(t *testing.T) {
	var mu sync.Mutex
	var got []*colmetricpb.ExportMetricsServiceRequest
	otlp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		var req colmetricpb.ExportMetricsServiceRequest
		if err == nil && r.URL.Path == "/v1/metrics" {
			err = proto.Unmarshal(b, &req)
		}
		if err != nil || r.URL.Path != "/v1/metrics" {
			http.Error(w, "want OTLP/HTTP protobuf on /v1/metrics", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, &req)
		mu.Unlock()
	}))
	defer otlp.Close()
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	defer sink.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.URL)
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_TRACES_EXPORTER", "none")

	addr := testenv.FreeAddr(t)
	var out bytes.Buffer
	root := newRoot(&out, &out)
	root.SetArgs([]string{"--log-level", "error", "fn", sources.Name, "--transport", "http", "--listen", addr, "--sink", sink.URL})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	ping := func() (int, error) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader(`{}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Ce-Specversion", "1.0")
		req.Header.Set("Ce-Id", "ping-1")
		req.Header.Set("Ce-Source", "/apis/v1/namespaces/kaitoflow/pingsources/kaitoflow-tick")
		req.Header.Set("Ce-Type", sources.Ping)
		req.Header.Set("Ce-Time", time.Now().UTC().Format(time.RFC3339))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	testenv.Eventually(t, 20*time.Second, "the function to take the ping", func() bool {
		code, err := ping()
		return err == nil && code/100 == 2
	})
	mu.Lock()
	before := len(got)
	mu.Unlock()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("fn: %v\n%s", err, out.String())
	}
	if before != 0 {
		t.Fatalf("%d pushes before the function stopped, with an hour's interval", before)
	}
	mu.Lock()
	defer mu.Unlock()
	found := false
	for _, req := range got {
		for _, rm := range req.ResourceMetrics {
			service := ""
			for _, a := range rm.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					service = a.Value.GetStringValue()
				}
			}
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					if m.Name != "kaitoflow_events_handled_total" {
						continue
					}
					for _, dp := range m.GetSum().GetDataPoints() {
						for _, a := range dp.Attributes {
							if a.Key == "function" && a.Value.GetStringValue() == sources.Name && dp.GetAsDouble()+float64(dp.GetAsInt()) >= 1 {
								found = service == "kaitoflow-"+sources.Name
							}
						}
					}
				}
			}
		}
	}
	if !found {
		t.Errorf("no kaitoflow_events_handled_total{function=%q} from service kaitoflow-%s in %d pushes", sources.Name, sources.Name, len(got))
	}
}
