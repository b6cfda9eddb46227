package serve

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// Sim is the simulated deployer: no GPU, no model server. A "service" is the real chat-proxy in
// front of SimRuntime, an OpenAI-compatible server in the kaitoflow process whose every answer says
// it is simulated. Mount Handler at BaseURL.
type Sim struct {
	// BaseURL is where Handler is mounted, e.g. http://127.0.0.1:8470/sim/inference.
	BaseURL string
	Delay   time.Duration
	Log     *slog.Logger

	mu       sync.Mutex
	services map[string]*simService
}

type simService struct {
	d     Deployment
	acked bool
	// proxy is chat-proxy for the service; runtime the simulated model server behind it.
	proxy, runtime http.Handler
}

// Name implements Deployer.
func (s *Sim) Name() string { return "sim" }

func simKey(ref events.Ref) string { return ref.Namespace + "/" + ServiceName(ref) }

func (s *Sim) url(ns, svc string) string {
	return fmt.Sprintf("%s/%s/%s", strings.TrimSuffix(s.BaseURL, "/"), ns, svc)
}

// Apply implements Deployer. The simulated model "loads" for Delay.
func (s *Sim) Apply(ctx context.Context, d Deployment) error {
	s.mu.Lock()
	cur, ok := s.services[simKey(d.Ref)]
	s.mu.Unlock()
	if ok && cur.d.Ref.Generation >= d.Ref.Generation {
		return nil // a redelivery, or an older generation arriving late
	}
	t := time.NewTimer(s.Delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	upstream, err := url.Parse(s.url(d.Ref.Namespace, d.Service) + "/runtime")
	if err != nil {
		return fmt.Errorf("sim service URL: %w", err)
	}
	proxy := (&Proxy{Upstream: upstream, Model: ServedModel(d), Log: logctx.Or(s.Log)}).Handler()
	rt := (&SimRuntime{Models: servedModels(d), Describe: simDescription(d), TokenDelay: 15 * time.Millisecond}).Handler()
	s.mu.Lock()
	if s.services == nil {
		s.services = map[string]*simService{}
	}
	s.services[simKey(d.Ref)] = &simService{d: d, proxy: proxy, runtime: rt}
	s.mu.Unlock()
	logctx.Or(s.Log).InfoContext(ctx, "sim: simulated inference endpoint is up behind chat-proxy; no model is loaded",
		"url", s.url(d.Ref.Namespace, d.Service), "adapters", len(d.Adapters))
	return nil
}

// Status implements Deployer: a simulated service is Ready once applied.
func (s *Sim) Status(_ context.Context, ref events.Ref) (*Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	svc, ok := s.services[simKey(ref)]
	if !ok {
		return nil, nil
	}
	d := svc.d
	return &Status{Ref: d.Ref, Service: d.Service, Adapters: adapterNames(d.Adapters), Phase: Ready,
		URL: s.url(d.Ref.Namespace, d.Service), Revision: fmt.Sprintf("%s-%05d", d.Service, d.Ref.Generation)}, nil
}

// List implements Deployer.
func (s *Sim) List(context.Context) ([]events.Ref, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var refs []events.Ref
	for _, svc := range s.services {
		if !svc.acked {
			refs = append(refs, svc.d.Ref)
		}
	}
	return refs, nil
}

// Acknowledge implements Deployer.
func (s *Sim) Acknowledge(_ context.Context, ref events.Ref) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if svc, ok := s.services[simKey(ref)]; ok && svc.d.Ref.Generation == ref.Generation {
		svc.acked = true
	}
	return nil
}

// Delete implements Deployer.
func (s *Sim) Delete(ctx context.Context, ref events.Ref) error {
	s.mu.Lock()
	delete(s.services, simKey(ref))
	s.mu.Unlock()
	logctx.Or(s.Log).InfoContext(ctx, "sim: simulated inference endpoint removed")
	return nil
}

func (s *Sim) lookup(w http.ResponseWriter, r *http.Request) (*simService, string, bool) {
	ns, name := r.PathValue("namespace"), r.PathValue("service")
	s.mu.Lock()
	svc, ok := s.services[ns+"/"+name]
	s.mu.Unlock()
	if !ok {
		problem(w, http.StatusNotFound, fmt.Sprintf("no simulated service %s/%s", ns, name))
	}
	return svc, "/" + ns + "/" + name, ok
}

// Handler serves every simulated service under {namespace}/{service}/: chat-proxy's routes
// (POST /chat, /v1/*, /health) and, under runtime/, the simulated model server they front.
func (s *Sim) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/{namespace}/{service}/runtime/", func(w http.ResponseWriter, r *http.Request) {
		if svc, prefix, ok := s.lookup(w, r); ok {
			http.StripPrefix(prefix+"/runtime", svc.runtime).ServeHTTP(w, r)
		}
	})
	mux.HandleFunc("/{namespace}/{service}/", func(w http.ResponseWriter, r *http.Request) {
		if svc, prefix, ok := s.lookup(w, r); ok {
			http.StripPrefix(prefix, svc.proxy).ServeHTTP(w, r)
		}
	})
	return mux
}

// servedModels are the names the model server answers to: the base model and each adapter.
func servedModels(d Deployment) []string {
	return append([]string{d.Workspace.PresetName()}, adapterNames(d.Adapters)...)
}

func simDescription(d Deployment) string {
	desc := d.Workspace.PresetName()
	if len(d.Adapters) > 0 {
		var imgs []string
		for _, a := range d.Adapters {
			imgs = append(imgs, a.Source())
		}
		desc += " with adapter " + strings.Join(imgs, ", ")
	}
	return desc
}

// ServedModel is the model name chat-proxy's /chat talks to: the first adapter (the one a tuning
// workspace just made), or the base model.
func ServedModel(d Deployment) string {
	if len(d.Adapters) > 0 {
		return AdapterName(d.Adapters[0].Name)
	}
	return d.Workspace.PresetName()
}

func adapterNames(as []Adapter) []string {
	names := make([]string, 0, len(as))
	for _, a := range as {
		names = append(names, AdapterName(a.Name))
	}
	return slices.Clip(names)
}

// AdapterName makes an adapter name safe as a container name and a vLLM LoRA module name.
func AdapterName(s string) string {
	s = strings.ToLower(s)
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, s)
	if len(s) > 50 {
		s = s[:50]
	}
	return strings.Trim(s, "-")
}
