package knative

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// The seed's inference pod, as BuildService makes it, in the box: admitted under PodSecurity
// baseline, placed by the real scheduler on a GPU node carrying the workspace's labelSelector
// labels (tainted as AKS taints GPU pools), and run there. A stand-in plays Knative's revision
// reconciler: the pod template becomes a Deployment, as a Revision's does (Knative's controller
// itself does not run in the box; its queue-proxy sidecar is not added).
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
	tmpl := svc.Spec.Template
	spec := *tmpl.Spec.PodSpec.DeepCopy()
	// Knative's defaulting points an HTTP probe without a port at the container's port (the
	// probes are pointers into the copied spec).
	for _, c := range spec.Containers {
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.StartupProbe, c.LivenessProbe} {
			if p != nil && p.HTTPGet != nil && p.HTTPGet.Port.IntValue() == 0 && len(c.Ports) > 0 {
				p.HTTPGet.Port = intstr.FromInt32(c.Ports[0].ContainerPort)
			}
		}
	}
	labels := map[string]string{"serving.knative.dev/revision": svc.Name + "-00001"}
	one := int32(1)
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: svc.Name + "-00001-deployment"}, Spec: appsv1.DeploymentSpec{
		Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: tmpl.Annotations}, Spec: spec},
	}}
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
