package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"k8s.io/client-go/dynamic"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/embedded"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

func newUp(g *globals) *cobra.Command {
	var (
		dataDir, natsListen, listen string
		natsOpts                    natsFlags
		delay, ackWait              time.Duration
		maxDeliver                  int
		allow, submit               []string
		pf                          providerFlags
		tick                        time.Duration
		watchWorkspaces             bool
		crdGroup, registryHost      string
		backoff                     []time.Duration
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the whole pipeline in this process (embedded NATS JetStream, every function, sim drivers, API)",
		Long: `up runs kaitoflow on one machine with no cluster: an embedded NATS server with JetStream (or
--nats for an existing one), the provision, tune, publish and serve functions with their sim
drivers (simulated GPU nodes, trainer and endpoint; a real OCI push to an embedded registry), the
status projector and the HTTP API. Stop it with Ctrl-C: in-flight steps finish first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			if dataDir == "" {
				cache, err := os.UserCacheDir()
				if err != nil {
					return fmt.Errorf("no --data-dir and no user cache dir: %w", err)
				}
				dataDir = filepath.Join(cache, "kaitoflow")
			}
			provider, watchers, err := pf.build(&provision.Sim{Delay: delay, Log: log}, log)
			if err != nil {
				return err
			}
			// nil trainer: the embedded pipeline makes its sim trainer with its own publisher.
			var trainer tune.Trainer
			if pf.trainer != "sim" {
				t, w, err := pf.buildTrainer(nil, log)
				if err != nil {
					return err
				}
				trainer, watchers = t, append(watchers, w...)
			}
			// nil deployer: the embedded pipeline serves its sim endpoints on its own API address.
			var deployer serve.Deployer
			if pf.deployer != "sim" {
				d, w, err := pf.buildDeployer(nil, log)
				if err != nil {
					return err
				}
				deployer, watchers = d, append(watchers, w...)
			}
			var workspaces dynamic.Interface
			if watchWorkspaces {
				cfg, err := pf.restConfig()
				if err != nil {
					return fmt.Errorf("--watch-workspaces needs a cluster: %w", err)
				}
				if workspaces, err = dynamic.NewForConfig(cfg); err != nil {
					return err
				}
			}
			policy := events.AddressPolicy{Allow: allow}
			preflight, warnOnly, err := pf.preflightOptions(policy)
			if err != nil {
				return err
			}
			tp := sdktrace.NewTracerProvider()
			defer func() { _ = tp.Shutdown(cmd.Context()) }()
			log.Info("starting kaitoflow (embedded mode: training and inference are simulated by the sim drivers)", "data_dir", dataDir, "provider", pf.provider, "sim_delay", delay)
			p, err := embedded.Start(cmd.Context(), embedded.Config{
				DataDir: dataDir, NATS: natsOpts.Options, NATSListen: natsListen, Listen: listen,
				Delay: delay, Policy: policy, Logger: log, Tracer: tp, Trainer: trainer, Deployer: deployer, APIToken: g.token, Registry: registryHost, Workspaces: workspaces, CRDGroup: crdGroup,
				Preflight: preflight, PreflightWarnOnly: warnOnly,
				Delivery: runtime.JetStreamOptions{AckWait: ackWait, MaxDeliver: maxDeliver, Backoff: backoff},
				Provider: provider, Watchers: watchers, CapacityDeadline: pf.deadline, TickInterval: tick,
			})
			if err != nil {
				return err
			}
			g.server = p.URL
			if len(submit) > 0 {
				go g.submitAndWatch(cmd.Context(), submit)
			} else {
				fmt.Fprintf(g.err, "\nkaitoflow is up at %s. In another terminal:\n  kaitoflow submit -f examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml\n  kaitoflow watch workspace-tuning-phi-3\n  kaitoflow get workspaces\n\n", p.URL)
			}
			<-cmd.Context().Done()
			log.Info("shutting down: letting in-flight steps finish")
			return p.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", "", "where JetStream, the registry and sim adapters keep their data (default: the user cache dir)")
	natsOpts.register(f, "", "use this NATS server (with JetStream) instead of the embedded one")
	f.StringVar(&natsListen, "nats-listen", "127.0.0.1:4222", "embedded NATS address (for `kaitoflow fn --nats`)")
	f.StringVar(&listen, "listen", "127.0.0.1:8470", "API address")
	f.DurationVar(&delay, "delay", 3*time.Second, "how long each simulated step takes")
	f.DurationVar(&ackWait, "ack-wait", 30*time.Second, "JetStream AckWait; a crashed step is redelivered after it")
	f.IntVar(&maxDeliver, "max-deliver", 5, "deliveries before an event is dead-lettered")
	f.DurationSliceVar(&backoff, "retry-backoff", nil, "delays before redelivering after the n-th failure, the last repeating (default 1s,5s,15s,30s,60s)")
	f.StringSliceVar(&allow, "allow-host", nil, "private dataset hosts or CIDRs to admit (repeatable)")
	f.DurationVar(&tick, "tick", 30*time.Second, "how often kaitoflow.tick re-checks pending capacity and deadlines")
	pf.register(f)
	pf.preflightFlag(f, "warn")
	f.StringVar(&registryHost, "registry", "", "push adapters to this registry (host:port, plain HTTP on loopback) instead of an embedded one")
	f.BoolVar(&watchWorkspaces, "watch-workspaces", false, "also reconcile Workspace custom resources in the --kubeconfig cluster (kubectl apply -f workspace.yaml)")
	f.StringVar(&crdGroup, "crd-group", "kaito.sh", "with --watch-workspaces: the Workspace CRD's API group")
	f.StringSliceVar(&submit, "submit", nil, "once up, submit these manifest files and print each workspace's timeline")
	return cmd
}

// submitAndWatch is `up --submit`: the quickstart's one command.
func (g *globals) submitAndWatch(ctx context.Context, files []string) {
	names, err := g.submitFiles(ctx, nil, files)
	if err != nil {
		fmt.Fprintln(g.err, "submit:", err)
		return
	}
	for _, n := range names {
		if err := g.watch(ctx, n); err != nil && ctx.Err() == nil {
			fmt.Fprintln(g.err, "watch:", err)
		}
	}
	fmt.Fprintf(g.out, "\nkaitoflow keeps running at %s (Ctrl-C stops it). Try:\n  go run ./cmd/kaitoflow get workspaces\n  go run ./cmd/kaitoflow chat %s \"What is Kaito?\"\n", g.server, names[len(names)-1])
}
