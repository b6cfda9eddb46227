package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

func newWait(g *globals) *cobra.Command {
	var (
		cluster clusterFlags
		forWhat string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "wait NAME --for=condition=COND[=STATUS] | --for=delete",
		Short: "Wait until a workspace has a condition (WorkspaceReady, InferenceReady, ...) or is deleted, as kubectl wait does",
		Long: `wait watches a workspace until the condition --for names has the status given (True when none is):
Kaito's conditions ResourceReady, JobStarted, WorkspaceSucceeded, InferenceReady and WorkspaceReady.
--for=delete waits until the workspace is deleted. It exits 0 when that happens and 1 when --timeout
passes first, or when the workspace fails while a condition is awaited (the failure is named).`,
		Example: "  kaitoflow wait workspace-tuning-phi-3 --for=condition=WorkspaceReady --timeout=30m",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			met, err := waitCondition(forWhat)
			if err != nil {
				return err
			}
			src, err := g.workspaces(cluster)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			var outcome error
			done := false
			err = src.Watch(ctx, args[0], func(w status.Workspace) bool {
				done, outcome = met(w)
				return !done
			})
			switch {
			case done && outcome != nil:
				return outcome
			case done:
				fmt.Fprintf(g.out, "workspace.%s/%s condition met\n", kaito.Group, args[0])
				return nil
			case errors.Is(ctx.Err(), context.DeadlineExceeded):
				return fmt.Errorf("timed out after %s waiting for %s on workspace %s", timeout, forWhat, args[0])
			case err != nil:
				return err
			}
			return fmt.Errorf("workspace %s: the watch ended before %s", args[0], forWhat)
		},
	}
	cmd.Flags().StringVar(&forWhat, "for", "", "condition=COND[=STATUS] (STATUS True when not given), or delete")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait")
	_ = cmd.MarkFlagRequired("for")
	cluster.register(cmd.Flags())
	return cmd
}

// waitCondition parses --for into a test of a workspace's record: done when met, or when it can
// no longer be met (a failed workspace awaited for a condition), with the error that says so.
func waitCondition(forWhat string) (func(status.Workspace) (bool, error), error) {
	if forWhat == "delete" {
		return func(w status.Workspace) (bool, error) { return w.Phase == status.Deleted, nil }, nil
	}
	spec, ok := strings.CutPrefix(forWhat, "condition=")
	if !ok || spec == "" {
		return nil, fmt.Errorf("--for %q: want condition=COND[=STATUS] or delete", forWhat)
	}
	cond, want, _ := strings.Cut(spec, "=")
	want = strings.ToLower(cmp.Or(want, "True"))
	return func(w status.Workspace) (bool, error) {
		if strings.ToLower(w.ConditionStatus(cond)) == want {
			return true, nil
		}
		switch w.Phase {
		case status.Failed:
			reason := "failed"
			if w.Failure != nil {
				reason = w.Failure.Reason + ": " + w.Failure.Message
			}
			return true, fmt.Errorf("workspace %s Failed while waiting for condition %s: %s", w.Name, spec, reason)
		case status.Deleted:
			return true, fmt.Errorf("workspace %s was deleted while waiting for condition %s", w.Name, spec)
		}
		return false, nil
	}, nil
}
