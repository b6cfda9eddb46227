// Package golden compares generated manifests (Jobs, Knative Services, image manifests) with the
// files under a package's testdata. GOLDEN_UPDATE=1 go test ./... rewrites them.
package golden

import (
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// Check compares got with testdata/name.
func Check(t testing.TB, name string, got []byte) {
	t.Helper()
	CheckFile(t, filepath.Join("testdata", name), got)
}

// CheckFile compares got with the file at path (relative to the test's package), for generated
// files that live outside testdata (the CLI reference under docs/).
func CheckFile(t testing.TB, path string, got []byte) {
	t.Helper()
	if os.Getenv("GOLDEN_UPDATE") != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (GOLDEN_UPDATE=1 go test writes it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from what the code generates now; if that is intended, rerun with GOLDEN_UPDATE=1:\n%s", path, got)
	}
}

// CheckYAML marshals v to YAML and compares it with testdata/name.
func CheckYAML(t testing.TB, name string, v any) {
	t.Helper()
	got, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	Check(t, name, got)
}
