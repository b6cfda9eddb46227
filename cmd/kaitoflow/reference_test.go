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
