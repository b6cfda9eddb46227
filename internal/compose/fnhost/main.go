package fnhost

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// Main is the whole of a function's own binary (cmd/<function>): it runs p until SIGTERM and
// exits 1, the error on stderr, if p fails.
func Main(p assembly.Part) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Command(p).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", p.Name, err)
		os.Exit(1)
	}
}

// Command is p's command, the root of its own binary: its flags, each also read from
// KAITOFLOW_<FLAG>, and JSON logs on stderr.
func Command(p assembly.Part) *cobra.Command {
	var f Flags
	var level, tokenFile string
	cmd := &cobra.Command{
		Use:           p.Name,
		Short:         "kaitoflow's " + p.Name + " function, alone in its process",
		Long:          "kaitoflow's " + p.Name + " function, alone in its process. " + Usage,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := FromEnv(cmd.Flags()); err != nil {
				return err
			}
			log, err := logctx.JSON(os.Stderr, level)
			if err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			if f.SimToken, err = Token(os.Getenv("KAITOFLOW_TOKEN"), tokenFile); err != nil {
				return err
			}
			return Run(cmd.Context(), p, &f, log)
		},
	}
	f.Register(cmd.Flags())
	cmd.Flags().StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	cmd.Flags().StringVar(&tokenFile, "token-file", "",
		"serve with the sim deployer: the bearer token its endpoints require, from this file (or KAITOFLOW_TOKEN)")
	return cmd
}

// Token is the bearer token a process requires or sends: token (a flag's or the environment's),
// or the first line of file, which must hold one; not both.
func Token(token, file string) (string, error) {
	if file == "" {
		return token, nil
	}
	if token != "" {
		return "", fmt.Errorf("a token (--token or KAITOFLOW_TOKEN) and --token-file %s: give one", file)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	if token = strings.TrimSpace(string(b)); token == "" {
		return "", fmt.Errorf("--token-file %s is empty", file)
	}
	return token, nil
}
