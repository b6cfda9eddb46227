// Package sim is the serving step's simulated deployer: replicas in the kaitoflow process, each the
// real chat-proxy in front of a simulated model server (or a real vLLM: the local deployer).
package sim

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/dataplane/vllmsim"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// Deployer is the simulated deployer: no GPU, no model server. A service is a set of simulated
// replicas, each the real chat-proxy (with its real adapter reconciler, pulling adapter images with
// pull-adapter's code from the real registry the pipeline pushed to) in front of vllmsim.Server, an
// OpenAI-compatible server in the kaitoflow process whose every answer says it is simulated. A
// revision is a set of replicas started for one serving spec; an adapter change under the same
// spec is loaded live into the running replicas, as the Knative deployer does. Mount Handler at
// BaseURL.
type Deployer struct {
	// BaseURL is where Handler is mounted, e.g. http://127.0.0.1:8470/sim/inference.
	BaseURL string
	// Delay is the simulated model load of a new replica; LoRALoadDelay one adapter's load.
	Delay, LoRALoadDelay time.Duration
	// Pull fetches adapter images; nil pulls anonymously (the embedded registry).
	Pull chatproxy.Puller
	// Dir holds the replicas' pulled adapters; empty: a temporary directory of its own, owner-only,
	// removed by Close.
	Dir string
	// Transport carries a replica's chat-proxy and adapter reconciler to its runtime, at BaseURL;
	// nil: http.DefaultTransport. Where BaseURL is behind a token, it adds the token.
	Transport http.RoundTripper
	// Server, when set, starts a real model server for each replica (a vLLM process: the local
	// deployer) in place of the simulated runtime; replicas, revisions, scale to zero and the
	// adapter set behave the same.
	Server ModelServer
	Log    *slog.Logger

	mu       sync.Mutex
	services map[string]*simService // by namespace/service
	serving  map[string]string      // a workspace's (namespace/name) service key
	seq      int
	tempDir  string // the directory made for Dir, removed by Close
}

type simService struct {
	// d is the deployment that shaped the pods (the last applied); members are the workspaces
	// served, one unless the service is a serving pool.
	d       serve.Deployment
	pool    string
	members map[string]*simMember
	// set is the adapter set every replica reconciles with: the ConfigMap's stand-in.
	set chatproxy.AdapterSet
	// spec is the serving spec (the base model and its runtime), whose change needs a new
	// revision; revision is that revision's number, replicas the running ones, newest last.
	spec     string
	revision int
	replicas []*simReplica
	next     int
	// tally is what the replicas measured of the set's canaries, by serve.TallyKey.
	tally map[string]serve.LiveTally
	// feedbackKey signs the answer ids of the service's canaries: every replica has the same, so
	// feedback counts on whichever one it reaches.
	feedbackKey []byte
}

type simReplica struct {
	name     string
	revision int
	manager  *chatproxy.AdapterManager
	proxy    http.Handler
	admin    http.Handler
	rt       http.Handler
	stop     context.CancelFunc
}

// Name implements Deployer.
func (s *Deployer) Name() string {
	if s.Server != nil {
		return s.Server.Name()
	}
	return "sim"
}

// ModelServer starts a model server for one replica.
type ModelServer interface {
	Name() string
	// Start starts replica's model server for d: upstream is where it answers (vLLM's OpenAI API
	// and runtime LoRA API), ready is closed once it has loaded the model, stop ends it.
	Start(d serve.Deployment, replica string) (upstream *url.URL, ready <-chan struct{}, stop func(), err error)
}

type simMember struct {
	d serve.Deployment
	// acked is the adapter set version whose outcome is stored (-1: any, a failure; 0: none).
	acked int64
	// verdict is how the canary the current set ended was judged, to announce with it.
	verdict *serve.CanaryVerdict
}

func wsKey(ref events.Ref) string { return ref.Namespace + "/" + ref.Name }

// member is the service serving ref's workspace and its membership, if any.
func (s *Deployer) member(ref events.Ref) (*simService, *simMember, bool) {
	svc, ok := s.services[s.serving[wsKey(ref)]]
	if !ok {
		return nil, nil, false
	}
	m, ok := svc.members[ref.Name]
	return svc, m, ok
}

func (s *Deployer) url(ns, svc string) string {
	return fmt.Sprintf("%s/%s/%s", strings.TrimSuffix(s.BaseURL, "/"), ns, svc)
}

// simSpec is what, when it changes, the sim rolls a new revision for: the base model and the
// plan's runtime. Adapters are not in it: they change live.
func simSpec(d serve.Deployment) string {
	b, _ := json.Marshal(struct {
		Preset string
		Args   []string
	}{d.Workspace.PresetName(), planArgs(d.Plan)})
	return string(b)
}

func planArgs(p *events.Plan) []string {
	if p == nil {
		return nil
	}
	return p.RuntimeArgs
}

// Apply implements Deployer. A new service, or one whose base model or runtime changed, starts a
// new revision: a replica that loads the model for Delay and then the adapter set. Otherwise the
// new adapter set goes to the running replicas, which load it live. Either way Apply returns
// once the current revision serves the set (or ctx ends), as the sim has no watch to report it.
func (s *Deployer) Apply(ctx context.Context, d serve.Deployment) error {
	a, err := s.applyLocked(ctx, d)
	if err != nil || a == nil {
		return err
	}
	log := logctx.Or(s.Log)
	switch {
	case a.live:
		log.InfoContext(ctx, s.Name()+": new adapter set goes live in the running replicas; no new revision", "version", a.version, "generation",
			d.Ref.Generation)
	case s.Server != nil:
		log.InfoContext(ctx, s.Name()+": new revision of the inference endpoint; its model server starts", "url", s.url(d.Ref.Namespace, d.Service),
			"revision", a.revision)
	default:
		log.InfoContext(ctx, "sim: new revision of the simulated inference endpoint; no model is loaded", "url", s.url(d.Ref.Namespace, d.Service),
			"revision", a.revision)
	}
	return s.await(ctx, d.Ref)
}

// applied says how a deployment was applied: live into the running replicas (its set's version),
// or as a new revision.
type applied struct {
	live     bool
	version  int64
	revision int
}

// applyLocked admits d (serve.AdmitService, the Knative deployer's rule) and applies it to its
// service, under the lock; nil when there was nothing to apply.
func (s *Deployer) applyLocked(ctx context.Context, d serve.Deployment) (*applied, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := d.Ref.Namespace + "/" + d.Service
	svc, ok := s.services[key]
	state := serve.Service{Exists: ok}
	var member *simMember
	if ok {
		state.Ours = svc.pool == d.Pool
		if m, found := svc.members[d.Ref.Name]; found {
			member = m
			state.Member = memberOf(m.d)
		}
		if d.Pool != "" {
			state.Runs, state.Wants = svc.spec, simSpec(d)
		}
	}
	if apply, err := serve.AdmitService(d, state); err != nil || !apply {
		return nil, err
	}
	if d.Serving != 0 {
		d.Plan = member.d.Plan // the same pods: only the adapter set changes
	}
	if s.services == nil {
		s.services, s.serving = map[string]*simService{}, map[string]string{}
	}
	if old := s.serving[wsKey(d.Ref)]; old != "" && old != key {
		// Moving into or out of a pool: the workspace leaves the service that served it.
		if err := s.leaveLocked(ctx, d.Ref); err != nil {
			return nil, err
		}
	}
	if !ok {
		svc = &simService{pool: d.Pool, members: map[string]*simMember{}}
		s.services[key] = svc
	}
	prev := svc.members[d.Ref.Name]
	svc.members[d.Ref.Name] = &simMember{d: d}
	set, err := svc.union(svc.set.Version + 1)
	if err != nil {
		if prev != nil {
			svc.members[d.Ref.Name] = prev
		} else {
			delete(svc.members, d.Ref.Name)
		}
		return nil, err
	}
	svc.d, svc.set = d, set
	s.serving[wsKey(d.Ref)] = key
	if svc.spec == simSpec(d) && len(svc.replicas) > 0 {
		for _, r := range svc.replicas {
			r.manager.Notify()
		}
		return &applied{live: true, version: svc.set.Version, revision: svc.revision}, nil
	}
	svc.spec, svc.revision = simSpec(d), svc.revision+1
	if err := s.startLocked(svc); err != nil {
		return nil, err
	}
	return &applied{version: svc.set.Version, revision: svc.revision}, nil
}

// memberOf is what serve.AdmitService needs of a workspace's deployment a service serves.
func memberOf(d serve.Deployment) *serve.Member {
	m := &serve.Member{Generation: d.Ref.Generation, Serving: cmp.Or(d.Serving, d.Held), Checkpoint: d.Checkpoint}
	if d.Canary != nil {
		m.Canary = d.Canary.Generation
	}
	return m
}

// simPlace says where a sim replica finds a volume adapter: a hostPath's directory, as the
// embedded mode's volumes are the machine's own.
func simPlace(a serve.Adapter, spec *chatproxy.AdapterSpec) {
	if a.Volume != nil && a.Volume.HostPath != nil {
		spec.Path = a.Volume.HostPath.Path
	}
}

// replicaServer is a replica's model server: where chat-proxy reaches it, when it has loaded the
// model, how it stops, and the simulated one's handler (nil for a real one).
type replicaServer struct {
	upstream  *url.URL
	transport http.RoundTripper
	rt        http.Handler
	loaded    <-chan struct{}
	stop      func()
}

// modelServer starts replica's model server: a real one of this machine (Server), which chat-proxy
// and the reconciler talk to directly, or the simulated one behind the Deployer's handler at
// upstream.
func (s *Deployer) modelServer(d serve.Deployment, replica string, upstream *url.URL) (replicaServer, error) {
	if s.Server != nil {
		u, loaded, stop, err := s.Server.Start(d, replica)
		if err != nil {
			return replicaServer{}, fmt.Errorf("%s: start the model server of %s: %w", s.Name(), replica, err)
		}
		return replicaServer{upstream: u, loaded: loaded, stop: stop}, nil
	}
	sim := &vllmsim.Server{Base: d.Workspace.PresetName(), Describe: d.Workspace.PresetName(), TokenDelay: 15 * time.Millisecond,
		LoadDelay: s.Delay, LoRALoadDelay: s.LoRALoadDelay}
	rt := sim.Handler() // starts the simulated load: ReadyAt is known from here
	loaded := make(chan struct{})
	time.AfterFunc(time.Until(sim.ReadyAt()), func() { close(loaded) })
	return replicaServer{upstream: upstream, transport: s.Transport, rt: rt, loaded: loaded, stop: func() {}}, nil
}

// startLocked starts a replica of svc's current revision.
func (s *Deployer) startLocked(svc *simService) error {
	s.seq++
	d := svc.d
	name := fmt.Sprintf("%s-%05d-%d", d.Service, svc.revision, s.seq)
	if s.Dir == "" {
		// A directory of this process's own, not a shared name under the system's temporary
		// directory where every local user could read the adapters or plant their own.
		tmp, err := os.MkdirTemp("", "kaitoflow-sim-")
		if err != nil {
			return fmt.Errorf("sim replicas' directory: %w", err)
		}
		s.Dir, s.tempDir = tmp, tmp
	}
	dir := filepath.Join(s.Dir, "replicas", d.Ref.Namespace, name)
	upstream, err := url.Parse(s.url(d.Ref.Namespace, d.Service) + "/replicas/" + name + "/runtime")
	if err != nil {
		return fmt.Errorf("sim service URL: %w", err)
	}
	pull := s.Pull
	if pull == nil {
		pull = chatproxy.RegistryPuller(nil)
	}
	log := logctx.Or(s.Log).With("replica", name)
	ms, err := s.modelServer(d, name, upstream)
	if err != nil {
		return err
	}
	upstream, transport := ms.upstream, ms.transport
	// As chat-proxy keeps an adapter no route names for a while, for requests routed to it just
	// before the routes moved.
	m := &chatproxy.AdapterManager{Runtime: upstream, Dir: dir, Pull: pull, Replica: name, Log: log, UnloadAfter: UnloadAfter}
	if transport != nil {
		m.Client = &http.Client{Transport: transport}
	}
	ctx, stop := context.WithCancel(context.Background())
	model := serve.ServedModel(d)
	if svc.pool != "" {
		model = d.Workspace.PresetName() // a pool's requests name their model
	}
	if svc.feedbackKey == nil {
		svc.feedbackKey = make([]byte, 32)
		_, _ = rand.Read(svc.feedbackKey)
	}
	p := &chatproxy.Proxy{Upstream: upstream, Model: model, Log: log, Adapters: m, Transport: transport, FeedbackKey: svc.feedbackKey}
	r := &simReplica{name: name, revision: svc.revision, manager: m, rt: ms.rt, stop: func() { stop(); ms.stop(); _ = os.RemoveAll(dir) },
		proxy: p.Handler(), admin: p.AdminHandler()}
	svc.replicas = append(svc.replicas, r)
	key := d.Ref.Namespace + "/" + d.Service
	// The sim knows when the set changes (Apply notifies the replicas) and when the model has
	// loaded, so the replica looks then; the interval is for what nothing announces.
	go m.Run(ctx, func(context.Context) (chatproxy.AdapterSet, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if cur, ok := s.services[key]; ok {
			return cur.set, nil
		}
		return chatproxy.AdapterSet{}, errors.New("service deleted")
	}, time.Second)
	go func() {
		select {
		case <-ms.loaded:
			m.Notify()
		case <-ctx.Done():
		}
	}()
	return nil
}

// await waits until the service's current revision serves its set, or ctx ends.
func (s *Deployer) await(ctx context.Context, ref events.Ref) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := s.Status(ctx, ref)
		if err != nil || st == nil || st.Phase != serve.Pending {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Scale sets the number of replicas of a service's current revision, as Knative's autoscaler
// does: new replicas load the model and then the whole adapter set; zero is scaled to zero.
func (s *Deployer) Scale(ref events.Ref, replicas int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	svc, _, ok := s.member(ref)
	if !ok {
		return fmt.Errorf("no simulated service serves %s", wsKey(ref))
	}
	for len(svc.current()) < replicas {
		if err := s.startLocked(svc); err != nil {
			return err
		}
	}
	for cur := svc.current(); len(cur) > replicas; cur = svc.current() {
		svc.remove(cur[len(cur)-1])
	}
	return nil
}

func (svc *simService) current() []*simReplica {
	var out []*simReplica
	for _, r := range svc.replicas {
		if r.revision == svc.revision {
			out = append(out, r)
		}
	}
	return out
}

func (svc *simService) remove(r *simReplica) {
	svc.replicas = slices.DeleteFunc(svc.replicas, func(x *simReplica) bool { return x == r })
	// Stopped outside the caller's lock: a real model server takes seconds to stop, and the
	// replica is no longer routed to.
	go func() {
		r.stop()
		_ = os.RemoveAll(r.manager.Dir)
	}()
}

// Status implements Deployer: Ready once a replica of the current revision serves the current
// set and none of them reports it failed; older revisions' replicas go once one is.
func (s *Deployer) Status(_ context.Context, ref events.Ref) (*serve.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	svc, m, ok := s.member(ref)
	if !ok {
		return nil, nil
	}
	d := m.d
	st := &serve.Status{Ref: d.Ref, Service: svc.d.Service, Adapters: serve.AdapterNames(d.Adapters), Phase: serve.Pending,
		URL: s.url(d.Ref.Namespace, svc.d.Service), Revision: fmt.Sprintf("%s-%05d", svc.d.Service, svc.revision),
		Version: svc.set.Version, ServingGeneration: d.ServingGeneration(), ServingCheckpoint: d.Checkpoint, Verdict: m.verdict}
	cur := svc.current()
	serving := 0
	for _, r := range cur {
		// The manager's own state, not its Status: that asks the runtime over HTTP, which this
		// lock would block.
		switch applied, failure := r.manager.Applied(), r.manager.Failure(); {
		case applied >= svc.set.Version:
			serving++
		case failure != "":
			st.Phase, st.Reason, st.Message = serve.Failed, serve.ReasonAdapterLoad, fmt.Sprintf("replica %s: %s", r.name, failure)
			return st, nil
		}
	}
	st.Replicas, st.Serving = len(cur), serving
	switch {
	case len(cur) == 0:
		st.Phase = serve.Ready // scaled to zero: the next replica loads the set as it starts
	case serving == len(cur):
		st.Phase = serve.Ready
		for _, r := range slices.Clone(svc.replicas) {
			if r.revision != svc.revision {
				svc.remove(r) // the new revision serves: the old one's replicas go
			}
		}
	}
	return st, nil
}

// Close stops every replica (and its model server) of every service, and returns when they have
// stopped; the temporary directory it made for Dir goes too.
func (s *Deployer) Close() {
	s.mu.Lock()
	var all []*simReplica
	for _, svc := range s.services {
		all = append(all, svc.replicas...)
		svc.replicas = nil
	}
	tmp := s.tempDir
	if tmp != "" {
		s.Dir, s.tempDir = "", "" // a replica started after Close makes a new one
	}
	s.mu.Unlock()
	for _, r := range all {
		r.stop()
		_ = os.RemoveAll(r.manager.Dir)
	}
	if tmp != "" {
		_ = os.RemoveAll(tmp)
	}
}

// List implements Deployer.
func (s *Deployer) List(context.Context) ([]events.Ref, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var refs []events.Ref
	for _, svc := range s.services {
		for _, m := range svc.members {
			if m.acked != -1 && m.acked != svc.set.Version {
				refs = append(refs, m.d.Ref)
			}
		}
	}
	return refs, nil
}

// Acknowledge implements Deployer.
func (s *Deployer) Acknowledge(_ context.Context, ref events.Ref, version int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, m, ok := s.member(ref); ok && m.d.Ref.Generation == ref.Generation {
		m.acked = cmp.Or(version, -1)
	}
	return nil
}

// Delete implements Deployer.
func (s *Deployer) Delete(ctx context.Context, ref events.Ref) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leaveLocked(ctx, ref)
}

// leaveLocked takes ref's workspace out of the service that serves it, removing the service when
// it was the last member.
func (s *Deployer) leaveLocked(ctx context.Context, ref events.Ref) error {
	svc, _, ok := s.member(ref)
	if !ok {
		return nil
	}
	key := s.serving[wsKey(ref)]
	delete(svc.members, ref.Name)
	delete(s.serving, wsKey(ref))
	if len(svc.members) > 0 {
		// A pool goes on serving its other members; the replicas unload this one's adapters.
		set, err := svc.union(svc.set.Version + 1)
		if err != nil {
			return err
		}
		svc.set = set
		for _, r := range svc.replicas {
			r.manager.Notify()
		}
		logctx.Or(s.Log).InfoContext(ctx, "sim: workspace left its serving pool", "pool", svc.pool, "members", len(svc.members))
		return nil
	}
	for _, r := range slices.Clone(svc.replicas) {
		svc.remove(r)
	}
	delete(s.services, key)
	logctx.Or(s.Log).InfoContext(ctx, "sim: simulated inference endpoint removed")
	return nil
}

// union is the adapter set of every member, at version: each member's adapters routed from its
// own public names.
func (svc *simService) union(version int64) (chatproxy.AdapterSet, error) {
	var ds []serve.Deployment
	for _, name := range slices.Sorted(maps.Keys(svc.members)) {
		ds = append(ds, svc.members[name].d)
	}
	return serve.UnionSet(ds, version, simPlace)
}

// pick is the replica a request goes to: round robin over those that are ready, the current
// revision's first; with none running (scaled to zero) one is started, as Knative's activator
// wakes a revision, and the request waits for it.
func (s *Deployer) pick(ctx context.Context, ns, name string) (*simReplica, error) {
	key := ns + "/" + name
	for {
		s.mu.Lock()
		svc, ok := s.services[key]
		if !ok {
			s.mu.Unlock()
			return nil, fmt.Errorf("no simulated service %s", key)
		}
		if len(svc.replicas) == 0 {
			if err := s.startLocked(svc); err != nil {
				s.mu.Unlock()
				return nil, err
			}
		}
		var ready []*simReplica
		for _, r := range svc.replicas {
			if r.manager.Applied() > 0 {
				ready = append(ready, r)
			}
		}
		slices.SortStableFunc(ready, func(a, b *simReplica) int { return b.revision - a.revision })
		if len(ready) > 0 {
			svc.next++
			r := ready[svc.next%len(ready)]
			if r.revision != ready[0].revision {
				r = ready[0]
			}
			s.mu.Unlock()
			return r, nil
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waking %s: %w", key, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *Deployer) replica(ns, name, replica string) (*simReplica, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	svc, ok := s.services[ns+"/"+name]
	if !ok {
		return nil, false
	}
	i := slices.IndexFunc(svc.replicas, func(r *simReplica) bool { return r.name == replica })
	if i < 0 {
		return nil, false
	}
	return svc.replicas[i], true
}

// Handler serves every simulated service under {namespace}/{service}/: chat-proxy's routes
// (POST /chat, /v1/*, /health, /adapters) on a ready replica, waking one when there is none;
// under replicas/{replica}/ one replica's chat-proxy (its admin routes under admin/), and under
// replicas/{replica}/runtime/ the simulated model server it fronts.
func (s *Deployer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/{namespace}/{service}/replicas/{replica}/", func(w http.ResponseWriter, r *http.Request) {
		ns, name, id := r.PathValue("namespace"), r.PathValue("service"), r.PathValue("replica")
		rep, ok := s.replica(ns, name, id)
		if !ok {
			chatproxy.Problem(w, http.StatusNotFound, fmt.Sprintf("no replica %s of simulated service %s/%s", id, ns, name))
			return
		}
		prefix := "/" + ns + "/" + name + "/replicas/" + id
		switch {
		case strings.HasPrefix(r.URL.Path, prefix+"/runtime/") && rep.rt != nil:
			http.StripPrefix(prefix+"/runtime", rep.rt).ServeHTTP(w, r)
			return
		case strings.HasPrefix(r.URL.Path, prefix+"/admin/"):
			http.StripPrefix(prefix+"/admin", rep.admin).ServeHTTP(w, r)
			return
		}
		http.StripPrefix(prefix, rep.proxy).ServeHTTP(w, r)
	})
	mux.HandleFunc("/{namespace}/{service}/", func(w http.ResponseWriter, r *http.Request) {
		ns, name := r.PathValue("namespace"), r.PathValue("service")
		rep, err := s.pick(r.Context(), ns, name)
		if err != nil {
			chatproxy.Problem(w, http.StatusNotFound, err.Error())
			return
		}
		w.Header().Set(HeaderReplica, rep.name)
		http.StripPrefix("/"+ns+"/"+name, rep.proxy).ServeHTTP(w, r)
	})
	return mux
}

// UnloadAfter is how long a sim replica keeps an adapter no route names loaded: requests routed
// to it just before the routes moved finish there.
const UnloadAfter = 5 * time.Second

// HeaderReplica names the sim replica that answered a request.
const HeaderReplica = "X-Kaitoflow-Replica"

// Canaries implements serve.CanaryDeployer: each service's running canary with what its replicas
// measured of it, those gone included (serve.LiveTally).
func (s *Deployer) Canaries(context.Context) ([]serve.CanaryReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []serve.CanaryReport
	for _, svc := range s.services {
		tally := map[string]serve.LiveTally{}
		for public, c := range svc.set.Canaries {
			key := serve.TallyKey(public, c)
			tally[key] = svc.tally[key]
			if tally[key] == nil {
				tally[key] = serve.LiveTally{}
			}
			for _, r := range svc.replicas {
				if l, ok := r.manager.LiveOf(public, c); ok {
					tally[key][serve.ReplicaKey(r.name, r.manager.Instance())] = l
				}
			}
		}
		svc.tally = tally // what no canary runs for any more goes
		for _, m := range svc.members {
			if m.d.Canary == nil {
				continue
			}
			public := serve.ServedModel(m.d)
			c, ok := svc.set.Canaries[public]
			if !ok {
				continue
			}
			out = append(out, serve.CanaryReport{Ref: m.d.Ref, Public: public, Canary: c, Reference: m.d.Canary.Adapter.Image,
				Stable: m.d.ServingGeneration(), Live: tally[serve.TallyKey(public, c)].Total()})
		}
	}
	return out, nil
}

// EndCanary implements serve.CanaryDeployer: the running replicas load the set without the canary,
// its candidate routed to (promote) or gone, and the verdict waits with it to be announced.
func (s *Deployer) EndCanary(ctx context.Context, v serve.CanaryVerdict) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	svc, m, ok := s.member(v.Ref)
	if !ok || m.d.Canary == nil || m.d.Canary.Generation != v.Ref.Generation || !svc.set.Canaries[v.Public].Same(v.Canary) {
		return false, nil // no longer running: a newer generation, a rollback, or ended already
	}
	d := m.d
	if v.Promote {
		d.Adapters, d.Held, d.Checkpoint = []serve.Adapter{d.Canary.Adapter}, 0, 0
	}
	d.Canary = nil
	prev := m.d
	m.d = d
	set, err := svc.union(svc.set.Version + 1)
	if err != nil {
		m.d = prev
		return false, err
	}
	svc.d, svc.set, m.acked, m.verdict = d, set, 0, &v
	for _, r := range svc.replicas {
		r.manager.Notify()
	}
	logctx.Or(s.Log).InfoContext(ctx, "sim: canary ended in the running replicas", "workspace", wsKey(v.Ref), "promoted", v.Promote, "version", set.Version)
	return true, nil
}
