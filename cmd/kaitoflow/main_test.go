package main

import (
	"os"
	"path/filepath"
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
