package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	ggcrname "github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
)

func newJobRun(g *globals) *cobra.Command {
	var c jobrun.Config
	var allow []string
	cmd := &cobra.Command{
		Use:    "job-run [flags] -- TRAINER [ARGS...]",
		Short:  "The tuning Job's entrypoint: fetch the dataset, run the trainer, upload the adapter, summarise",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			c.Command, c.Policy = args, netguard.AddressPolicy{Allow: allow}
			c.Reporter = podReporter(log)
			err = jobrun.Run(cmd.Context(), c, log)
			var ee jobrun.ExitError
			if errors.As(err, &ee) {
				// The trainer has said why, on stderr and in the termination log.
				return exitError{code: ee.Code}
			}
			return err
		},
	}
	jobrun.RegisterFlags(cmd.Flags(), &c, &allow)
	return cmd
}

func newInstallSelf() *cobra.Command {
	return &cobra.Command{
		Use:    "install-self PATH",
		Short:  "Copy this binary to PATH (the tuning Job's init container)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			in, err := os.Open(self)
			if err != nil {
				return err
			}
			defer in.Close()
			if err := os.MkdirAll(filepath.Dir(args[0]), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(args[0], os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, in); err != nil {
				out.Close()
				return fmt.Errorf("install %s: %w", args[0], err)
			}
			return out.Close()
		},
	}
}

// podReporter reports progress on the pod job-run runs in (POD_NAME and POD_NAMESPACE from the
// downward API), or nowhere outside a cluster.
func podReporter(log *slog.Logger) jobrun.Reporter {
	pod, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if pod == "" || ns == "" {
		return nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		log.Warn("job-run: no in-cluster API access; progress is not reported", "err", err)
		return nil
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil
	}
	return jobrun.PodAnnotator{Client: client, Namespace: ns, Pod: pod}
}

func newPullAdapter(g *globals) *cobra.Command {
	var insecure, acrIdentity bool
	var secrets []string
	cmd := &cobra.Command{
		Use:   "pull-adapter REF DIR",
		Short: "Pull an adapter image and unpack its data/ files into DIR, verifying every digest (serve's init container)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []ggcrname.Option
			if insecure {
				opts = append(opts, ggcrname.Insecure)
			}
			ref, err := ggcrname.ParseReference(args[0], opts...)
			if err != nil {
				return fmt.Errorf("adapter reference %q: %w", args[0], err)
			}
			keychain, err := registryauth.AdapterKeychain(secrets, acrIdentity)
			if err != nil {
				return err
			}
			n, err := adapter.Pull(ref, args[1], adapter.AdapterLimits, remote.WithContext(cmd.Context()), remote.WithAuthFromKeychain(keychain))
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "pulled %s: %d file(s) into %s\n", ref, n, args[1])
			return nil
		},
	}
	cmd.Flags().BoolVar(&insecure, "insecure-registry", false, "plain HTTP to the registry (local registries and tests only)")
	cmd.Flags().BoolVar(&acrIdentity, "acr-identity", false,
		"sign in to Azure Container Registries with the pod's workload identity when no pull secret has the registry's credentials")
	cmd.Flags().StringArrayVar(&secrets, "pull-secret", nil,
		"dockerconfigjson file with the registry credentials (repeatable: the first that has the registry's credentials is used)")
	return cmd
}
