package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/google/go-containerregistry/pkg/authn"
	ggcrname "github.com/google/go-containerregistry/pkg/name"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/publish"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/sources"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/presets"
)

type fnFlags struct {
	transport, listen, sink, dataDir, registry, publicURL string
	nats                                                  natsFlags
	delay, ackWait, tick                                  time.Duration
	maxDeliver, concurrency                               int
	allow                                                 []string
	backoff                                               []time.Duration
	provider                                              providerFlags
}

func newFn(g *globals) *cobra.Command {
	var f fnFlags
	cmd := &cobra.Command{
		Use:   "fn provision|tune|publish|serve|status|signals|deadletter",
		Short: "Run one function alone: over HTTP (a Knative Service) or as a JetStream consumer",
		Long: `fn runs a single function. --transport http serves CloudEvents on --listen (Knative sets $PORT)
and publishes its output events to $K_SINK (the Broker) or, without one, to --nats; it answers 2xx
only after they are stored. --transport jetstream consumes the function's input subjects from
--nats with a durable consumer. Drivers: --provider sim|aks|karpenter|byo, --trainer sim|job,
--deployer sim|knative.`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{provision.Name, tune.Name, publish.Name, serve.Name, "status", sources.Name, sources.DeadLetterName},
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			return runFn(cmd.Context(), args[0], f, log)
		},
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	fl := cmd.Flags()
	fl.StringVar(&f.transport, "transport", "http", "http or jetstream")
	f.nats.register(fl, "nats://127.0.0.1:4222", "NATS server with JetStream")
	fl.StringVar(&f.listen, "listen", ":"+port, "HTTP address: CloudEvents (http transport), /metrics and /healthz")
	fl.StringVar(&f.sink, "sink", os.Getenv("K_SINK"), "where output events go over HTTP (env K_SINK); empty publishes to --nats")
	f.provider.register(fl)
	f.provider.preflightFlag(fl, "enforce")
	fl.StringVar(&f.dataDir, "data-dir", filepath.Join(os.TempDir(), "kaitoflow"), "sim trainer output directory")
	fl.StringVar(&f.registry, "registry-rewrite", "", "publish: push to this registry host instead of the one in tuning.output.image")
	fl.StringVar(&f.publicURL, "public-url", "http://127.0.0.1:8080", "serve (sim): base URL of this process, for the simulated endpoint")
	fl.DurationVar(&f.delay, "delay", 3*time.Second, "how long each simulated step takes")
	fl.DurationVar(&f.ackWait, "ack-wait", 30*time.Second, "JetStream AckWait")
	fl.DurationVar(&f.tick, "tick", 30*time.Second, "jetstream transport: publish kaitoflow.tick this often (0 leaves it to a PingSource); signals: the PingSource's period")
	fl.IntVar(&f.maxDeliver, "max-deliver", 5, "deliveries before an event is dead-lettered")
	fl.DurationSliceVar(&f.backoff, "retry-backoff", nil, "jetstream transport: delays before redelivering after the n-th failure, the last repeating (default 1s,5s,15s,30s,60s)")
	fl.IntVar(&f.concurrency, "concurrency", 8, "events handled at once (jetstream transport)")
	fl.StringSliceVar(&f.allow, "allow-host", nil, "private dataset hosts or CIDRs to admit (repeatable)")
	return cmd
}

func runFn(ctx context.Context, name string, f fnFlags, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })

	// provision keeps its pending requests in a JetStream KV bucket, status its records.
	needNATS := f.transport == "jetstream" || f.sink == "" || name == "status" || name == provision.Name
	var js jetstream.JetStream
	if needNATS {
		nc, err := f.nats.Connect("kaitoflow-fn-" + name)
		if err != nil {
			return err
		}
		defer nc.Close()
		if js, err = jetstream.New(nc); err != nil {
			return err
		}
		if _, err := runtime.EnsureStream(ctx, js, 1); err != nil {
			return err
		}
	}

	var fn runtime.Function
	switch name {
	case provision.Name:
		catalog, err := presets.Default()
		if err != nil {
			return err
		}
		planner := &presets.Planner{Catalog: catalog}
		if f.provider.provider != "sim" {
			// tuning.config names a ConfigMap in the workspace's namespace.
			cfg, err := f.provider.restConfig()
			if err != nil {
				return fmt.Errorf("--provider %s needs a cluster: %w", f.provider.provider, err)
			}
			kube, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			planner.Configs = configMapSource(kube)
		}
		pending, err := provision.OpenKVPending(ctx, js)
		if err != nil {
			return err
		}
		prov, watchers, err := f.provider.build(&provision.Sim{Delay: f.delay, Log: log}, log)
		if err != nil {
			return err
		}
		for _, w := range f.inProcess(watchers) {
			go func() {
				if err := w(ctx, runtime.JetStreamPublisher{JS: js}); err != nil {
					log.Error("node watch stopped", "err", err)
				}
			}()
		}
		policy := events.AddressPolicy{Allow: f.allow}
		preflight, warnOnly, err := f.provider.preflightOptions(policy)
		if err != nil {
			return err
		}
		fn = runtime.Function{Name: name, Types: provision.Types, Handler: provision.New(prov, planner, pending,
			provision.Options{Policy: policy, Deadline: f.provider.deadline, Log: log, Preflight: preflight, PreflightWarnOnly: warnOnly})}
	case tune.Name:
		var pub tune.Publisher
		if js != nil {
			pub = runtime.JetStreamPublisher{JS: js}
		} else if p, err := runtime.NewHTTPPublisher(f.sink); err == nil {
			pub = p
		}
		sim := &tune.Sim{Dir: f.dataDir, Delay: f.delay, Publisher: pub, Log: log}
		if f.registry != "" {
			sim.Resolve = func(image string) (ggcrname.Reference, error) { return adapter.Rewrite(f.registry, image) }
		}
		trainer, watchers, err := f.provider.buildTrainer(sim, log)
		if err != nil {
			return err
		}
		for _, w := range f.inProcess(watchers) {
			go func() {
				if err := w(ctx, pub.(runtime.Publisher)); err != nil {
					log.Error("job watch stopped", "err", err)
				}
			}()
		}
		fn = runtime.Function{Name: name, Types: tune.Types, Handler: tune.New(trainer, log)}
	case publish.Name:
		var resolve publish.Resolver
		if f.registry != "" {
			resolve = publish.RewriteRegistry(f.registry)
		}
		pf := publish.New(publish.RemotePusher{}, resolve, log)
		if f.registry == "" {
			// In a cluster: the workspace's imagePushSecret, and Entra ID for ACR; elsewhere the
			// local Docker login.
			if cfg, err := f.provider.restConfig(); err == nil {
				kube, err := kubernetes.NewForConfig(cfg)
				if err != nil {
					return err
				}
				var acr *registryauth.ACR
				if cred, err := azidentity.NewDefaultAzureCredential(nil); err == nil {
					acr = &registryauth.ACR{Credential: cred}
				}
				pf = pf.WithKeychain(registryauth.Secrets{Client: kube, ACR: acr}.For)
			} else {
				pf = pf.WithKeychain(func(context.Context, *events.Workspace) (authn.Keychain, error) { return authn.DefaultKeychain, nil })
			}
		}
		fn = runtime.Function{Name: name, Types: publish.Types, Handler: pf}
	case serve.Name:
		sim := &serve.Sim{BaseURL: f.publicURL + "/sim/inference", Delay: f.delay, Log: log}
		mux.Handle("/sim/inference/", http.StripPrefix("/sim/inference", sim.Handler()))
		deployer, watchers, err := f.provider.buildDeployer(sim, log)
		if err != nil {
			return err
		}
		var pub runtime.Publisher = runtime.JetStreamPublisher{JS: js}
		if js == nil {
			if pub, err = runtime.NewHTTPPublisher(f.sink); err != nil {
				return err
			}
		}
		for _, w := range f.inProcess(watchers) {
			go func() {
				if err := w(ctx, pub); err != nil {
					log.Error("service watch stopped", "err", err)
				}
			}()
		}
		fn = runtime.Function{Name: name, Types: serve.Types, Handler: serve.New(deployer, log)}
	case sources.Name:
		// Knative's ApiServerSources and PingSource in, kaitoflow's signals out.
		fn = runtime.Function{Name: name, Types: sources.Types, Handler: &sources.Signals{TickEvery: f.tick}, Observer: true}
	case sources.DeadLetterName:
		fn = runtime.Function{Name: name, Types: sources.DeadLetterTypes, Handler: &sources.DeadLetters{Log: log}, Observer: true}
	case "status":
		store, err := status.Open(ctx, js, 1)
		if err != nil {
			return err
		}
		fn = runtime.Function{Name: name, Types: events.Types, Handler: &status.Projector{Store: store}}
	default:
		return fmt.Errorf("unknown function %q: want provision, tune, publish, serve, status, signals or deadletter", name)
	}

	deps := runtime.Deps{Logger: log, Metrics: runtime.NewMetrics(reg)}
	switch f.transport {
	case "http":
		if f.sink != "" {
			p, err := runtime.NewHTTPPublisher(f.sink)
			if err != nil {
				return err
			}
			deps.Publisher = p
		} else {
			deps.Publisher = runtime.JetStreamPublisher{JS: js}
		}
		h, err := runtime.NewHTTP(fn, deps)
		if err != nil {
			return err
		}
		mux.Handle("POST /", h)
		log.Info("function listening for CloudEvents over HTTP", "function", name, "addr", f.listen, "sink", f.sink)
		return serveHTTP(ctx, f.listen, mux)
	case "jetstream":
		r, err := runtime.NewJetStream(js, fn, deps, runtime.JetStreamOptions{AckWait: f.ackWait, MaxDeliver: f.maxDeliver, Concurrency: f.concurrency, Backoff: f.backoff})
		if err != nil {
			return err
		}
		errc := make(chan error, 1)
		go func() { errc <- serveHTTP(ctx, f.listen, mux) }()
		// Outside Knative there is no PingSource: provision and tune need kaitoflow.tick to re-check
		// pending capacity and runs. Ticks of several replicas share ids and are stored once.
		if f.tick > 0 && (name == provision.Name || name == tune.Name) {
			go runtime.Tick(ctx, runtime.JetStreamPublisher{JS: js}, f.tick, log)
		}
		if err := r.Run(ctx); err != nil {
			return err
		}
		return <-errc
	}
	return fmt.Errorf("--transport %q: want http or jetstream", f.transport)
}

// serveHTTP serves until ctx ends, then shuts down gracefully: requests in flight (a handler
// publishing its outputs) finish first, which is what Knative's SIGTERM expects.
func serveHTTP(ctx context.Context, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// configMapData reads a ConfigMap's data from the cluster: Kaito's tuning.config and
// inference.config both name one in the workspace's namespace.
func configMapData(client kubernetes.Interface) func(ctx context.Context, namespace, name string) (map[string]string, error) {
	return func(ctx context.Context, namespace, name string) (map[string]string, error) {
		cm, err := client.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return cm.Data, nil
	}
}

// configMapSource reads tuning.config ConfigMaps: the training_config.yaml key, as Kaito reads it.
func configMapSource(client kubernetes.Interface) presets.ConfigSource {
	data := configMapData(client)
	return func(ctx context.Context, namespace, name string) ([]byte, error) {
		d, err := data(ctx, namespace, name)
		if err != nil {
			return nil, err
		}
		doc, ok := d["training_config.yaml"]
		if !ok {
			return nil, fmt.Errorf("ConfigMap %s/%s has no training_config.yaml key", namespace, name)
		}
		return []byte(doc), nil
	}
}

// inProcess returns the watches to run in this process: with the JetStream transport, all of
// them; over HTTP (Knative), none, since ApiServerSources deliver the same changes through the
// signals function and a watch in every scaled-up replica would only repeat them.
func (f fnFlags) inProcess(watchers []func(context.Context, runtime.Publisher) error) []func(context.Context, runtime.Publisher) error {
	if f.transport == "http" {
		return nil
	}
	return watchers
}
