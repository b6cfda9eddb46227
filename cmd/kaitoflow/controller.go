package main

import (
	"os"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/controller"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

func newController(g *globals) *cobra.Command {
	var (
		nats    natsFlags
		drivers driverFlags
		group   string
		workers int
		elect   bool
		leaseNS string
	)
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
			cfg, err := drivers.config(true)
			if err != nil {
				return err
			}
			nc, err := nats.Connect("kaitoflow-controller")
			if err != nil {
				return err
			}
			defer func() { _ = nc.Drain() }()
			js, err := jetstream.New(nc)
			if err != nil {
				return err
			}
			if _, err := nats.storage(log).EnsureStream(cmd.Context(), js); err != nil {
				return err
			}
			cfg.Replicas = nats.replicas
			pub := runtime.JetStreamPublisher{JS: js}
			cfg.Logger, cfg.JetStream, cfg.Publisher, cfg.CRDGroup, cfg.ControllerWorkers = log, js, pub, group, workers
			if elect {
				id, err := os.Hostname() // the pod's name
				if err != nil {
					return err
				}
				cfg.LeaderElection = &controller.Leader{Namespace: leaseNS, Identity: id}
			}
			a, err := assembly.Build(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return a.Watches[0].Run(cmd.Context(), pub)
		},
	}
	fl := cmd.Flags()
	nats.register(fl, "nats://127.0.0.1:4222", "NATS server with JetStream")
	fl.StringSliceVar(&drivers.allow, "allow-host", nil, "private dataset hosts or CIDRs that workspaces may name (repeatable)")
	fl.StringVar(&drivers.kubeconfig, "kubeconfig", "", "kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	fl.Float32Var(&drivers.qps, "kube-qps", 50, "requests per second to the Kubernetes API (burst twice that)")
	fl.StringVar(&group, "crd-group", "kaito.sh", "the Workspace CRD's API group (another one where Kaito is installed)")
	fl.IntVar(&workers, "workers", 4, "Workspaces reconciled at once")
	fl.BoolVar(&elect, "leader-elect", true, "replicas elect one leader with a Lease, and only it reconciles")
	fl.StringVar(&leaseNS, "leader-election-namespace", "kaitoflow", "the namespace of the leader Lease ("+controller.LeaseName+")")
	return cmd
}
