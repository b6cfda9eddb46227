package main

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
	"github.com/kaitoflow/kaitoflow/internal/compose/pipeline"
)

func newFn(g *globals) *cobra.Command {
	var f fnhost.Flags
	cmd := &cobra.Command{
		Use:   "fn " + strings.Join(pipeline.Names(), "|"),
		Short: "Run one function alone: over HTTP (a Knative Service) or as a JetStream consumer",
		Long: "fn runs a single function, as the function's own image (cmd/<function>) does in a cluster.\n" +
			fnhost.Usage,
		Args:      cobra.ExactArgs(1),
		ValidArgs: pipeline.Names(),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := pipeline.PartNamed(args[0])
			if err != nil {
				return err
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			f.SimToken = g.token
			return fnhost.Run(cmd.Context(), p, &f, log)
		},
	}
	f.Register(cmd.Flags())
	return cmd
}
