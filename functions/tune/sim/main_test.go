package sim

import (
	"os"
	"testing"
)

// The sim trainer re-executes the test binary as its trainer process.
func TestMain(m *testing.M) {
	TrainerMain()
	os.Exit(m.Run())
}
