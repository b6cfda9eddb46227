package api_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/compose/api"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// Watch streams are bounded: with MaxWatches open, one more is answered 429 with Retry-After
// (each holds a JetStream watcher for as long as its client stays), and a stream that ends gives
// its place back. Against a real nats-server and the status store.
func TestWatchStreamsAreBounded(t *testing.T) {
	ctx := context.Background()
	store, err := status.Open(ctx, testenv.JetStream(t), runtime.Storage{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer((&api.Server{Store: store, MaxWatches: 1}).Handler())
	defer srv.Close()
	open := func(ctx context.Context) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/workspaces?watch=true", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	first, cancel := context.WithCancel(ctx)
	resp := open(first)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the first watch: %d", resp.StatusCode)
	}
	second := open(ctx)
	second.Body.Close()
	if second.StatusCode != http.StatusTooManyRequests || second.Header.Get("Retry-After") == "" {
		t.Fatalf("a watch over the bound: %d (Retry-After %q), want 429 with Retry-After", second.StatusCode, second.Header.Get("Retry-After"))
	}
	cancel()
	resp.Body.Close()
	testenv.Eventually(t, 10*time.Second, "the closed watch's place", func() bool {
		r := open(ctx)
		r.Body.Close()
		return r.StatusCode == http.StatusOK
	})
}
