package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/compose/controller"
	"github.com/kaitoflow/kaitoflow/internal/compose/election"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
	"github.com/kaitoflow/kaitoflow/internal/compose/pipeline"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// controllerFlags are the controller's settings.
type controllerFlags struct {
	nats    fnhost.NATS
	drivers fnhost.Drivers
	group   string
	workers int
	elect   bool
	leaseNS string
	metrics string
	health  string
	sets    bool
}

func newController(g *globals) *cobra.Command {
	var o controllerFlags
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Reconcile Workspace custom resources with the pipeline (kubectl apply -f workspace.yaml)",
		Long: `controller watches Workspace objects (kaito.sh, read at v1beta1 whichever version they were applied at, or --crd-group where Kaito itself owns
kaito.sh): a create or spec change becomes kaitoflow.workspace.requested with the object's
metadata.generation; a deletion becomes kaitoflow.workspace.deleted, and the finalizer
kaitoflow.io/release-capacity keeps the object until the pipeline reports its capacity released; the
status store's record is written to the object's status (Kaito's conditions, so kubectl get workspace
prints its columns, plus phase, endpoint, image and failure).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			return o.run(cmd.Context(), log)
		},
	}
	fl := cmd.Flags()
	o.nats.Register(fl, "nats://127.0.0.1:4222", "NATS server with JetStream")
	o.drivers.RegisterCluster(fl)
	fl.StringVar(&o.group, "crd-group", "kaito.sh", "the Workspace CRD's API group (another one where Kaito is installed)")
	fl.IntVar(&o.workers, "workers", 4, "Workspaces reconciled at once")
	fl.BoolVar(&o.elect, "leader-elect", true, "replicas elect one leader with a Lease, and only it reconciles")
	fl.StringVar(&o.leaseNS, "leader-election-namespace", "kaitoflow", "the namespace of the leader Lease ("+controller.LeaseName+")")
	fl.BoolVar(&o.sets, "inferencesets", true, "also reconcile Kaito's InferenceSets (their CRD, deploy/knative/crd, must be installed)")
	fl.StringVar(&o.metrics, "metrics-bind-address", ":8080", "where the controller serves Prometheus metrics (its reconciles, work queue and API "+
		"requests); 0 serves none")
	fl.StringVar(&o.health, "health-probe-bind-address", ":8081", "where the controller serves /healthz and /readyz (ready once its cache "+
		"has synced); empty serves none")
	return cmd
}

func (o *controllerFlags) run(ctx context.Context, log *slog.Logger) error {
	cfg, err := o.drivers.Config(true)
	if err != nil {
		return err
	}
	nc, err := o.nats.Connect("kaitoflow-controller")
	if err != nil {
		return err
	}
	defer func() { _ = nc.Drain() }()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if _, err := o.nats.Storage(log).EnsureStream(ctx, js); err != nil {
		return err
	}
	cfg.Replicas = o.nats.Replicas
	pub := runtime.JetStreamPublisher{JS: js}
	cfg.Logger, cfg.JetStream, cfg.Publisher, cfg.CRDGroup, cfg.ControllerWorkers = log, js, pub, o.group, o.workers
	cfg.ControllerMetrics, cfg.ControllerHealth = o.metrics, o.health
	if o.sets {
		cfg.ControllerKinds = []string{kaito.Kind, kaito.KindInferenceSet}
	}
	if o.elect {
		id, err := os.Hostname() // the pod's name
		if err != nil {
			return err
		}
		cfg.LeaderElection = &election.Lease{Namespace: o.leaseNS, Identity: id}
	}
	a, err := pipeline.Build(ctx, cfg)
	if err != nil {
		return err
	}
	return a.Watches[0].Run(ctx, pub)
}
