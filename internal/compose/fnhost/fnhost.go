// Package fnhost runs one kaitoflow function as a process: over HTTP as a Knative Service (or
// any platform that delivers CloudEvents), or as a JetStream consumer. It holds the flags the
// function processes share with `kaitoflow up` (the drivers, NATS, delivery), the transports,
// /metrics and /healthz, telemetry and who may deliver events. Each function's own binary
// (cmd/<function>) is Main with its assembly.Part, and `kaitoflow fn NAME` runs the same code.
package fnhost

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"go.opentelemetry.io/otel/trace"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/callerauth"
	"github.com/kaitoflow/kaitoflow/internal/compose/api"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/httpserve"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/telemetry"
)

// Flags are one function process's settings.
type Flags struct {
	transport, listen, sink, registry, publicURL string
	// sinkToken is a ServiceAccount token file sent with events to the sink.
	sinkToken string
	// callerAudience and callers: who may deliver events over HTTP (callerauth).
	callerAudience string
	callers        []string
	// fs is where the flags were registered: --sink given there, rather than inherited from
	// $K_SINK, is refused with the JetStream transport.
	fs *pflag.FlagSet
	// SimToken guards the sim deployer's endpoints (KAITOFLOW_TOKEN or --token-file), as in up.
	SimToken string
	NATS     NATS
	Drivers  Drivers
	Delivery Delivery
}

// Register adds the function's flags to fl.
func (f *Flags) Register(fl *pflag.FlagSet) {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	f.fs = fl
	fl.StringVar(&f.transport, "transport", "http", "http or jetstream")
	f.NATS.Register(fl, "nats://127.0.0.1:4222", "NATS server with JetStream")
	fl.StringVar(&f.listen, "listen", ":"+port, "HTTP address: CloudEvents (http transport), /metrics and /healthz")
	fl.StringVar(&f.sink, "sink", os.Getenv("K_SINK"), "where output events go over HTTP (env K_SINK); empty publishes to --nats")
	f.Drivers.Register(fl, "enforce")
	f.Delivery.Register(fl)
	fl.StringVar(&f.registry, "registry-rewrite", "", "publish and the sim trainer: push to this registry host instead of the one in tuning.output.image")
	fl.StringVar(&f.sinkToken, "sink-token-file", "",
		"http transport: a ServiceAccount token (projected for the Broker's audience) sent as a bearer token with every event to --sink, for a "+
			"Broker with an EventPolicy")
	fl.StringVar(&f.callerAudience, "caller-audience", "",
		"http transport: accept only events sent with a Kubernetes ServiceAccount token for this audience (the Trigger's subscriber.audience; "+
			"Knative Eventing OIDC), reviewed by the API server")
	fl.StringSliceVar(&f.callers, "caller", nil,
		"http transport, with --caller-audience: a subject that may deliver events (system:serviceaccount:NS:NAME, or a prefix ending in *); repeatable")
	fl.StringVar(&f.publicURL, "public-url", "http://127.0.0.1:8080",
		"serve with the sim deployer: this process's base URL, where its simulated endpoints are reached")
}

// Usage is what a function process's help says of its transports and drivers.
const Usage = `Over --transport http it serves CloudEvents on --listen (Knative sets $PORT) and publishes its
output events to $K_SINK (the Broker) or, without one, to --nats; it answers 2xx only after they are
stored. --transport jetstream consumes the function's input subjects from --nats with a durable
consumer. Drivers: --provider sim|aks|karpenter|byo, --trainer sim|local|job, --deployer
sim|local|knative. Every flag can come from the environment as KAITOFLOW_<FLAG>.`

// needsNATS reports whether p needs a NATS connection: for its transport, for its outputs when
// there is no sink, or for its own records (Part.JetStream).
func needsNATS(p assembly.Part, f *Flags) bool {
	return f.transport == "jetstream" || f.sink == "" || p.JetStream
}

// validate refuses flag combinations that cannot work.
func (f *Flags) validate() error {
	if f.transport != "http" && f.transport != "jetstream" {
		return fmt.Errorf("--transport %q: want http or jetstream", f.transport)
	}
	if f.transport == "jetstream" && f.sink != "" && f.fs != nil && f.fs.Changed("sink") {
		return fmt.Errorf("--sink is for --transport http: with jetstream the outputs go to --nats")
	}
	if (f.callerAudience == "") != (len(f.callers) == 0) {
		return fmt.Errorf("--caller-audience and --caller go together: the audience a caller's token is for, and who may call")
	}
	if f.callerAudience != "" && f.transport != "http" {
		return fmt.Errorf("--caller-audience is for --transport http: over JetStream, NATS's users say who may publish")
	}
	return nil
}

// Run runs the function p until ctx ends.
func Run(ctx context.Context, p assembly.Part, f *Flags, log *slog.Logger) error {
	if err := f.validate(); err != nil {
		return err
	}
	cfg, err := f.Drivers.Config(false)
	if err != nil {
		return err
	}
	name := p.Name
	cfg.Logger, cfg.Registry, cfg.TickEvery = log, f.registry, f.Delivery.Tick
	cfg.Sim.BaseURL, cfg.Sim.Token = f.publicURL, f.SimToken
	js, closeNATS, err := f.jetStream(ctx, p, log)
	if err != nil {
		return err
	}
	defer closeNATS()
	pub, err := f.publisher(js)
	if err != nil {
		return err
	}
	cfg.JetStream, cfg.Publisher, cfg.Replicas = js, pub, f.NATS.Replicas
	a, err := assembly.Build(ctx, cfg, p)
	if err != nil {
		return err
	}
	fn := a.Functions[0]
	reg, mux := endpoints(name, a, f.SimToken)
	if a.SimInference != nil && f.SimToken == "" {
		log.Warn("the sim deployer's endpoints (chat, and loading and unloading adapters) answer any caller: set KAITOFLOW_TOKEN or --token-file")
	}
	tp, stopTelemetry, err := fnTelemetry(ctx, name, reg, log)
	if err != nil {
		return err
	}
	defer stopTelemetry()
	deps := runtime.Deps{Logger: log, Metrics: runtime.NewMetrics(reg), Publisher: pub, Tracer: tp}
	if f.transport == "http" {
		return serveFn(ctx, f, fn, deps, mux, log)
	}
	r, err := runtime.NewJetStream(js, fn, deps, f.Delivery.Options())
	if err != nil {
		return err
	}
	for _, w := range a.Watches {
		go func() {
			if err := w.Run(ctx, pub); err != nil && ctx.Err() == nil {
				log.Error("watch stopped", "watch", w.Name, "err", err)
			}
		}()
	}
	errc := make(chan error, 1)
	go func() { errc <- httpserve.Serve(ctx, f.listen, mux) }()
	// Outside Knative there is no PingSource: provision, tune and serve need kaitoflow.tick to
	// re-check pending capacity, runs and Services. Ticks of several replicas share ids and are
	// stored once.
	if f.Delivery.Tick > 0 && !fn.Observer && slices.Contains(fn.Types, events.Tick) {
		go runtime.Tick(ctx, pub, f.Delivery.Tick, log)
	}
	if err := r.Run(ctx); err != nil {
		return err
	}
	return <-errc
}

// fnTelemetry is the function's tracer, and its metrics pushed over OTLP when the environment
// names an endpoint; stop flushes both, the metrics' last numbers within Knative's grace period.
func fnTelemetry(ctx context.Context, name string, reg prometheus.Gatherer, log *slog.Logger) (trace.TracerProvider, func(), error) {
	tp, flush, err := telemetry.Tracer(ctx, "kaitoflow-"+name)
	if err != nil {
		return nil, nil, err
	}
	stopMetrics, err := telemetry.PushMetrics(ctx, "kaitoflow-"+name, reg)
	if err != nil {
		_ = flush(context.WithoutCancel(ctx))
		return nil, nil, err
	}
	return tp, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := stopMetrics(sctx); err != nil {
			log.Warn("the last metrics were not pushed", "err", err)
		}
		_ = flush(sctx)
	}, nil
}

// jetStream connects to NATS when the function needs it (needsNATS) and makes sure the stream
// exists; otherwise it returns nil.
func (f *Flags) jetStream(ctx context.Context, p assembly.Part, log *slog.Logger) (jetstream.JetStream, func(), error) {
	if !needsNATS(p, f) {
		return nil, func() {}, nil
	}
	nc, err := f.NATS.Connect("kaitoflow-fn-" + p.Name)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err == nil {
		_, err = f.NATS.Storage(log).EnsureStream(ctx, js)
	}
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc.Close, nil
}

// publisher is where the function's outputs go: over HTTP with a sink (Knative's Broker) to the
// sink, otherwise to JetStream.
func (f *Flags) publisher(js jetstream.JetStream) (events.Publisher, error) {
	if f.transport != "http" || f.sink == "" {
		return runtime.JetStreamPublisher{JS: js}, nil
	}
	hp, err := runtime.NewHTTPPublisher(f.sink)
	if err != nil {
		return nil, err
	}
	hp.TokenFile = f.sinkToken
	return hp, nil
}

// endpoints serves a function's /metrics and /healthz, and the sim deployer's endpoints when it runs
// them, to holders of token when there is one (they load and unload adapters).
func endpoints(name string, a *assembly.Assembly, token string) (*prometheus.Registry, *http.ServeMux) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if a.Store != nil && name == assembly.Status {
		// The function keeping the status records exports what they say of GPU time.
		reg.MustRegister(status.NewGPUCollector(a.Store))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	if a.SimInference != nil {
		// By method, as the CloudEvents receiver is ("POST /"): a pattern for every method would
		// conflict with it, and the mux refuses the pair. The simulated replicas answer OpenAI's
		// API, which is GET and POST.
		h := api.RequireToken(token, a.SimInference)
		mux.Handle("GET "+assembly.SimInferencePath+"/", h)
		mux.Handle("POST "+assembly.SimInferencePath+"/", h)
	}
	return reg, mux
}

// serveFn takes the function's CloudEvents over HTTP. Under Knative, ApiServerSources deliver the
// changes the watches would see, through the signals function, and a watch in every scaled-up
// replica would only repeat them: none runs here.
func serveFn(ctx context.Context, f *Flags, fn runtime.Function, deps runtime.Deps, mux *http.ServeMux, log *slog.Logger) error {
	h, err := runtime.NewHTTP(fn, deps)
	if err != nil {
		return err
	}
	var in http.Handler = h
	if f.callerAudience != "" {
		if in, err = callersOnly(f, log, h); err != nil {
			return err
		}
	} else {
		log.Warn("CloudEvents are taken from any caller that reaches this port: set --caller-audience and --caller where the broker sends OIDC tokens")
	}
	mux.Handle("POST /", in)
	log.Info("function listening for CloudEvents over HTTP", "function", fn.Name, "addr", f.listen, "sink", f.sink)
	return httpserve.Serve(ctx, f.listen, mux)
}

// callersOnly wraps h so that only the --caller subjects, with a token for --caller-audience, may
// deliver events.
func callersOnly(f *Flags, log *slog.Logger, h http.Handler) (http.Handler, error) {
	cfg, err := f.Drivers.RestConfig()
	if err != nil {
		return nil, fmt.Errorf("--caller-audience reviews tokens with the API server: %w", err)
	}
	reviews, err := kubeclient.New(cfg)
	if err != nil {
		return nil, err
	}
	callers, err := callerauth.New(reviews, f.callerAudience, f.callers, log)
	if err != nil {
		return nil, err
	}
	return callers.Wrap(h), nil
}
