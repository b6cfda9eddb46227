package main

import (
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/controller"
	"github.com/kaitoflow/kaitoflow/internal/ingress"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

func newController(g *globals) *cobra.Command {
	var (
		in      ingressFlags
		pf      providerFlags
		group   string
		workers int
	)
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Reconcile Workspace custom resources with the pipeline (kubectl apply -f workspace.yaml)",
		Long: `controller watches Workspace objects (kaito.sh/v1alpha1, or --crd-group where Kaito itself owns
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
			cfg, err := pf.restConfig()
			if err != nil {
				return fmt.Errorf("controller needs a cluster: %w", err)
			}
			dyn, err := dynamic.NewForConfig(cfg)
			if err != nil {
				return err
			}
			nc, err := in.nats.Connect("kaitoflow-controller")
			if err != nil {
				return err
			}
			defer func() { _ = nc.Drain() }()
			js, err := jetstream.New(nc)
			if err != nil {
				return err
			}
			if _, err := runtime.EnsureStream(cmd.Context(), js, 1); err != nil {
				return err
			}
			store, err := status.Open(cmd.Context(), js, 1)
			if err != nil {
				return err
			}
			pub := runtime.JetStreamPublisher{JS: js}
			c := &controller.Controller{Client: dyn, Store: store, Publisher: pub, Group: group, Log: log,
				Submitter: &ingress.Submitter{Store: store, Publisher: pub, Policy: events.AddressPolicy{Allow: in.allow}, Source: controller.Source}}
			return c.Run(cmd.Context(), workers)
		},
	}
	in.register(cmd)
	cmd.Flags().StringVar(&pf.kubeconfig, "kubeconfig", "", "kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	cmd.Flags().StringVar(&group, "crd-group", "kaito.sh", "the Workspace CRD's API group (another one where Kaito is installed)")
	cmd.Flags().IntVar(&workers, "workers", 4, "Workspaces reconciled at once")
	return cmd
}
