package jobrun

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/kaitoflow/kaitoflow/internal/kubeclient"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

// Command is job-run's command, the root of its own binary (cmd/job-run, the tuning pod's
// wrapper around the trainer): fetch the dataset, run the trainer, upload the adapter, summarise.
// Its install-self subcommand is the pod's init container, which copies the binary into the
// trainer's container. A trainer that fails returns its ExitError, whose code the process exits
// with, as the Job's failure policy reads it.
func Command(logger func() (*slog.Logger, error)) *cobra.Command {
	var c Config
	var allow []string
	cmd := &cobra.Command{
		Use:   "job-run [flags] -- TRAINER [ARGS...]",
		Short: "The tuning Job's entrypoint: fetch the dataset, run the trainer, upload the adapter, summarise",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			c.Command, c.Policy = args, netguard.AddressPolicy{Allow: allow}
			c.Reporter = podReporter(log)
			return Run(cmd.Context(), c, log)
		},
	}
	RegisterFlags(cmd.Flags(), &c, &allow)
	cmd.AddCommand(installSelf())
	return cmd
}

func installSelf() *cobra.Command {
	return &cobra.Command{
		Use:   "install-self PATH",
		Short: "Copy this binary to PATH (the tuning pod's init container, into a volume the trainer's container mounts)",
		Args:  cobra.ExactArgs(1),
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
func podReporter(log *slog.Logger) Reporter {
	pod, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if pod == "" || ns == "" {
		return nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		log.Warn("job-run: no in-cluster API access; progress is not reported", "err", err)
		return nil
	}
	client, err := kubeclient.New(cfg)
	if err != nil {
		log.Warn("job-run: no API client; progress is not reported", "err", err)
		return nil
	}
	return PodAnnotator{Client: client, Namespace: ns, Pod: pod}
}
