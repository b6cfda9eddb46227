package embedded

import (
	"os"
	"testing"

	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// kube is a real API server for the tests that provision from Kubernetes nodes; nil when the
// envtest binaries are not built (those tests skip, unless KAITOFLOW_REQUIRE_ENVTEST is set).
var (
	kube    kubernetes.Interface
	kubeCfg *rest.Config
	kubeErr error
)

func TestMain(m *testing.M) {
	// The sim trainer re-executes the test binary as its trainer process.
	tunesim.TrainerMain()
	os.Exit(testenv.Main(m, func(cfg *rest.Config, err error) {
		if kubeErr = err; cfg != nil {
			kube, kubeCfg = kubernetes.NewForConfigOrDie(cfg), cfg
		}
	}))
}
