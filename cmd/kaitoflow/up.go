package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
	"github.com/kaitoflow/kaitoflow/internal/telemetry"
)

func newUp(g *globals) *cobra.Command {
	var (
		natsListen, listen string
		natsOpts           natsFlags
		drivers            driverFlags
		delivery           deliveryFlags
		submit             []string
		watchWorkspaces    bool
		crdGroup, registry string
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
			fns, err := drivers.config(watchWorkspaces)
			if err != nil {
				return err
			}
			fns.CRDGroup, fns.Replicas = crdGroup, natsOpts.replicas
			dataDir := drivers.dir()
			// OTLP when the OTEL_* environment names an endpoint (telemetry.Enabled), else nothing.
			tp, flush, err := telemetry.Tracer(cmd.Context(), "kaitoflow")
			if err != nil {
				return err
			}
			defer func() { _ = flush(context.WithoutCancel(cmd.Context())) }()
			log.Info("starting kaitoflow (embedded mode)", "data_dir", dataDir, "provider", drivers.d.Provider, "trainer", drivers.d.Trainer, "deployer", drivers.d.Deployer, "sim_delay", drivers.delay)
			p, err := embedded.Start(cmd.Context(), embedded.Config{
				DataDir: dataDir, NATS: natsOpts.Options, NATSListen: natsListen, Listen: listen,
				Logger: log, Tracer: tp, APIToken: g.token, Registry: registry,
				Delivery: delivery.options(), TickInterval: delivery.tick, Functions: fns,
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
	natsOpts.register(f, "", "use this NATS server (with JetStream) instead of the embedded one")
	f.StringVar(&natsListen, "nats-listen", "127.0.0.1:4222", "embedded NATS address; clients sign in as a role with this run's credentials, in DATA_DIR/nats/ROLE.url (kaitoflow fn tune --nats \"$(cat DATA_DIR/nats/tune.url)\")")
	f.StringVar(&listen, "listen", "127.0.0.1:8470", "API address")
	drivers.register(f, "warn")
	delivery.register(f)
	f.StringVar(&registry, "registry", "", "push adapters to this registry (host:port, plain HTTP on loopback) instead of an embedded one")
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
		if err := g.watch(ctx, g.client(), n); err != nil && ctx.Err() == nil {
			fmt.Fprintln(g.err, "watch:", err)
		}
	}
	fmt.Fprintf(g.out, "\nkaitoflow keeps running at %s (Ctrl-C stops it). Try:\n  go run ./cmd/kaitoflow get workspaces\n  go run ./cmd/kaitoflow chat %s \"What is Kaito?\"\n", g.server, names[len(names)-1])
}
