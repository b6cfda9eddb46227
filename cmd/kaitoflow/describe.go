package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

func newDescribe(g *globals) *cobra.Command {
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "describe NAME",
		Short: "Show a workspace in full, as kubectl describe: conditions, steps, attempts, adapters, events",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := g.getWorkspace(cmd.Context(), cluster, args[0])
			if err != nil {
				return err
			}
			return describe(g.out, w, time.Now())
		},
	}
	cluster.register(cmd.Flags())
	return cmd
}

// describe prints a workspace as kubectl describe prints an object: its fields, then each part of
// its status under a heading.
func describe(out io.Writer, w *status.Workspace, now time.Time) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	field := func(name, value string) {
		if value != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", name, value)
		}
	}
	field("Name", w.Name)
	field("Namespace", w.Namespace)
	field("API Version", kaito.APIVersionV1Beta1)
	field("Kind", kaito.Kind)
	field("Generation", fmt.Sprint(w.Generation))
	field("Created", w.Created.Format(time.RFC3339)+" ("+age(now.Sub(w.Created))+" ago)")
	field("Preset", w.Preset)
	field("Method", w.Method)
	field("Instance Type", w.InstanceType)
	field("Phase", string(w.Phase))
	field("State", w.State())
	field("Endpoint", w.Endpoint)
	field("Image", w.Image)
	if w.Live != 0 && w.Live != w.Generation {
		field("Serving Generation", fmt.Sprint(w.Live))
	}
	field("Held", w.Held)
	if w.Failure != nil {
		field("Failure", w.Failure.Reason+": "+w.Failure.Message)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out, "Conditions:")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  TYPE\tSTATUS\tREASON\tMESSAGE")
	for _, c := range w.Conditions {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, c.Message)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out, "Steps:")
	for _, s := range w.Steps {
		fmt.Fprintf(out, "  %-10s %8s\n", s.Name, s.Duration(now).Round(time.Millisecond))
	}
	printAttempts(out, *w)
	if len(w.History) > 0 {
		fmt.Fprintln(out, "Adapters:")
		var b bytes.Buffer
		if err := printAdapters(&b, w); err != nil {
			return err
		}
		for _, line := range strings.SplitAfter(b.String(), "\n") {
			if line != "" {
				fmt.Fprint(out, "  "+line)
			}
		}
	}
	fmt.Fprintln(out, "Events:")
	(&timeline{out: out, printed: map[string]bool{}}).events(*w)
	return nil
}
