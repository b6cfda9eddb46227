package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/internal/telemetry"
)

// upFlags are up's settings.
type upFlags struct {
	natsListen, listen string
	nats               fnhost.NATS
	drivers            fnhost.Drivers
	delivery           fnhost.Delivery
	submit             []string
	watchWorkspaces    bool
	crdGroup, registry string
}

func newUp(g *globals) *cobra.Command {
	var o upFlags
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the whole pipeline in this process (embedded NATS JetStream, every function, sim drivers, API)",
		Long: `up runs kaitoflow on one machine with no cluster: an embedded NATS server with JetStream (or
--nats for an existing one), the provision, tune, publish and serve functions with their sim
drivers (simulated GPU nodes, trainer and endpoint; a real OCI push to an embedded registry), the
status projector and the HTTP API. Stop it with Ctrl-C: in-flight steps finish first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, closeLog, err := g.upLogger(o.drivers.Dir())
			if err != nil {
				return err
			}
			defer closeLog()
			return o.run(cmd.Context(), g, log)
		},
	}
	f := cmd.Flags()
	o.nats.Register(f, "", "use this NATS server (with JetStream) instead of the embedded one")
	f.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:4222",
		"embedded NATS address; clients sign in as a role with this run's credentials, in DATA_DIR/nats/ROLE.url (kaitoflow fn tune --nats \"$(cat "+
			"DATA_DIR/nats/tune.url)\")")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8470", "API address")
	o.drivers.Register(f, "warn")
	o.delivery.Register(f)
	f.StringVar(&o.registry, "registry", "", "push adapters to this registry (host:port, plain HTTP on loopback) instead of an embedded one")
	f.BoolVar(&o.watchWorkspaces, "watch-workspaces", false,
		"also reconcile Workspace custom resources in the --kubeconfig cluster (kubectl apply -f workspace.yaml)")
	f.StringVar(&o.crdGroup, "crd-group", "kaito.sh", "with --watch-workspaces: the Workspace CRD's API group")
	f.StringSliceVar(&o.submit, "submit", nil, "once up, submit these manifest files and print each workspace's timeline")
	return cmd
}

func (o *upFlags) run(ctx context.Context, g *globals, log *slog.Logger) error {
	fns, err := o.drivers.Config(o.watchWorkspaces)
	if err != nil {
		return err
	}
	fns.CRDGroup, fns.Replicas = o.crdGroup, o.nats.Replicas
	dataDir := o.drivers.Dir()
	// OTLP when the OTEL_* environment names an endpoint (telemetry.Enabled), else nothing.
	tp, flush, err := telemetry.Tracer(ctx, "kaitoflow")
	if err != nil {
		return err
	}
	defer func() { _ = flush(context.WithoutCancel(ctx)) }()
	log.Info("starting kaitoflow (embedded mode)", "data_dir", dataDir, "provider", o.drivers.Provider, "trainer", o.drivers.Trainer,
		"deployer", o.drivers.Deployer, "sim_delay", o.drivers.SimDelay())
	p, err := embedded.Start(ctx, embedded.Config{
		DataDir: dataDir, NATS: o.nats.Options, NATSListen: o.natsListen, Listen: o.listen,
		Logger: log, Tracer: tp, APIToken: g.token, Registry: o.registry,
		Delivery: o.delivery.Options(), TickInterval: o.delivery.Tick, Functions: fns,
	})
	if err != nil {
		return err
	}
	g.server = p.URL
	if len(o.submit) > 0 {
		go g.submitAndWatch(ctx, o.submit)
	} else {
		cli := cliHint(p.URL)
		fmt.Fprintf(g.err, "\nkaitoflow is up at %s. In another terminal:\n  %s submit -f examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml\n"+
			"  %s watch workspace-tuning-phi-3\n  %s get workspaces\n\n", p.URL, cli, cli, cli)
	}
	<-ctx.Done()
	log.Info("shutting down: letting in-flight steps finish")
	return p.Close()
}

// upLogFile, under the data dir, is up's log when it runs in a terminal.
const upLogFile = "up.log"

// upLogger is up's logger. In a terminal the screen is for the timeline and the hints: the log goes
// to upLogFile under the data dir, and only warnings and errors reach the screen too. Elsewhere
// (piped, --log-format given) it logs as every command does.
func (g *globals) upLogger(dataDir string) (*slog.Logger, func(), error) {
	if g.logFormat != "auto" || !isTerminal(g.err) {
		log, err := g.logger()
		return log, func() {}, err
	}
	toFile, err := g.handlerOptions(anyLevel)
	if err != nil {
		return nil, nil, err
	}
	toScreen, _ := g.handlerOptions(slog.LevelWarn)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("data dir: %w", err)
	}
	path := filepath.Join(dataDir, upLogFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("log file: %w", err)
	}
	fmt.Fprintf(g.err, "kaitoflow logs to %s; warnings and errors show here too\n", path)
	h := slog.NewMultiHandler(slog.NewTextHandler(f, toFile), slog.NewTextHandler(g.err, toScreen))
	return slog.New(logctx.New(h)), func() { _ = f.Close() }, nil
}

// cliHint is how a user reaches this pipeline from another terminal: the command they ran, with
// --server when the API is not at the default address.
func cliHint(server string) string {
	cli := "kaitoflow"
	if strings.Contains(os.Args[0], string(filepath.Separator)+"go-build") {
		cli = "go run ./cmd/kaitoflow" // `go run` builds into a go-build temporary directory
	}
	if server != defaultServer {
		cli += " --server " + server
	}
	return cli
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
	cli := cliHint(g.server)
	fmt.Fprintf(g.out, "\nkaitoflow keeps running at %s (Ctrl-C stops it). Try:\n  %s get workspaces\n  %s chat %s \"What is Kaito?\"\n",
		g.server, cli, cli, names[len(names)-1])
}
