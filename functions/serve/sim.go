package serve

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/kaitoflow/kaitoflow/events"
)

// Sim is the simulated deployer: no GPU, no model server. Its "service" is an HTTP handler in the
// kaitoflow process that answers Kaito's POST /chat with a reply that says it is simulated and
// names the adapters it would have loaded.
type Sim struct {
	// BaseURL is where Handler is mounted, e.g. http://127.0.0.1:8470/sim/inference.
	BaseURL string
	Delay   time.Duration
	Log     *slog.Logger

	mu       sync.Mutex
	services map[string]Deployment
}

// Name implements Deployer.
func (s *Sim) Name() string { return "sim" }

// Deploy implements Deployer.
func (s *Sim) Deploy(ctx context.Context, d Deployment) (string, error) {
	t := time.NewTimer(s.Delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	s.mu.Lock()
	if s.services == nil {
		s.services = map[string]Deployment{}
	}
	s.services[d.Ref.Namespace+"/"+d.Service] = d
	s.mu.Unlock()
	url := fmt.Sprintf("%s/%s/%s", strings.TrimSuffix(s.BaseURL, "/"), d.Ref.Namespace, d.Service)
	s.log().InfoContext(ctx, "sim: simulated inference endpoint is up; no model is loaded", "url", url, "adapters", len(d.Adapters))
	return url, nil
}

// Delete implements Deployer.
func (s *Sim) Delete(ctx context.Context, ref events.Ref) error {
	s.mu.Lock()
	delete(s.services, ref.Namespace+"/"+ServiceName(ref))
	s.mu.Unlock()
	s.log().InfoContext(ctx, "sim: simulated inference endpoint removed")
	return nil
}

func (s *Sim) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

// Handler serves POST {ns}/{service}/chat for simulated services; mount it under BaseURL's path.
func (s *Sim) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{namespace}/{service}/chat", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		d, ok := s.services[r.PathValue("namespace")+"/"+r.PathValue("service")]
		s.mu.Unlock()
		if !ok {
			http.Error(w, "no such simulated service", http.StatusNotFound)
			return
		}
		var req ChatRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil || req.Prompt == "" {
			http.Error(w, `body must be {"prompt": "..."}`, http.StatusBadRequest)
			return
		}
		adapters := make([]string, len(d.Adapters))
		for i, a := range d.Adapters {
			adapters[i] = a.Image
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"Result":   fmt.Sprintf("[sim] %s would answer %q here; no model is loaded", d.Workspace.PresetName(), req.Prompt),
			"model":    d.Workspace.PresetName(),
			"adapters": adapters,
			"driver":   "sim",
		})
	})
	mux.HandleFunc("GET /{namespace}/{service}/health", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		_, ok := s.services[r.PathValue("namespace")+"/"+r.PathValue("service")]
		s.mu.Unlock()
		if !ok {
			http.Error(w, "no such simulated service", http.StatusNotFound)
			return
		}
		_, _ = w.Write([]byte("ok (sim)\n"))
	})
	return mux
}
