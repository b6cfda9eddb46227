package main

import (
	"fmt"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/functions/serve"
)

func newChatProxy(g *globals) *cobra.Command {
	var listen, upstream, model string
	var maxBody int64
	cmd := &cobra.Command{
		Use:   "chat-proxy",
		Short: "The inference container's front: Kaito's POST /chat, the OpenAI API passed through (streaming), /health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			u, err := url.Parse(upstream)
			if err != nil || u.Host == "" {
				return fmt.Errorf("--upstream %q: want a URL such as http://127.0.0.1:8000", upstream)
			}
			p := &serve.Proxy{Upstream: u, Model: model, MaxBody: maxBody, Log: log}
			log.Info("chat proxy listening", "addr", listen, "upstream", upstream, "model", model)
			return serveHTTP(cmd.Context(), listen, p.Handler())
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":5000", "address to serve on")
	cmd.Flags().StringVar(&upstream, "upstream", "http://127.0.0.1:8000", "the model server (vLLM's OpenAI server) in the same pod")
	cmd.Flags().StringVar(&model, "model", "", "the served model or adapter name /chat uses")
	cmd.Flags().Int64Var(&maxBody, "max-body", serve.DefaultMaxBody, "largest request body accepted")
	return cmd
}
