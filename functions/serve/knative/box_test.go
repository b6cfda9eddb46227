package knative

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

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
	kube := b.Client
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "baseline"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d := seedDeployment(t, ns, 1)
	rt, err := (&Deployer{Catalog: catalog(t)}).Runtime(d)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := BuildService(d, rt, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Node(ctx, testenv.NodeSpec{Name: "aks-serving-0", GPUs: 1, Labels: map[string]string{"app": "tuning-phi-3"},
		Taints: []corev1.Taint{{Key: "sku", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}}}); err != nil {
		t.Fatal(err)
	}
	tmpl := svc.Spec.Template
	spec := *tmpl.Spec.PodSpec.DeepCopy()
	// Knative's defaulting points an HTTP probe without a port at the container's port.
	for i, c := range spec.Containers {
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.StartupProbe, c.LivenessProbe} {
			if p != nil && p.HTTPGet != nil && p.HTTPGet.Port.IntValue() == 0 && len(c.Ports) > 0 {
				p.HTTPGet.Port = intstr.FromInt32(c.Ports[0].ContainerPort)
			}
		}
		spec.Containers[i] = c
	}
	labels := map[string]string{"serving.knative.dev/revision": svc.Name + "-00001"}
	one := int32(1)
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: svc.Name + "-00001-deployment"}, Spec: appsv1.DeploymentSpec{
		Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: tmpl.Annotations}, Spec: spec},
	}}
	if _, err := kube.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var last string
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		d, err := kube.AppsV1().Deployments(ns).Get(ctx, dep.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = ""
		for _, c := range d.Status.Conditions {
			last += string(c.Type) + "=" + string(c.Status) + " " + c.Message + "; "
		}
		return d.Status.AvailableReplicas == 1, nil
	})
	if err != nil {
		evs, _ := kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
		for _, e := range evs.Items {
			t.Logf("event %s/%s: %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
		t.Fatalf("the seed's inference pod is not available: %s", last)
	}
}
