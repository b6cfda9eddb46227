package kaito

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

// Kaito's own manifests, of both API versions, as its repository ships them (examples/): each
// Workspace decodes strictly and validates unchanged.
func TestKaitoExamplesValidate(t *testing.T) {
	versions := map[string]int{}
	err := filepath.WalkDir("../../examples", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		docs, err := SplitYAML(b)
		if err != nil {
			return err
		}
		for _, doc := range docs {
			var tm struct{ APIVersion, Kind string }
			if err := yaml.Unmarshal(doc, &tm); err != nil || tm.Kind != Kind {
				continue // a ConfigMap beside the Workspace
			}
			t.Run(path, func(t *testing.T) {
				w, err := DecodeWorkspace(doc)
				if err != nil {
					t.Fatal(err)
				}
				if errs := w.Validate(netguard.AddressPolicy{}); len(errs) > 0 {
					t.Fatalf("refused:\n%s", FieldErrors(errs))
				}
				versions[w.APIVersion]++
			})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range APIVersions() {
		if versions[v] == 0 {
			t.Errorf("no example of %s", v)
		}
	}
}
