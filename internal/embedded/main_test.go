package embedded

import (
	"fmt"
	"os"
	"testing"

	"k8s.io/client-go/kubernetes"

	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// kube is a real API server for the tests that provision from Kubernetes nodes; nil when the
// envtest binaries are not built (those tests skip, unless KAITOFLOW_REQUIRE_ENVTEST is set).
var (
	kube    kubernetes.Interface
	kubeErr error
)

func TestMain(m *testing.M) {
	// The sim trainer re-executes the test binary as its trainer process.
	tune.SimTrainerMain()
	env, err := testenv.Start()
	if err != nil {
		kubeErr = err
		if testenv.Required() {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	} else {
		kube = kubernetes.NewForConfigOrDie(env.Config)
	}
	code := m.Run()
	if env != nil {
		_ = env.Stop()
	}
	os.Exit(code)
}
