package chatproxy

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/internal/httpserve"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
)

// Command is the chat-proxy command: its own binary's (cmd/chat-proxy, the image every inference
// pod runs) and `kaitoflow chat-proxy`'s. logger gives the log it writes to.
func Command(logger func() (*slog.Logger, error)) *cobra.Command {
	var listen, adminListen, adminToken, upstream, model, adapterSet, adapterDir string
	var maxBody int64
	var modelMetrics bool
	var poll time.Duration
	var allow []string
	cmd := &cobra.Command{
		Use:   "chat-proxy",
		Short: "The inference container's front: Kaito's POST /chat, the OpenAI API passed through (streaming), /health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			u, err := url.Parse(upstream)
			if err != nil || u.Host == "" {
				return fmt.Errorf("--upstream %q: want a URL such as http://127.0.0.1:8000", upstream)
			}
			p := &Proxy{Upstream: u, Model: model, MaxBody: maxBody, Log: log, AdminTokenFile: adminToken, ModelMetrics: modelMetrics}
			if adapterSet != "" {
				// This replica loads the adapter set into the model server next to it, at start and
				// whenever the deployer changes the set, and routes to what it loaded.
				// Registries are reached through the address policy: an adapter image was checked
				// at submit, and the name it resolves to now is checked at connect.
				policy := netguard.AddressPolicy{Allow: allow}
				pull := RegistryPuller(func(spec AdapterSpec) (authn.Keychain, error) {
					return registryauth.AdapterKeychain(spec.PullSecrets, spec.ACRIdentity)
				}, remote.WithTransport(netguard.Transport(policy)))
				replica, _ := os.Hostname() // the pod's name
				p.Adapters = &AdapterManager{Runtime: u, Dir: adapterDir, Pull: pull, Replica: replica, Log: log, UnloadAfter: time.Minute}
				go p.Adapters.Run(cmd.Context(), FileSource(adapterSet), poll)
				go func() {
					if err := httpserve.Serve(cmd.Context(), adminListen, p.AdminHandler()); err != nil {
						log.Error("chat proxy admin listener", "addr", adminListen, "err", err)
					}
				}()
			}
			log.Info("chat proxy listening", "addr", listen, "upstream", upstream, "model", model, "adapterSet", adapterSet)
			return httpserve.Serve(cmd.Context(), listen, p.Handler())
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":5000", "address to serve on")
	cmd.Flags().StringVar(&upstream, "upstream", "http://127.0.0.1:8000", "the model server (vLLM's OpenAI server) in the same pod")
	cmd.Flags().StringVar(&model, "model", "", "the served model or adapter name /chat uses")
	cmd.Flags().StringVar(&adapterSet, "adapter-set", "",
		"the adapter set to serve (the deployer's ConfigMap, mounted): loaded live through the model server's runtime LoRA API")
	cmd.Flags().StringVar(&adminListen, "admin-listen", ":5001",
		"with --adapter-set: where kaitoflow asks this replica what it serves (GET /adapters); not routed by Knative")
	cmd.Flags().StringVar(&adminToken, "admin-token-file", "",
		"with --adapter-set: a file holding the bearer token GET /adapters requires (the deployer's, in the adapter set's ConfigMap); "+
			"read at every request")
	cmd.Flags().StringVar(&adapterDir, "adapter-dir", "/mnt/adapters", "where adapter images are unpacked for the model server to read")
	cmd.Flags().DurationVar(&poll, "adapter-poll", 2*time.Second, "how often the adapter set file is read for changes")
	cmd.Flags().Int64Var(&maxBody, "max-body", DefaultMaxBody, "largest request body accepted")
	cmd.Flags().BoolVar(&modelMetrics, "model-metrics", false,
		"serve the model server's GET /metrics on --listen, adapters under their public names, for an inference gateway's endpoint picker "+
			"(readable by whoever can call the endpoint)")
	cmd.Flags().StringArrayVar(&allow, "allow-host", nil,
		"a private registry host or CIDR adapter pulls may connect to (repeatable; the pipeline's --allow-host)")
	return cmd
}
