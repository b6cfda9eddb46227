package chatproxy

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// AdapterSet is what every replica of a serving service should serve: the adapters to load into
// the model server through vLLM's runtime LoRA API, and the public model names that route to them.
// It is written by serve's deployer (a ConfigMap every replica mounts, in a cluster) and reconciled
// by chat-proxy in each replica, at start and on every change, so a replica that starts later
// serves the same set and an adapter change needs no new pod.
type AdapterSet struct {
	// Version increases with every change; a replica never goes back to a lower one (a mounted
	// file that lags behind a newer set it was already told about stays ignored).
	Version int64 `json:"version"`
	// Adapters are loaded under their Name; names derive from the adapter's source, so the same
	// image keeps its name (and stays loaded) across versions.
	Adapters []AdapterSpec `json:"adapters,omitempty"`
	// Routes maps a public model name (the workspace's, which clients send) to the adapter that
	// answers for it now. A route moves only once its new adapter has loaded and answered.
	Routes map[string]string `json:"routes,omitempty"`
	// Default is the public name Kaito's POST /chat talks to.
	Default string `json:"default,omitempty"`
	// Generations records which workspace generation each route serves, for status and rollback.
	Generations map[string]int64 `json:"generations,omitempty"`
	// Canaries split a route's requests with a candidate adapter (a canary promotion), by public
	// name.
	Canaries map[string]Canary `json:"canaries,omitempty"`
	// Checkpoints records, for a route that serves a checkpoint of its generation's run rather
	// than its final adapter, the checkpoint's step.
	Checkpoints map[string]int `json:"checkpoints,omitempty"`
}

// AdapterSpec is one adapter of a set.
type AdapterSpec struct {
	Name string `json:"name"`
	// Image is pulled into the replica's adapter directory; Path is a directory already mounted
	// into the model server (an adapter served from a volume).
	Image string `json:"image,omitempty"`
	Path  string `json:"path,omitempty"`
	// PullSecrets are docker config files (mounted Secrets) to pull Image with; ACRIdentity signs
	// in to an Azure Container Registry with the pod's workload identity.
	PullSecrets []string `json:"pullSecrets,omitempty"`
	ACRIdentity bool     `json:"acrIdentity,omitempty"`
}

// RegistryPuller pulls adapter images with pull-adapter's code, verifying every digest, signing
// in with keychain (nil: anonymous, and the spec's docker config files when it names some).
//
// opts are added to every pull: the address policy's transport in a pod (netguard.Transport).
func RegistryPuller(keychain func(AdapterSpec) (authn.Keychain, error), opts ...remote.Option) Puller {
	return func(ctx context.Context, spec AdapterSpec, dir string) error {
		ref, err := name.ParseReference(spec.Image)
		if err != nil {
			return fmt.Errorf("adapter reference %q: %w", spec.Image, err)
		}
		kc := authn.NewMultiKeychain()
		if keychain != nil {
			if kc, err = keychain(spec); err != nil {
				return err
			}
		}
		_ = os.RemoveAll(dir) // what an earlier, interrupted pull left
		_, err = adapter.Pull(ref, dir, adapter.AdapterLimits, append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc)}, opts...)...)
		return err
	}
}

// Equal reports whether two sets ask for the same thing, ignoring Version.
func (s AdapterSet) Equal(o AdapterSet) bool {
	s.Version, o.Version = 0, 0
	a, _ := json.Marshal(s)
	b, _ := json.Marshal(o)
	return bytes.Equal(a, b)
}

// ReplicaAdapters is what one replica serves: GET /adapters on chat-proxy.
type ReplicaAdapters struct {
	// Replica names the pod (or the sim's replica).
	Replica string `json:"replica,omitempty"`
	// Version is the newest set fully applied; Loaded are the adapters the model server holds.
	Version int64             `json:"version"`
	Loaded  []string          `json:"loaded,omitempty"`
	Routes  map[string]string `json:"routes,omitempty"`
	// Pending is the version being applied, and Error why it has not been (kept until it is).
	Pending int64  `json:"pending,omitempty"`
	Error   string `json:"error,omitempty"`
	// Instance names this chat-proxy process: numbers reported under another instance of the
	// same replica are an earlier process's, kept apart.
	Instance string `json:"instance,omitempty"`
	// Canaries are the applied set's, and Live what this replica measured of each since it
	// loaded it, by public name.
	Canaries map[string]Canary           `json:"canaries,omitempty"`
	Live     map[string]kaito.CanaryLive `json:"live,omitempty"`
	// ModelReady says the model server answers its health check.
	ModelReady bool `json:"modelReady"`
}

// errModelLoading is a model server that does not answer yet: the set waits, nothing failed.
var errModelLoading = errors.New("model server not ready")

// Puller fetches an adapter image's files into dir: pull-adapter's code (adapter.Pull) with the
// spec's credentials.
type Puller func(ctx context.Context, spec AdapterSpec, dir string) error

// AdapterManager is chat-proxy's reconciler of an AdapterSet against the model server next to it,
// through vLLM's runtime LoRA API (POST /v1/load_lora_adapter and /v1/unload_lora_adapter, which
// the server accepts when started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). Adapters loaded so
// live only in that process: the manager loads the whole set again whenever a replica starts.
type AdapterManager struct {
	// Runtime is the model server, e.g. http://127.0.0.1:8000.
	Runtime *url.URL
	// Dir is where images are unpacked, one directory per adapter; the model server reads it at
	// ServerDir (empty: the same path, as the two containers of an inference pod mount it).
	Dir, ServerDir string
	Pull           Puller
	Client         *http.Client
	Replica        string
	Log            *slog.Logger
	// UnloadAfter keeps an adapter no route names loaded this long, for requests routed to it
	// just before the routes moved.
	UnloadAfter time.Duration
	// PullTimeout bounds one adapter's pull (default DefaultPullTimeout): a registry that stalls
	// fails that attempt instead of holding the replica's reconciliation, and newer sets, forever.
	PullTimeout time.Duration

	apply sync.Mutex // one reconciliation at a time

	wakeOnce sync.Once
	wake     chan struct{}

	mu      sync.RWMutex
	applied AdapterSet
	loaded  map[string]bool
	stale   map[string]time.Time // loaded, no longer routed to, since
	pending int64
	// failures counts the pending version's failed attempts; lastErr is reported once there
	// are failThreshold of them, so a registry blip is retried rather than failing a generation.
	failures int
	lastErr  string
	// live are the applied set's canaries, measured (canary.go).
	live map[string]*liveCanary

	// fb guards the answer ids judged here: a set, and the order they came.
	fb          sync.Mutex
	judged      map[string]bool
	judgedOrder []string
	// instance tells this process apart from an earlier one of the same replica (a restarted
	// container), whose numbers started again from zero.
	instanceOnce sync.Once
	instance     string
}

// failThreshold is how many attempts at a set fail before the replica reports it failed.
const failThreshold = 3

// maxModelList bounds the model server's GET /v1/models answer (a few hundred bytes per model).
const maxModelList = 4 << 20

// maxCompletion bounds a non-streamed completion chat-proxy decodes (Kaito's POST /chat).
const maxCompletion = 16 << 20

// DefaultPullTimeout bounds one adapter pull: adapters are tens to hundreds of megabytes.
const DefaultPullTimeout = 5 * time.Minute

// pullParallel is how many adapters of one set are pulled at once: a pool's adapters come from
// different registries, and one slow registry should not make the others wait.
const pullParallel = 4

// Route is the adapter a public model name answers with now; other names pass as they are.
func (m *AdapterManager) Route(model string) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if r, ok := m.applied.Routes[model]; ok {
		return r
	}
	return model
}

// routing reports whether any public name routes to an adapter.
func (m *AdapterManager) routing() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.applied.Routes) > 0
}

// Public are the public model names routed to adapters, sorted.
func (m *AdapterManager) Public() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return slices.Sorted(maps.Keys(m.applied.Routes))
}

// Default is the public name /chat talks to, empty before a set is applied.
func (m *AdapterManager) Default() string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.applied.Default
}

// Status is what the replica serves.
func (m *AdapterManager) Status(ctx context.Context) ReplicaAdapters {
	m.mu.RLock()
	st := ReplicaAdapters{Replica: m.Replica, Version: m.applied.Version, Routes: maps.Clone(m.applied.Routes), Error: m.lastErr,
		Canaries: maps.Clone(m.applied.Canaries)}
	if m.pending > m.applied.Version {
		st.Pending = m.pending
	}
	for n := range m.loaded {
		st.Loaded = append(st.Loaded, n)
	}
	m.mu.RUnlock()
	slices.Sort(st.Loaded)
	st.Live, st.Instance = m.Live(), m.Instance()
	st.ModelReady = m.healthy(ctx) == nil
	return st
}

// Instance is this process's random name (ReplicaAdapters.Instance).
func (m *AdapterManager) Instance() string {
	m.instanceOnce.Do(func() {
		b := make([]byte, 6)
		_, _ = rand.Read(b)
		m.instance = hex.EncodeToString(b)
	})
	return m.instance
}

// Applied is the version of the newest set fully applied (0: none yet).
func (m *AdapterManager) Applied() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.applied.Version
}

// Failure is why the newest set is not applied, empty when it is (or while the model loads).
func (m *AdapterManager) Failure() string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.lastErr
}

func (m *AdapterManager) client() *http.Client {
	if m.Client != nil {
		return m.Client
	}
	return http.DefaultClient
}

// Apply reconciles the model server with set: every adapter of the set is pulled, loaded and made
// to answer one token before any route moves to it; then the routes move at once; then adapters
// no longer in the set are unloaded. A set no newer than the applied one changes nothing. On an
// error nothing of the new set is routed to, the previous routes keep answering, and the error is
// reported by Status until a later Apply succeeds.
func (m *AdapterManager) Apply(ctx context.Context, set AdapterSet) error {
	m.apply.Lock()
	defer m.apply.Unlock()
	if set.Version <= m.Applied() {
		return nil
	}
	m.mu.Lock()
	if m.pending != set.Version {
		m.pending, m.failures, m.lastErr = set.Version, 0, ""
	}
	if m.loaded == nil {
		m.loaded, m.stale = map[string]bool{}, map[string]time.Time{}
	}
	m.mu.Unlock()
	err := m.reconcile(ctx, set)
	m.mu.Lock()
	switch {
	case err == nil:
		m.failures, m.lastErr = 0, ""
	case !errors.Is(err, errModelLoading):
		if m.failures++; m.failures >= failThreshold {
			m.lastErr = fmt.Sprintf("version %d, %d attempts: %v", set.Version, m.failures, err)
		}
	}
	m.mu.Unlock()
	return err
}

func (m *AdapterManager) reconcile(ctx context.Context, set AdapterSet) error {
	log := logctx.Or(m.Log)
	if err := m.healthy(ctx); err != nil {
		return fmt.Errorf("%w: %w", errModelLoading, err)
	}
	want := map[string]bool{}
	var missing []AdapterSpec
	for _, a := range set.Adapters {
		want[a.Name] = true
		m.mu.RLock()
		have := m.loaded[a.Name]
		m.mu.RUnlock()
		if !have {
			missing = append(missing, a)
		}
	}
	start := time.Now()
	if err := m.pullAll(ctx, missing); err != nil {
		return err
	}
	for _, a := range missing {
		path := a.Path
		if a.Image != "" {
			path = filepath.Join(cmp.Or(m.ServerDir, m.Dir), a.Name)
		}
		if err := m.load(ctx, a.Name, path); err != nil {
			return fmt.Errorf("adapter %s: %w", a.Name, err)
		}
		// Loaded is not answering: only an adapter that gave a token counts as loaded (a retry
		// after a failed probe loads again, which vLLM answers "already loaded", and probes again).
		if err := m.probe(ctx, a.Name); err != nil {
			return fmt.Errorf("adapter %s loaded but does not answer: %w", a.Name, err)
		}
		m.mu.Lock()
		m.loaded[a.Name] = true
		m.mu.Unlock()
		log.InfoContext(ctx, "adapter loaded into the running model server", "adapter", a.Name, "source", cmp.Or(a.Image, a.Path), "took",
			time.Since(start).Round(time.Millisecond))
	}
	for public, target := range set.Routes {
		if !want[target] {
			return fmt.Errorf("route %s: adapter %s is not in the set", public, target)
		}
	}
	if err := set.validateCanaries(); err != nil {
		return err
	}
	// The routes move at once. What is no longer wanted stays loaded for UnloadAfter, so requests
	// routed to it just before the move (a long stream, say) finish; one wanted again meanwhile (a
	// rollback) is back at once.
	now := time.Now()
	m.mu.Lock()
	m.applied = set
	m.syncLive(set)
	for n := range m.loaded {
		if want[n] {
			delete(m.stale, n)
		} else if _, ok := m.stale[n]; !ok {
			m.stale[n] = now
		}
	}
	m.mu.Unlock()
	m.sweep(ctx)
	return nil
}

// pullAll pulls the images of adapters, a few at once, each within PullTimeout.
func (m *AdapterManager) pullAll(ctx context.Context, adapters []AdapterSpec) error {
	timeout := cmp.Or(m.PullTimeout, DefaultPullTimeout)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(pullParallel)
	for _, a := range adapters {
		if a.Image == "" {
			continue
		}
		g.Go(func() error {
			pctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			if err := m.Pull(pctx, a, filepath.Join(m.Dir, a.Name)); err != nil {
				if errors.Is(pctx.Err(), context.DeadlineExceeded) {
					err = fmt.Errorf("no complete pull within %s: %w", timeout, err)
				}
				return fmt.Errorf("adapter %s: pull %s: %w", a.Name, a.Image, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// sweep unloads the adapters no route has named for UnloadAfter. A failure leaves the adapter
// loaded; the next sweep tries again.
func (m *AdapterManager) sweep(ctx context.Context) {
	m.mu.RLock()
	var due []string
	for n, since := range m.stale {
		if time.Since(since) >= m.UnloadAfter {
			due = append(due, n)
		}
	}
	m.mu.RUnlock()
	for _, n := range due {
		if err := m.unload(ctx, n); err != nil {
			logctx.Or(m.Log).WarnContext(ctx, "unload adapter; retrying later", "adapter", n, "err", err)
			continue
		}
		m.mu.Lock()
		delete(m.loaded, n)
		delete(m.stale, n)
		m.mu.Unlock()
		if m.Dir != "" {
			_ = os.RemoveAll(filepath.Join(m.Dir, n))
		}
		logctx.Or(m.Log).InfoContext(ctx, "adapter unloaded", "adapter", n)
	}
}

// verify notices a model server that lost its adapters (its container restarted: adapters loaded
// at runtime live only in its process): the replica goes back to not ready, and the next Apply
// loads the whole set again.
func (m *AdapterManager) verify(ctx context.Context) {
	if m.Applied() == 0 {
		return
	}
	held, err := m.models(ctx)
	if err != nil {
		return // not answering: health says so, and the next tick looks again
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var lost []string
	for n := range m.loaded {
		if !held[n] {
			lost = append(lost, n)
			delete(m.loaded, n)
			delete(m.stale, n)
		}
	}
	if len(lost) == 0 {
		return
	}
	logctx.Or(m.Log).WarnContext(ctx, "the model server no longer holds adapters it loaded (restarted?); loading the set again", "lost", lost)
	m.applied = AdapterSet{}
}

// models are the names the model server serves (GET /v1/models).
func (m *AdapterManager) models(ctx context.Context) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.Runtime.JoinPath("/v1/models").String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := m.client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("models: %s", resp.Status)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxModelList)).Decode(&list); err != nil {
		return nil, fmt.Errorf("models: %w", err)
	}
	out := map[string]bool{}
	for _, d := range list.Data {
		out[d.ID] = true
	}
	return out, nil
}

func (m *AdapterManager) healthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.Runtime.JoinPath("/health").String(), nil)
	if err != nil {
		return err
	}
	resp, err := m.client().Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health: %s", resp.Status)
	}
	return nil
}

// post sends one call of the runtime API, bounded by timeout: a model server that hangs must not
// hold the reconciler (and with it every later set) forever.
func (m *AdapterManager) post(ctx context.Context, timeout time.Duration, path string, body any) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.Runtime.JoinPath(path).String(), bytes.NewReader(b))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := m.client().Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(bytes.TrimSpace(out)), nil
}

// load asks the model server to load an adapter. vLLM answers 400 "has already been loaded" for a
// name it holds (a chat-proxy restarted next to a model server that kept running): that adapter
// is there, which is what was asked.
func (m *AdapterManager) load(ctx context.Context, name, path string) error {
	code, body, err := m.post(ctx, 5*time.Minute, "/v1/load_lora_adapter", map[string]string{"lora_name": name, "lora_path": path})
	switch {
	case err != nil:
		return fmt.Errorf("load: %w", err)
	case code == http.StatusOK:
		return nil
	case code == http.StatusBadRequest && strings.Contains(body, "already been loaded"):
		return nil
	case code == http.StatusNotFound && strings.Contains(body, "Not Found"):
		// FastAPI's answer for a route the server does not have.
		return errors.New("the model server has no runtime LoRA API (start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")
	}
	return fmt.Errorf("load: %d %s", code, body)
}

func (m *AdapterManager) unload(ctx context.Context, name string) error {
	code, body, err := m.post(ctx, time.Minute, "/v1/unload_lora_adapter", map[string]string{"lora_name": name})
	switch {
	case err != nil:
		return err
	case code == http.StatusOK, code == http.StatusNotFound:
		return nil // gone either way
	}
	return fmt.Errorf("unload: %d %s", code, body)
}

// probe asks the adapter for one token: loaded is not yet answering.
func (m *AdapterManager) probe(ctx context.Context, name string) error {
	code, body, err := m.post(ctx, 2*time.Minute, "/v1/completions", map[string]any{"model": name, "prompt": "ping", "max_tokens": 1})
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("%d %s", code, body)
	}
	return nil
}

// Run applies the set source returns now and then every interval, until ctx ends: at start (so
// a replica loads the whole set before it reports ready) and after each change. Failures are
// retried at the next interval.
func (m *AdapterManager) Run(ctx context.Context, source func(context.Context) (AdapterSet, error), interval time.Duration) {
	log := logctx.Or(m.Log)
	var lastErr string
	failures := 0
	for {
		m.verify(ctx)
		set, err := source(ctx)
		if err == nil {
			err = m.Apply(ctx, set)
		}
		m.sweep(ctx)
		if err != nil && err.Error() != lastErr && ctx.Err() == nil {
			log.WarnContext(ctx, "adapter set not applied yet; retrying", "err", err)
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
		// A model server still loading has not failed anything: it is looked at again at the
		// interval, so the set goes live soon after the model does.
		if err != nil && !errors.Is(err, errModelLoading) {
			failures++
		} else {
			failures = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retryAfter(interval, failures)):
		case <-m.wakeup():
			failures = 0 // a new set: try it now, and at the interval again
		}
	}
}

// retryAfter is the wait before the next look: the interval, doubled for each failure in a row up
// to maxRetryWait. A set that cannot be applied (an unreachable or refusing registry, an adapter
// the model server rejects) is retried ever more slowly instead of every interval for as long as
// the replica lives; a new set (Notify) is tried at once.
func retryAfter(interval time.Duration, failures int) time.Duration {
	wait := interval
	for range min(failures, 16) {
		if wait *= 2; wait >= maxRetryWait {
			return max(maxRetryWait, interval)
		}
	}
	return wait
}

const maxRetryWait = 5 * time.Minute

// Notify makes Run read its source now rather than at the next interval: for a source that
// knows when it changed.
func (m *AdapterManager) Notify() {
	select {
	case m.wakeup() <- struct{}{}:
	default: // a wake-up is pending already
	}
}

func (m *AdapterManager) wakeup() chan struct{} {
	m.wakeOnce.Do(func() { m.wake = make(chan struct{}, 1) })
	return m.wake
}

// FileSource reads an AdapterSet from a file: the ConfigMap the deployer writes, as the kubelet
// projects it into the pod (it swaps the file atomically when the ConfigMap changes).
func FileSource(path string) func(context.Context) (AdapterSet, error) {
	return func(context.Context) (AdapterSet, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return AdapterSet{}, fmt.Errorf("adapter set: %w", err)
		}
		return DecodeAdapterSet(b)
	}
}

// DecodeAdapterSet parses an adapter set strictly, naming what is wrong.
func DecodeAdapterSet(b []byte) (AdapterSet, error) {
	var s AdapterSet
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return AdapterSet{}, fmt.Errorf("adapter set: %w", err)
	}
	for i, a := range s.Adapters {
		if a.Name == "" {
			return AdapterSet{}, fmt.Errorf("adapter set: adapters[%d].name: required", i)
		}
		if (a.Image == "") == (a.Path == "") {
			return AdapterSet{}, fmt.Errorf("adapter set: adapters[%d] (%s): exactly one of image and path", i, a.Name)
		}
	}
	if s.Default != "" {
		if _, ok := s.Routes[s.Default]; !ok {
			return AdapterSet{}, fmt.Errorf("adapter set: default %q: no route of that name", s.Default)
		}
	}
	if err := s.validateCanaries(); err != nil {
		return AdapterSet{}, err
	}
	return s, nil
}
