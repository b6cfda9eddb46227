// Command job-run is the tuning pod's wrapper around the trainer, in an image of its own: its
// init container copies this binary into the trainer's container (install-self), which runs it
// around the trainer's command. It links job-run alone, not the CLI.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cmd := jobrun.Command(func() (*slog.Logger, error) { return logctx.JSON(os.Stderr, "info") })
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.ExecuteContext(ctx)
	stop()
	var ee jobrun.ExitError
	switch {
	case errors.As(err, &ee):
		// The trainer has said why, on stderr and in the termination log; its code is what the
		// Job's failure policy reads.
		os.Exit(ee.Code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "job-run:", err)
		os.Exit(1)
	}
}
