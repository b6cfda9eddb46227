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

// build is what this binary says of itself.
type build struct {
	// Version is the release it was built for, else the module version the Go toolchain recorded
	// (a tag when built with `go install …@v0.2.0`, "(devel)" from a checkout).
	Version  string `json:"version"`
	Revision string `json:"revision,omitempty"`
	// Modified: built from a tree with uncommitted changes.
	Modified bool   `json:"modified,omitempty"`
	Time     string `json:"time,omitempty"`
	Go       string `json:"go"`
}

// buildVersion describes this binary in one line.
func buildVersion() string {
	return describeBuild(releaseVersion)
}

func describeBuild(release string) string {
	b := readBuild(release)
	v := b.Version
	if b.Revision != "" {
		v += " " + b.Revision
		if b.Modified {
			v += "-dirty"
		}
		if b.Time != "" {
			v += " (" + b.Time + ")"
		}
	}
	return v + " " + b.Go
}

// readBuild is the build info the toolchain recorded, with release as the version when set.
func readBuild(release string) build {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return build{Version: cmp.Or(release, "unknown (no build info)")}
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	return build{Version: cmp.Or(release, bi.Main.Version, "(devel)"), Revision: settings["vcs.revision"],
		Modified: settings["vcs.modified"] == "true", Time: settings["vcs.time"], Go: bi.GoVersion}
}

func newVersion(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version [-o json|yaml]",
		Short: "Print kaitoflow's module version, VCS revision and Go version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			switch output {
			case "":
				_, err := fmt.Fprintln(g.out, "kaitoflow", buildVersion())
				return err
			case "json", "yaml":
				return printObjects(g.out, []build{readBuild(releaseVersion)}, output, true)
			}
			return fmt.Errorf("-o %q: want json or yaml", output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "json or yaml: the fields, for scripts")
	return cmd
}
