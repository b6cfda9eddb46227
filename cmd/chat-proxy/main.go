// Command chat-proxy is the front of every inference pod: Kaito's POST /chat, the OpenAI API
// passed through, and the replica's adapter reconciler. It is the same command as `kaitoflow
// chat-proxy`, in an image of its own that links only what it uses: a sidecar in every replica
// should not carry the whole CLI (bench: FunctionStart).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// JSON on stderr, as the CLI logs where stderr is no terminal: a pod's log is collected.
	cmd := chatproxy.Command(func() (*slog.Logger, error) { return logctx.JSON(os.Stderr, "info") })
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "chat-proxy:", err)
		os.Exit(1)
	}
}
