package main

import (
	"cmp"
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// releaseVersion is the release this binary was built for, stamped at link time by the release
// build (.ko.yaml: -X main.releaseVersion=...); empty in any other build.
var releaseVersion string

// buildVersion describes this binary: the release it was built for, else what the Go toolchain
// recorded in it (the module version: a tag when built with `go install …@v0.2.0`, "(devel)"
// from a checkout), then the VCS revision and time, and whether the tree had uncommitted changes.
func buildVersion() string {
	return describeBuild(releaseVersion)
}

func describeBuild(release string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (no build info)"
	}
	v := cmp.Or(release, bi.Main.Version, "(devel)")
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		v += " " + rev
		if settings["vcs.modified"] == "true" {
			v += "-dirty"
		}
		if t := settings["vcs.time"]; t != "" {
			v += " (" + t + ")"
		}
	}
	return v + " " + bi.GoVersion
}

func newVersion(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print kaitoflow's module version, VCS revision and Go version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintln(g.out, "kaitoflow", buildVersion())
			return err
		},
	}
}
