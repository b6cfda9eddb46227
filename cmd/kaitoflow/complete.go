package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// takesWorkspaceName reports whether a command's first argument is a workspace's name: the shell
// completes it from the workspaces the API (or, with --kubeconfig/--context, the cluster) has.
func takesWorkspaceName(command string) bool {
	switch command {
	case "adapters", "chat", "delete", "describe", "logs", "promote", "rollback", "wait", "watch":
		return true
	}
	return false
}

// outputFormats are what -o takes, by command.
func outputFormats(command string) []string {
	switch command {
	case "get":
		return []string{"yaml", "json", "name", "wide", "jsonpath=", "custom-columns="}
	case "adapters", "version", "plan":
		return []string{"json", "yaml"}
	}
	return nil
}

// registerCompletion gives the commands under root their dynamic completion: workspace names,
// resource types and -o values.
func registerCompletion(g *globals, root *cobra.Command) {
	for _, c := range root.Commands() {
		name := c.Name()
		switch {
		case takesWorkspaceName(name):
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
				if len(args) > 0 {
					return nil, cobra.ShellCompDirectiveNoFileComp
				}
				return g.workspaceNames(cmd), cobra.ShellCompDirectiveNoFileComp
			}
		case name == "get":
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
				switch {
				case len(args) == 0:
					return []string{"workspaces", "configmaps"}, cobra.ShellCompDirectiveNoFileComp
				case len(args) == 1 && strings.HasPrefix(args[0], "w"):
					return g.workspaceNames(cmd), cobra.ShellCompDirectiveNoFileComp
				}
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
		}
		if name == "rollback" || name == "promote" {
			_ = c.RegisterFlagCompletionFunc("generation", func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
				if len(args) == 0 {
					return nil, cobra.ShellCompDirectiveNoFileComp
				}
				return g.generations(cmd, args[0]), cobra.ShellCompDirectiveNoFileComp
			})
		}
		if formats := outputFormats(name); formats != nil {
			_ = c.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp|cobra.ShellCompDirectiveNoSpace))
		}
	}
}

// completionSource is the workspaces a completion reads, as the command's flags say, and a
// context of a couple of seconds: a shell must not hang on a server that is not there.
func (g *globals) completionSource(cmd *cobra.Command) (workspaceSource, context.Context, context.CancelFunc, error) {
	var c clusterFlags
	c.kubeconfig, _ = cmd.Flags().GetString("kubeconfig")
	c.context, _ = cmd.Flags().GetString("context")
	src, err := g.workspaces(c)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	return src, ctx, cancel, nil
}

// workspaceNames lists the workspaces a completion offers; none when they cannot be read.
func (g *globals) workspaceNames(cmd *cobra.Command) []string {
	src, ctx, cancel, err := g.completionSource(cmd)
	if err != nil {
		return nil
	}
	defer cancel()
	list, err := src.List(ctx, false)
	if err != nil {
		return nil
	}
	names := make([]string, len(list))
	for i, w := range list {
		names[i] = w.Name
	}
	return names
}

// generations lists the generations of a workspace that pushed an adapter, each with what it is
// (cobra shows the text after the tab as a description).
func (g *globals) generations(cmd *cobra.Command, name string) []string {
	src, ctx, cancel, err := g.completionSource(cmd)
	if err != nil {
		return nil
	}
	defer cancel()
	w, err := src.Get(ctx, name)
	if err != nil {
		return nil
	}
	var out []string
	for _, p := range w.History {
		if p.Digest == "" {
			continue
		}
		what := "pushed"
		switch {
		case w.Endpoint != "" && p.Generation == w.Serving():
			what = "serving"
		case p.Held != "":
			what = "held: " + p.Held
		}
		out = append(out, fmt.Sprintf("%d\t%s", p.Generation, what))
	}
	return out
}
