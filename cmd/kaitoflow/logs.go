package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune/jobs"
)

func newLogs(g *globals) *cobra.Command {
	var (
		cluster clusterFlags
		follow  bool
		attempt int
	)
	cmd := &cobra.Command{
		Use:   "logs NAME [-f] [--attempt N]",
		Short: "Print the trainer's output of the workspace's tuning run, as kubectl logs of its pod",
		Long: `logs prints what the trainer of the workspace's current generation wrote (its output and its
errors), from the newest attempt unless --attempt says which. -f follows it while the attempt runs.
From up: the run's log (the sim's simulated trainer, or the real one with --trainer local) or, with
--trainer job, the tuning pod's. With --kubeconfig/--context: the trainer container of the tuning
Job's newest pod, as kubectl logs reads it (a pod that is gone has no log).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if attempt < 0 {
				return fmt.Errorf("--attempt %d: want 1 or more (0: the newest)", attempt)
			}
			src, err := g.workspaces(cluster)
			if err != nil {
				return err
			}
			cw, ok := src.(*clusterWorkspaces)
			if !ok {
				return g.client().Logs(cmd.Context(), args[0], attempt, follow, g.out)
			}
			w, err := cw.Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			ref := events.Ref{Namespace: w.Namespace, Name: w.Name, Generation: w.Generation}
			return (&jobs.Trainer{Client: cw.kube}).Logs(cmd.Context(), ref, attempt, follow, g.out)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output while the attempt runs")
	cmd.Flags().IntVar(&attempt, "attempt", 0, "which tuning attempt of the generation (default: the newest)")
	cluster.register(cmd.Flags())
	return cmd
}
