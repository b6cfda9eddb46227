package bench

import (
	"os"
	"testing"

	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"
)

// The sim trainer re-executes the test binary as its trainer process.
func TestMain(m *testing.M) {
	tunesim.TrainerMain()
	os.Exit(m.Run())
}
