package tune

import (
	"os"
	"testing"
)

// The sim trainer re-executes the test binary as its trainer process.
func TestMain(m *testing.M) {
	SimTrainerMain()
	os.Exit(m.Run())
}
