package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// The sim trainer re-executes the test binary as its trainer process.
func TestMain(m *testing.M) {
	tune.SimTrainerMain()
	os.Exit(m.Run())
}

// testenvAPI is a real API server with the Workspace CRD, for this test only.
func testenvAPI(t *testing.T) *testenv.Env {
	t.Helper()
	return testenv.API(t, filepath.Join("..", "..", "deploy", "knative", "crd"))
}
