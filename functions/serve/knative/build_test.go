package knative

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/internal/golden"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/presets"
)

// The seed's tuned adapter, served on the seed's SKU.
func TestSeedServiceGolden(t *testing.T) {
	svc := seedService(t, "default")
	golden.CheckYAML(t, "seed-service.yaml", svc)

	spec := svc.Spec.Template.Spec
	ports := 0
	for _, c := range spec.Containers {
		ports += len(c.Ports)
	}
	if ports != 1 {
		t.Errorf("Knative allows one container with a port, got %d ports", ports)
	}
	if svc.Spec.Template.Annotations["autoscaling.knative.dev/min-scale"] != "0" {
		t.Error("not scale-to-zero")
	}
	args := strings.Join(spec.Containers[1].Args, " ")
	if !strings.Contains(args, "--dtype float16") || !strings.Contains(args, "--lora-modules workspace-tuning-phi-3=/mnt/adapters/workspace-tuning-phi-3") {
		t.Errorf("model args %s", args)
	}
}

func TestUserTemplateIsHonoured(t *testing.T) {
	ws := events.Workspace{Inference: &events.InferenceSpec{Template: &corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "custom"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "server", Image: "my/llm:1", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
	}}}
	ws.Name = "custom"
	ws.Annotations = map[string]string{"autoscaling.knative.dev/max-scale": "4", "unrelated": "x"}
	ref := events.Ref{Namespace: "team-a", Name: "custom", Generation: 2}
	svc, err := BuildService(serve.Deployment{Ref: ref, Service: "custom", Workspace: ws}, Runtime{}, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	spec := svc.Spec.Template.Spec
	if len(spec.Containers) != 1 || spec.Containers[0].Image != "my/llm:1" || spec.NodeSelector["kaitoflow.io/workspace"] != "custom" || len(spec.Tolerations) == 0 {
		t.Errorf("template pod %+v", spec)
	}
	if a := svc.Spec.Template.Annotations; a["autoscaling.knative.dev/max-scale"] != "4" || a["unrelated"] != "" {
		t.Errorf("annotations %v", a)
	}
}

func catalog(t testing.TB) *presets.Catalog {
	t.Helper()
	cat, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// seedDeployment is the seed workspace's tuned adapter as image.pushed hands it to serve, with the
// plan provision made for its tuning run.
// seedService is the Knative Service serve makes for the seed's tuned adapter in namespace.
func seedService(t testing.TB, namespace string) *servingv1.Service {
	t.Helper()
	d := seedDeployment(t, namespace, 1)
	rt, err := (&Deployer{Catalog: catalog(t)}).Runtime(d)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := BuildService(d, rt, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func seedDeployment(t testing.TB, namespace string, generation int64) serve.Deployment {
	t.Helper()
	ws, plan := testenv.Seed(t, namespace)
	ref := events.Ref{Namespace: namespace, Name: ws.Name, Generation: generation}
	return serve.Deployment{Ref: ref, Service: serve.ServiceName(ref), Workspace: *ws, Plan: plan,
		Adapters: []serve.Adapter{{Name: ws.Name, Image: "acr_repo_here.azurecr.io/image_name_here@sha256:" + strings.Repeat("a", 64), Strength: "1.0",
			PullSecrets: []string{ws.Tuning.Output.ImagePushSecret}}}}
}
