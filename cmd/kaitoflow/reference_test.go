package main

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"

	"github.com/kaitoflow/kaitoflow/internal/golden"
)

// referenceDir is the CLI reference, one Markdown page per command, generated from the commands
// themselves: GOLDEN_UPDATE=1 go test ./cmd/kaitoflow -run Reference rewrites it.
const referenceDir = "../../docs/reference"

// The CLI reference under docs/ is what the commands say now: a flag or a help text changed
// without the reference fails here.
func TestCLIReferenceIsCurrent(t *testing.T) {
	// Defaults read from the environment at construction (Knative's $PORT and $K_SINK).
	t.Setenv("PORT", "")
	t.Setenv("K_SINK", "")
	root := newRoot(io.Discard, io.Discard)
	var disable func(*cobra.Command)
	disable = func(c *cobra.Command) {
		c.DisableAutoGenTag = true
		for _, sub := range c.Commands() {
			disable(sub)
		}
	}
	disable(root)
	dir := t.TempDir()
	if err := doc.GenMarkdownTree(root, dir); err != nil {
		t.Fatal(err)
	}
	generated, err := filepath.Glob(filepath.Join(dir, "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range generated {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, filepath.Base(f))
		golden.CheckFile(t, filepath.Join(referenceDir, filepath.Base(f)), b)
	}
	committed, _ := filepath.Glob(filepath.Join(referenceDir, "*.md"))
	for _, f := range committed {
		if !slices.Contains(names, filepath.Base(f)) && !strings.EqualFold(filepath.Base(f), "README.md") {
			t.Errorf("%s documents a command that no longer exists", f)
		}
	}
}

// Flag help reads as written: pflag takes a `quoted` word in a usage string for the value's type
// name, and prints a non-zero default itself, so a usage string holds neither.
func TestFlagHelpHasNoTypeNamesOrDefaults(t *testing.T) {
	root := newRoot(io.Discard, io.Discard)
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if strings.Contains(f.Usage, "`") {
				t.Errorf("%s --%s: a backquote in its usage becomes the value's type name: %q", c.CommandPath(), f.Name, f.Usage)
			}
			if line := pflagLine(f); strings.Count(line, "(default ") > 1 {
				t.Errorf("%s --%s: the default is printed twice: %s", c.CommandPath(), f.Name, line)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// pflagLine is the help line pflag prints for f.
func pflagLine(f *pflag.Flag) string {
	fs := pflag.NewFlagSet("", pflag.ContinueOnError)
	fs.AddFlag(f)
	return strings.TrimSpace(fs.FlagUsages())
}
