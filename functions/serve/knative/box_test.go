package knative

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/internal/testenv/platform"
)

// The seed's inference pod, as BuildService makes it, in the box: admitted under PodSecurity
// baseline, placed by the real scheduler on a GPU node carrying the workspace's labelSelector
// labels (tainted as AKS taints GPU pools), and run there. The box's Knative stand-in makes the
// revision's Deployment of the pod template (Knative's controller itself does not run in the box;
// its queue-proxy sidecar is not added).
func TestSeedServicePodRunsInBox(t *testing.T) {
	b := testenv.BoxFor(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ns = "serving"
	if err := b.Namespace(ctx, ns, "baseline"); err != nil {
		t.Fatal(err)
	}
	svc := seedService(t, ns)
	if err := b.Node(ctx, testenv.NodeSpec{Name: "aks-serving-0", GPUs: 1, Labels: map[string]string{"app": "tuning-phi-3"}, Taints: testenv.GPUTaints()}); err != nil {
		t.Fatal(err)
	}
	dep := platform.RevisionDeployment(svc, platform.RevisionName(svc.Name, 1), "")
	dep.OwnerReferences = nil // no Revision object here
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	b.Await(ctx, t, ns, "the seed's inference pod available", func(ctx context.Context) (bool, string) {
		d, err := b.Client.AppsV1().Deployments(ns).Get(ctx, dep.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return d.Status.AvailableReplicas == 1, fmt.Sprintf("%+v", d.Status.Conditions)
	})
}
