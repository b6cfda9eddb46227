package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"

	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// The sim trainer re-executes the test binary as its trainer process.
func TestMain(m *testing.M) {
	tunesim.TrainerMain()
	os.Exit(m.Run())
}

// testenvAPI is a real API server with the Workspace CRD, for this test only.
func testenvAPI(t *testing.T) *testenv.Env {
	t.Helper()
	return testenv.API(t, filepath.Join("..", "..", "deploy", "knative", "crd"))
}

// Run as a kubectl plugin, help names the command as kubectl's user types it.
func TestKubectlPluginName(t *testing.T) {
	for _, tc := range []struct{ argv0, want string }{
		{"/usr/local/bin/" + kubectlPlugin, "kubectl kaitoflow get"},
		{"/usr/local/bin/kaitoflow", "kaitoflow get"},
	} {
		var out bytes.Buffer
		root := newRoot(&out, &out)
		asKubectlPlugin(root, tc.argv0)
		root.SetArgs([]string{"get", "--help"})
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "\n  "+tc.want+" workspaces|configmaps [NAME]") {
			t.Errorf("as %s, help says:\n%s", tc.argv0, out.String())
		}
	}
}
