package bench

import (
	"os"
	"testing"

	"github.com/kaitoflow/kaitoflow/functions/tune"
)

// The sim trainer re-executes the test binary as its trainer process.
func TestMain(m *testing.M) {
	tune.SimTrainerMain()
	os.Exit(m.Run())
}
