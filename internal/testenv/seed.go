package testenv

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Seed returns the seed workspace (Kaito's fine-tuning guide's manifest) in namespace, with the
// plan provision's fit check makes for it.
func Seed(t testing.TB, namespace string) (*events.Workspace, *events.Plan) {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(root, "examples", "fine-tuning", "kaito_workspace_tuning_phi_3.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ws, err := events.DecodeWorkspace(doc)
	if err != nil {
		t.Fatal(err)
	}
	ws.Namespace = namespace
	cat, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	plan, err := (&presets.Planner{Catalog: cat}).Plan(context.Background(), ws)
	if err != nil {
		t.Fatal(err)
	}
	return ws, plan
}
