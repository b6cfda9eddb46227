// Package embedded runs the whole pipeline in one process: a NATS server with JetStream (or a
// connection to an existing one), every function over the JetStream runtime with the sim
// drivers, the status projector, an in-process OCI registry standing in for ACR, and the HTTP
// API. `kaitoflow up`, the end-to-end tests and the benchmarks all start it the same way.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/kaitoflow/kaitoflow/internal/compose/api"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/pipeline"
	"github.com/kaitoflow/kaitoflow/internal/natsauth"
	"github.com/kaitoflow/kaitoflow/internal/natsconn"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// Config configures an embedded pipeline.
type Config struct {
	// DataDir holds JetStream's store, the registry's blobs and the sim trainer's adapters.
	DataDir string
	// NATS connects to an existing NATS server with JetStream (its URL, auth and TLS) instead of
	// embedding one.
	NATS natsconn.Options
	// NATSListen is the embedded server's address; "127.0.0.1:-1" picks a free port.
	NATSListen string
	// Listen is the API's address; "127.0.0.1:0" picks a free port.
	Listen   string
	Delivery runtime.JetStreamOptions
	Logger   *slog.Logger
	Tracer   trace.TracerProvider
	// Registry, when set, is an existing registry (host:port) that stands in for the output
	// registry instead of the embedded one.
	Registry string
	// APIToken, when set, is the bearer token the API requires.
	APIToken string
	// TickInterval is how often kaitoflow.tick re-checks what can fail silently; 30s when zero.
	TickInterval time.Duration
	// Functions configures the drivers and what they reach (assembly.Config). Start fills in
	// what the embedded mode owns: the function list, NATS, the publisher, the status store,
	// the registry, the sim directory and the sim endpoints' URL, and, unless set, the
	// ConfigMaps submitted through the API as the ConfigMap source.
	Functions assembly.Config
}

// Pipeline is a running embedded pipeline.
type Pipeline struct {
	// URL is the API's base URL.
	URL string
	// NATSURL is the NATS server the pipeline uses, with its credentials.
	NATSURL string
	// DataDir holds the pipeline's stream, registry blobs and runs.
	DataDir string
	// Registry is the host:port of the in-process OCI registry.
	Registry string
	JS       jetstream.JetStream
	Store    *status.Store
	Metrics  *prometheus.Registry

	cancel context.CancelFunc
	// unlock releases the data dir for the next pipeline.
	unlock func()
	// closeDrivers stops what the drivers run on this machine.
	closeDrivers func()
	fns          sync.WaitGroup // function runtimes
	servers      sync.WaitGroup // HTTP servers
	https        []*http.Server
	nc           *nats.Conn
	conns        []*nats.Conn // the roles' connections
	ns           *server.Server
	errMu        sync.Mutex
	err          error
}

// Start brings the pipeline up and returns once every part is serving.
func Start(ctx context.Context, cfg Config) (_ *Pipeline, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Pipeline{Metrics: prometheus.NewRegistry(), DataDir: cfg.DataDir}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	// Owner only: the stream, the registry's blobs (adapters) and the runs are the user's.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	// One pipeline per data dir: two would share one JetStream store and registry.
	if p.unlock, err = lockDir(cfg.DataDir); err != nil {
		return nil, err
	}
	bus, err := p.startBus(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	if err := p.startRegistry(cfg, log); err != nil {
		return nil, err
	}
	apiLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("API listener %s: %w", cfg.Listen, err)
	}
	p.URL = "http://" + apiLn.Addr().String()

	p.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ac := cfg.Functions
	ac.Functions = pipeline.Pipeline()
	ac.Logger, ac.JetStream, ac.Store, ac.Publisher, ac.Registry = log, p.JS, p.Store, runtime.JetStreamPublisher{JS: p.JS}, p.Registry
	ac.Sim.Dir, ac.Sim.BaseURL, ac.Sim.Token = filepath.Join(cfg.DataDir, "adapters"), p.URL, cfg.APIToken
	if ac.ConfigMaps == nil {
		ac.ConfigMaps = p.Store.ConfigMapData
	}
	fns, err := pipeline.Build(ctx, ac)
	if err != nil {
		return nil, err
	}
	p.closeDrivers = fns.Close
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = cancel
	if err := p.run(runCtx, cfg, bus, fns, log); err != nil {
		return nil, err
	}
	if err := p.serveAPI(cfg, bus, ac, fns, apiLn, log); err != nil {
		return nil, err
	}
	log.Info("kaitoflow API listening", "url", p.URL, "metrics", p.URL+"/metrics")
	return p, nil
}

// bus is how the pipeline's parts reach NATS: the connection options, and the URL each role signs
// in with.
type bus struct {
	conn    natsconn.Options
	roleURL func(role string) string
}

// startBus starts the embedded NATS server (unless cfg names one), connects as the admin and
// opens the stream and the status store.
func (p *Pipeline) startBus(ctx context.Context, cfg Config, log *slog.Logger) (bus, error) {
	natsURL := cfg.NATS.URL
	// On an external NATS, every role signs in with the one URL given.
	b := bus{conn: cfg.NATS, roleURL: func(string) string { return natsURL }}
	if natsURL == "" {
		var err error
		if b.roleURL, err = p.startNATS(cfg, log); err != nil {
			return bus{}, err
		}
		natsURL = b.roleURL(natsauth.Admin)
	}
	p.NATSURL = natsURL
	b.conn.URL = natsURL
	nc, err := b.conn.Connect("kaitoflow-up")
	if err != nil {
		return bus{}, err
	}
	p.nc = nc
	if p.JS, err = jetstream.New(nc); err != nil {
		return bus{}, fmt.Errorf("jetstream: %w", err)
	}
	storage := runtime.Storage{Replicas: cfg.Functions.Replicas, Log: log}
	if _, err := storage.EnsureStream(ctx, p.JS); err != nil {
		return bus{}, err
	}
	if p.Store, err = status.Open(ctx, p.JS, storage); err != nil {
		return bus{}, err
	}
	p.Metrics.MustRegister(status.NewGPUCollector(p.Store))
	return b, nil
}

// startNATS starts the embedded NATS server and returns the URL each role signs in with. Who
// reaches its port must sign in, and each role gets only its rights (natsauth): passwords made for
// this run, in files only this user can read, for the `kaitoflow fn` processes that join it.
func (p *Pipeline) startNATS(cfg Config, log *slog.Logger) (func(role string) string, error) {
	roles := pipeline.NATSRoles()
	passwords, err := natsauth.Passwords(roles)
	if err != nil {
		return nil, err
	}
	users, err := natsauth.Users(roles, passwords)
	if err != nil {
		return nil, err
	}
	ns, err := newNATSServer(cfg, users)
	if err != nil {
		return nil, err
	}
	p.ns = ns
	roleURL := func(role string) string {
		u, _ := url.Parse(ns.ClientURL())
		u.User = url.UserPassword(role, passwords[role])
		return u.String()
	}
	dir := filepath.Join(cfg.DataDir, NATSDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("NATS credentials: %w", err)
	}
	for _, r := range roles {
		if err := os.WriteFile(filepath.Join(dir, r.Name+".url"), []byte(roleURL(r.Name)+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("NATS credentials: %w", err)
		}
	}
	log.Info("embedded NATS JetStream listening; clients sign in with a role's credentials", "url", ns.ClientURL(), "credentials", dir,
		"store", filepath.Join(cfg.DataDir, "jetstream"))
	return roleURL, nil
}

// startRegistry uses the registry cfg names, or starts the in-process one.
func (p *Pipeline) startRegistry(cfg Config, log *slog.Logger) error {
	if cfg.Registry != "" {
		p.Registry = cfg.Registry
		log.Info("using the registry given as the output registry", "addr", p.Registry)
		return nil
	}
	// The registry stands in for ACR: blobs on disk under the data dir, manifests in memory.
	regLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("registry listener: %w", err)
	}
	blobs := filepath.Join(cfg.DataDir, "registry")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return err
	}
	reg := registry.New(registry.Logger(slog.NewLogLogger(log.Handler(), slog.LevelDebug)), registry.WithBlobHandler(registry.NewDiskBlobHandler(blobs)))
	p.serve(&http.Server{Handler: reg, ReadHeaderTimeout: 10 * time.Second}, regLn)
	p.Registry = regLn.Addr().String()
	log.Info("embedded OCI registry listening (stands in for the output registry; sim)", "addr", p.Registry)
	return nil
}

// run starts every function's runtime, the tick and the drivers' watches, until ctx ends.
func (p *Pipeline) run(ctx context.Context, cfg Config, b bus, fns *assembly.Assembly, log *slog.Logger) error {
	deps := runtime.Deps{Logger: log, Metrics: runtime.NewMetrics(p.Metrics), Tracer: cfg.Tracer}
	for _, fn := range fns.Functions {
		// Each function consumes, acks and publishes as its own NATS role, so every run of the
		// pipeline shows the roles' rights are enough (and a function cannot submit).
		fnJS, err := p.connect(b.conn, b.roleURL(fn.Name), "kaitoflow-up-"+fn.Name)
		if err != nil {
			return err
		}
		r, err := runtime.NewJetStream(fnJS, fn, deps, cfg.Delivery)
		if err != nil {
			return err
		}
		p.goRun(func() error { return r.Run(ctx) }, log, "function stopped", "function", fn.Name)
	}
	pub := runtime.JetStreamPublisher{JS: p.JS}
	tickEvery := cfg.TickInterval
	if tickEvery <= 0 {
		tickEvery = 30 * time.Second
	}
	p.goRun(func() error { runtime.Tick(ctx, pub, tickEvery, log); return nil }, log, "")
	for _, w := range fns.Watches {
		p.goRun(func() error {
			if err := w.Run(ctx, pub); err != nil && ctx.Err() == nil {
				return err
			}
			return nil
		}, log, "watch stopped", "watch", w.Name)
	}
	return nil
}

// goRun runs f until it returns; an error is the pipeline's, logged with msg and args.
func (p *Pipeline) goRun(f func() error, log *slog.Logger, msg string, args ...any) {
	p.fns.Add(1)
	go func() {
		defer p.fns.Done()
		if err := f(); err != nil {
			p.setErr(err)
			log.Error(msg, append(args, "err", err)...)
		}
	}()
}

// serveAPI serves the API, the sim's inference endpoints and the metrics on apiLn.
func (p *Pipeline) serveAPI(cfg Config, b bus, ac assembly.Config, fns *assembly.Assembly, apiLn net.Listener, log *slog.Logger) error {
	// One token guards every route but /healthz: the API, the sim's inference endpoints (their
	// adapter admin paths change what serves) and /metrics (it names every workspace).
	mux := http.NewServeMux()
	entranceJS, err := p.connect(b.conn, b.roleURL(pipeline.Entrance), "kaitoflow-up-api")
	if err != nil {
		return err
	}
	apiSrv := &api.Server{Store: p.Store, Publisher: runtime.JetStreamPublisher{JS: entranceJS}, Policy: ac.Policy, Log: log, Tracer: cfg.Tracer,
		Plan: fns.Plan, Logs: fns.Logs}
	mux.Handle("/v1/", apiSrv.Handler())
	if fns.SimInference != nil {
		mux.Handle(assembly.SimInferencePath+"/", fns.SimInference)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.Metrics, promhttp.HandlerOpts{}))
	root := http.NewServeMux()
	root.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	root.Handle("/", api.RequireToken(cfg.APIToken, mux))
	p.serve(&http.Server{Handler: root, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}, apiLn)
	return nil
}

// NATSDir, under the data dir, holds one file per NATS role (natsauth) with the embedded server's
// URL and that role's credentials for this run (owner-only): `kaitoflow fn tune --nats "$(cat
// DATA_DIR/nats/tune.url)"` joins the pipeline as tune, with tune's rights only.
const NATSDir = "nats"

// newNATSServer starts the embedded nats-server with users, and waits until it is ready.
func newNATSServer(cfg Config, users []*server.User) (*server.Server, error) {
	host, port := "127.0.0.1", -1
	if cfg.NATSListen != "" {
		h, ps, err := net.SplitHostPort(cfg.NATSListen)
		if err != nil {
			return nil, fmt.Errorf("NATS listen address %q: %w", cfg.NATSListen, err)
		}
		host = h
		if _, err := fmt.Sscanf(ps, "%d", &port); err != nil {
			return nil, fmt.Errorf("NATS listen port %q: %w", ps, err)
		}
		if port == 0 {
			port = -1 // any free port, as :0 means for every listener (nats-server's 0 is 4222)
		}
		// nats-server only logs a port it cannot bind, and never becomes ready: say so at once.
		if port > 0 {
			ln, err := net.Listen("tcp", cfg.NATSListen)
			if err != nil {
				return nil, fmt.Errorf("NATS listen address %s: %w (another kaitoflow up or a nats-server listens there: stop it, "+
					"or give --nats-listen another address)", cfg.NATSListen, err)
			}
			_ = ln.Close()
		}
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "kaitoflow-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Join(cfg.DataDir, "jetstream"),
		NoSigs:     true,
		NoLog:      true,
		Users:      users,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded NATS did not start within 15s")
	}
	return ns, nil
}

// connect opens one more connection to the pipeline's NATS, as the role url names, closed with
// the pipeline.
func (p *Pipeline) connect(conn natsconn.Options, roleURL, name string) (jetstream.JetStream, error) {
	conn.URL = roleURL
	nc, err := conn.Connect(name)
	if err != nil {
		return nil, err
	}
	p.conns = append(p.conns, nc)
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return js, nil
}

func (p *Pipeline) serve(srv *http.Server, ln net.Listener) {
	p.https = append(p.https, srv)
	p.servers.Add(1)
	go func() {
		defer p.servers.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.setErr(err)
		}
	}()
}

func (p *Pipeline) setErr(err error) {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

// Close stops taking requests, lets in-flight steps finish and publish, then closes the NATS
// connection and the embedded server, in that order, so nothing in flight loses its bus.
func (p *Pipeline) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range p.https {
		_ = srv.Shutdown(ctx)
	}
	p.servers.Wait()
	if p.cancel != nil {
		p.cancel()
	}
	p.fns.Wait()
	if p.closeDrivers != nil {
		p.closeDrivers()
	}
	for _, nc := range p.conns {
		nc.Close()
	}
	if p.nc != nil {
		p.nc.Close()
	}
	if p.ns != nil {
		p.ns.Shutdown()
		p.ns.WaitForShutdown()
	}
	if p.unlock != nil {
		p.unlock()
	}
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}
