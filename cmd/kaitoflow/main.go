// Command kaitoflow fine-tunes and serves open models as an event-driven pipeline. `kaitoflow up`
// runs everything in one process; the other commands talk to it; `kaitoflow fn` runs one function
// alone, as Knative does.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"

	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// defaultServer is where the CLI finds the API unless told: `up`'s default --listen.
const defaultServer = "http://127.0.0.1:8470"

func main() {
	// The sim trainer is this binary re-executed as the tuning "process" job-run wraps.
	tunesim.TrainerMain()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root := newRoot(os.Stdout, os.Stderr)
	asKubectlPlugin(root, os.Args[0])
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		var ex exitError
		if !errors.As(err, &ex) {
			fmt.Fprintln(os.Stderr, "Error:", err)
		}
		os.Exit(exitCode(err))
	}
}

// kubectlPlugin is the name that makes kaitoflow a kubectl plugin: kubectl runs
// `kubectl kaitoflow get workspaces` as `kubectl-kaitoflow get workspaces` when a binary (or a
// link to kaitoflow) of that name is on the PATH.
const kubectlPlugin = "kubectl-kaitoflow"

// asKubectlPlugin makes help and usage say `kubectl kaitoflow` when the binary runs as the
// plugin.
func asKubectlPlugin(root *cobra.Command, argv0 string) {
	if filepath.Base(argv0) == kubectlPlugin {
		if root.Annotations == nil {
			root.Annotations = map[string]string{}
		}
		root.Annotations[cobra.CommandDisplayNameAnnotation] = "kubectl kaitoflow"
	}
}

// Exit codes, so a script tells "it failed" from "I could not ask" (docs/cli.md).
const (
	// exitFailed: the command ran and the answer is no: a workspace failed or was refused, a wait
	// timed out, bad input.
	exitFailed = 1
	// exitUnreachable: the API (or the cluster's API server) could not be reached.
	exitUnreachable = 3
)

// exitCode is the process's exit code for a command's error.
func exitCode(err error) int {
	var ex exitError
	var urlErr *url.Error
	switch {
	case errors.As(err, &ex):
		return ex.code
	case errors.As(err, &urlErr):
		return exitUnreachable
	}
	return exitFailed
}

// exitError ends the command with a code after it has already said why.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

type globals struct {
	server    string
	token     string
	tokenFile string
	namespace string
	logFormat string
	logLevel  string
	out, err  io.Writer
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{out: stdout, err: stderr}
	root := &cobra.Command{
		Use:   "kaitoflow",
		Short: "Fine-tune and serve open models as an event-driven, serverless pipeline",
		Long: "kaitoflow runs Kaito Workspaces (kaito.sh/v1alpha1 and v1beta1) as CloudEvents flowing through small functions on NATS " +
			"JetStream:\nworkspace.requested → node.ready → tuning.completed → image.pushed → inference.ready.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildVersion(),
		// Every flag can come from the environment as KAITOFLOW_<FLAG> (--trainer-image is
		// KAITOFLOW_TRAINER_IMAGE), so a ConfigMap's envFrom configures a function; a flag given
		// on the command line wins.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := fnhost.FromEnv(cmd.Flags()); err != nil {
				return err
			}
			var err error
			g.token, err = fnhost.Token(g.token, g.tokenFile)
			return err
		},
	}
	root.PersistentFlags().StringVar(&g.server, "server", defaultServer, "kaitoflow API URL (env KAITOFLOW_SERVER)")
	root.PersistentFlags().StringVarP(&g.namespace, "namespace", "n", "",
		"workspace namespace (default: the kubeconfig context's with --kubeconfig or --context, else default)")
	root.PersistentFlags().StringVar(&g.token, "token", "",
		"bearer token for the API; prefer KAITOFLOW_TOKEN or --token-file, which other users cannot read in the process list (up requires it of "+
			"clients when set)")
	// A flag's value is in the process list for every local user to read: the token comes from
	// the environment or a file, and --token still works for scripts, with a warning.
	_ = root.PersistentFlags().MarkDeprecated("token", "use KAITOFLOW_TOKEN or --token-file: a flag's value is visible to every user in the process list")
	root.PersistentFlags().StringVar(&g.tokenFile, "token-file", "", "read the API's bearer token from this file (env KAITOFLOW_TOKEN_FILE)")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "auto", "log format: auto (text on a terminal, JSON otherwise), text, json")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(newUp(g), newSubmit(g), newGet(g), newWatch(g), newDelete(g), newRollback(g), newPromote(g), newAdapters(g), newChat(g),
		newFn(g), newPresets(g), newPlan(g), newPullAdapter(g), newChatProxy(g), newBridge(g), newWebhook(g),
		newController(g), newNATSAuth(g), newVersion(g), newWait(g), newDescribe(g), newInstall(g), newUninstall(g), newLogs(g))
	registerCompletion(g, root)
	root.SetOut(stdout) // help and the shell's completions
	root.SetErr(stderr)
	return root
}

// logger writes to stderr: text on a terminal, JSON otherwise (log collectors parse it).
func (g *globals) logger() (*slog.Logger, error) {
	opts, err := g.handlerOptions(anyLevel)
	if err != nil {
		return nil, err
	}
	format := g.logFormat
	if format == "auto" {
		format = "json"
		if isTerminal(g.err) {
			format = "text"
		}
	}
	switch format {
	case "json":
		return slog.New(logctx.New(slog.NewJSONHandler(g.err, opts))), nil
	case "text":
		return slog.New(logctx.New(slog.NewTextHandler(g.err, opts))), nil
	}
	return nil, fmt.Errorf("--log-format %q: want auto, text or json", g.logFormat)
}

// anyLevel is no floor: the handler logs at --log-level as given.
const anyLevel = slog.Level(math.MinInt)

// handlerOptions are every log handler's options: --log-level, raised to at least floor, and
// durations as seconds.
func (g *globals) handlerOptions(floor slog.Level) (*slog.HandlerOptions, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return &slog.HandlerOptions{Level: max(level, floor), ReplaceAttr: logctx.Seconds}, nil
}

// isTerminal reports whether w is a terminal (a character device, as a TTY is).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
