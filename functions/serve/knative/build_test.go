package knative

import (
	"context"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
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
	// The model server starts with LoRA enabled and the runtime API on, and no adapter: chat-proxy
	// loads the set from the mounted ConfigMap.
	args := strings.Join(spec.Containers[1].Args, " ")
	if !strings.Contains(args, "--dtype float16") || !strings.Contains(args, "--enable-lora") || strings.Contains(args, "--lora-modules") ||
		!slices.Contains(spec.Containers[1].Env, corev1.EnvVar{Name: "VLLM_ALLOW_RUNTIME_LORA_UPDATING", Value: "True"}) {
		t.Errorf("model args %s env %v", args, spec.Containers[1].Env)
	}
	if len(spec.InitContainers) != 0 || !strings.Contains(strings.Join(spec.Containers[0].Command, " "), "--adapter-set "+adapterSetDir+"/"+AdapterSetKey) {
		t.Errorf("chat-proxy does not load the adapter set: %v %v", spec.InitContainers, spec.Containers[0].Command)
	}
	set := AdapterSet(seedDeployment(t, "default", 1), 1)
	// The push secret is not mounted: the ACR adapter is pulled with the workload identity.
	if len(set.Adapters) != 1 || set.Adapters[0].Image == "" || len(set.Adapters[0].PullSecrets) != 0 || !set.Adapters[0].ACRIdentity ||
		set.Default != "workspace-tuning-phi-3" {
		t.Errorf("adapter set %+v", set)
	}
}

// A new generation that changes only the adapter builds the same revision template, so Knative
// rolls no new revision; one that changes the base model's runtime builds another.
func TestTemplateIgnoresTheAdapterImage(t *testing.T) {
	d1, d2 := seedDeployment(t, "default", 1), seedDeployment(t, "default", 2)
	d2.Adapters[0].Image = "acr_repo_here.azurecr.io/image_name_here@sha256:" + strings.Repeat("b", 64)
	d3 := seedDeployment(t, "default", 3)
	plan := *d3.Plan
	plan.RuntimeArgs = append(slices.Clone(plan.RuntimeArgs), "--enforce-eager")
	d3.Plan = &plan
	var hashes []string
	for _, d := range []serve.Deployment{d1, d2, d3} {
		rt, err := (&Deployer{Catalog: catalog(t)}).Runtime(d)
		if err != nil {
			t.Fatal(err)
		}
		svc, err := BuildService(d, rt, testOptions())
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, svc.Annotations[AnnotationTemplate])
	}
	if hashes[0] != hashes[1] {
		t.Errorf("the adapter image changed the template: %v", hashes)
	}
	if AdapterSet(d1, 1).Equal(AdapterSet(d2, 1)) {
		t.Error("the adapter set ignores the image")
	}
	if hashes[0] == hashes[2] {
		t.Errorf("other runtime arguments built the same template %s", hashes[0])
	}
}

func TestUserTemplateIsHonoured(t *testing.T) {
	ws := kaito.Workspace{Inference: &kaito.InferenceSpec{Template: &corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "custom"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "server", Image: "my/llm:1", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
	}}}
	ws.Name = "custom"
	ws.Annotations = map[string]string{"autoscaling.knative.dev/max-scale": "4", "unrelated": "x"}
	ref := events.Ref{Namespace: "team-a", Name: "custom", Generation: 2}
	svc, err := BuildService(serve.Deployment{Ref: ref, Service: "custom", Workspace: ws}, Runtime{}, testOptions())
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
	// A pod the workspace's submitter controls gets no API token, and kaitoflow's labels say whose
	// Service it is beside the template's own.
	if m := spec.AutomountServiceAccountToken; m == nil || *m {
		t.Errorf("automountServiceAccountToken = %v, want false", m)
	}
	if l := svc.Spec.Template.Labels; l["app"] != "custom" || l["kaitoflow.io/workspace"] != "custom" {
		t.Errorf("template labels %v: want the template's app and kaitoflow's workspace label", l)
	}
}

// An adapter on a volume is mounted read-only into the model server and loaded from there, with no
// pull; a volume type Knative Serving cannot mount is refused, naming the adapter and the type.
func TestAdapterFromVolume(t *testing.T) {
	for _, tc := range []struct {
		name   string
		volume corev1.VolumeSource
		refuse string
	}{
		{"claim", corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "adapters"}}, ""},
		{"configMap", corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "tiny-adapter"}}}, ""},
		{"hostPath", corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/data/adapters"}}, "hostPath /data/adapters"},
		{"azureFile", corev1.VolumeSource{AzureFile: &corev1.AzureFileVolumeSource{SecretName: "s", ShareName: "adapters"}}, "azureFile adapters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc, err := seedServiceWith(t, "default", []serve.Adapter{{Name: "support", Volume: &tc.volume}})
			if tc.refuse != "" {
				if pe, ok := events.AsPermanent(err); !ok || pe.Reason != events.ReasonNotSupported || !strings.Contains(err.Error(), "adapter support: volumeSource") || !strings.Contains(err.Error(), tc.refuse) {
					t.Fatalf("want a permanent refusal naming %q, got %v", tc.refuse, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			spec := svc.Spec.Template.Spec
			if len(spec.InitContainers) != 0 {
				t.Errorf("an adapter on a volume is pulled: %+v", spec.InitContainers)
			}
			model := spec.Containers[1]
			var mounted bool
			for _, m := range model.VolumeMounts {
				for _, v := range spec.Volumes {
					if v.Name == m.Name && m.MountPath == adapterVolumeDir+"/support" && m.ReadOnly && (v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ReadOnly) {
						mounted = true
					}
				}
			}
			if !mounted {
				t.Errorf("the adapter's volume is not mounted read-only at %s/support: %+v %+v", adapterVolumeDir, model.VolumeMounts, spec.Volumes)
			}
			d := seedDeployment(t, "default", 1)
			d.Adapters = []serve.Adapter{{Name: "support", Volume: &tc.volume}}
			if set := AdapterSet(d, 1); len(set.Adapters) != 1 || set.Adapters[0].Path != adapterVolumeDir+"/support" || set.Adapters[0].Image != "" {
				t.Errorf("adapter set %+v", set)
			}
			if tc.volume.PersistentVolumeClaim != nil && tc.volume.PersistentVolumeClaim.ReadOnly {
				t.Error("the workspace's volume source was modified")
			}
		})
	}
}

// An adapter in an Azure Container Registry with no pull secret is pulled with the pod's workload
// identity: chat-proxy is told to use it, the pod runs as the inference identity and carries
// workload identity's label. With a secret, or another registry, nothing of that is added.
func TestAdapterPullIdentity(t *testing.T) {
	for _, tc := range []struct {
		name, image string
		secrets     []string
		identity    bool
	}{
		{"acr without a secret", "myacr.azurecr.io/adapters/support:1", nil, true},
		{"acr with a secret", "myacr.azurecr.io/adapters/support:1", []string{"acr-pull"}, false},
		{"another registry", "ghcr.io/team/support:1", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc, err := seedServiceWith(t, "default", []serve.Adapter{{Name: "support", Image: tc.image, PullSecrets: tc.secrets}})
			if err != nil {
				t.Fatal(err)
			}
			tmpl := svc.Spec.Template
			d := seedDeployment(t, "default", 1)
			d.Adapters = []serve.Adapter{{Name: "support", Image: tc.image, PullSecrets: tc.secrets}}
			got := AdapterSet(d, 1).Adapters[0].ACRIdentity
			if got != tc.identity || (tmpl.Spec.ServiceAccountName == InferenceServiceAccount) != tc.identity || (tmpl.Labels[workloadIdentityLabel] == "true") != tc.identity {
				t.Errorf("identity: flag %v, service account %q, labels %v; want identity %v", got, tmpl.Spec.ServiceAccountName, tmpl.Labels, tc.identity)
			}
			if tc.identity && svc.Labels[workloadIdentityLabel] != "" {
				t.Error("the Service itself carries the pod label")
			}
		})
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

// seedService is the Knative Service serve makes for the seed's tuned adapter in namespace.
// testOptions are the defaults with chat-proxy's image, which a deployment configures (a
// stand-in name: nothing pulls it in these tests).
func testOptions() Options {
	o := DefaultOptions()
	o.ProxyImage = "example.azurecr.io/kaitoflow/kaitoflow:test"
	return o
}

func seedService(t testing.TB, namespace string) *servingv1.Service {
	t.Helper()
	svc, err := seedServiceWith(t, namespace, nil)
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// seedServiceWith builds the seed's Service with adapters in place of its tuned one (when set).
func seedServiceWith(t testing.TB, namespace string, adapters []serve.Adapter) (*servingv1.Service, error) {
	t.Helper()
	d := seedDeployment(t, namespace, 1)
	if adapters != nil {
		d.Adapters = adapters
	}
	rt, err := (&Deployer{Catalog: catalog(t)}).Runtime(d)
	if err != nil {
		t.Fatal(err)
	}
	return BuildService(d, rt, testOptions())
}

// seedDeployment is the seed workspace's tuned adapter as image.pushed hands it to serve, with the
// plan provision made for its tuning run.
func seedDeployment(t testing.TB, namespace string, generation int64) serve.Deployment {
	t.Helper()
	ws, plan := testenv.Seed(t, namespace)
	ref := events.Ref{Namespace: namespace, Name: ws.Name, Generation: generation}
	return serve.Deployment{Ref: ref, Service: serve.ServiceName(ref), Workspace: *ws, Plan: plan,
		// The seed names no pull-only secret: its ACR adapter is pulled with the pod's workload
		// identity, never with the push secret.
		Adapters: []serve.Adapter{{Name: ws.Name, Image: "acr_repo_here.azurecr.io/image_name_here@sha256:" + strings.Repeat("a", 64), Strength: "1.0"}}}
}

// A gated model: the model server reads the token from presetOptions.modelAccessSecret's HF_TOKEN
// key, and keeps the weights on the configured claim (the workspace's annotation wins over it).
func TestModelAccessAndWeightsCache(t *testing.T) {
	for _, tc := range []struct {
		name, annotation, configured, wantClaim string
	}{
		{"no cache", "", "", ""},
		{"configured claim", "", "weights", "weights"},
		{"workspace claim wins", "team-weights", "weights", "team-weights"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := seedDeployment(t, "team-a", 1)
			d.Workspace.Tuning.Preset.ModelAccessSecret = "hf-token"
			if tc.annotation != "" {
				d.Workspace.Annotations = map[string]string{kaito.AnnotationWeightsCache: tc.annotation}
			}
			rt, err := (&Deployer{Catalog: catalog(t)}).Runtime(d)
			if err != nil {
				t.Fatal(err)
			}
			o := testOptions()
			o.WeightsCache = tc.configured
			svc, err := BuildService(d, rt, o)
			if err != nil {
				t.Fatal(err)
			}
			spec := svc.Spec.Template.Spec
			model := spec.Containers[slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == "model" })]
			i := slices.IndexFunc(model.Env, func(e corev1.EnvVar) bool { return e.Name == "HF_TOKEN" })
			if i < 0 || model.Env[i].ValueFrom == nil || model.Env[i].ValueFrom.SecretKeyRef == nil ||
				model.Env[i].ValueFrom.SecretKeyRef.Name != "hf-token" || model.Env[i].ValueFrom.SecretKeyRef.Key != presets.ModelAccessSecretKey {
				t.Errorf("model env %+v", model.Env)
			}
			cache := spec.Volumes[slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == "cache" })]
			switch {
			case tc.wantClaim == "" && cache.EmptyDir == nil:
				t.Errorf("cache %+v, want an emptyDir", cache.VolumeSource)
			case tc.wantClaim != "" && (cache.PersistentVolumeClaim == nil || cache.PersistentVolumeClaim.ClaimName != tc.wantClaim):
				t.Errorf("cache %+v, want claim %s", cache.VolumeSource, tc.wantClaim)
			}
		})
	}
}

// A Hugging Face id as the preset (Kaito since v0.9), planned from its config.json by the
// stand-in Hub, with a token Secret: vLLM serves that id at the commit the plan pinned, and the
// token reaches it from the Secret.
func TestHuggingFaceModelServiceGolden(t *testing.T) {
	hub := testenv.NewHub(t)
	cat := catalog(t)
	planner := &presets.Planner{Catalog: cat, Hub: &presets.Hub{BaseURL: hub.URL},
		Secrets: func(context.Context, string, string) (map[string][]byte, error) {
			return map[string][]byte{presets.ModelAccessSecretKey: []byte(hub.Token)}, nil
		}}
	ws := kaito.Workspace{Inference: &kaito.InferenceSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "Qwen/Qwen3-0.6B"},
		PresetOptions: kaito.PresetOptions{ModelAccessSecret: "hf-token"}}}}
	ws.Name, ws.Namespace = "qwen3-06b", "team-a"
	ws.Resource.InstanceType = "Standard_NC6s_v3"
	plan, err := planner.Plan(context.Background(), &ws)
	if err != nil {
		t.Fatal(err)
	}
	ref := events.Ref{Namespace: "team-a", Name: ws.Name, Generation: 1}
	d := serve.Deployment{Ref: ref, Service: serve.ServiceName(ref), Workspace: ws, Plan: plan}
	rt, err := (&Deployer{Catalog: cat}).Runtime(d)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := BuildService(d, rt, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	golden.CheckYAML(t, "hf-model-service.yaml", svc)
}

// Weights once: with a weights cache claim and the trainer's image, an init container fills the
// claim once per model revision and the model server reads it read-only and offline, with a startup
// allowance for the load alone; the revision's progress deadline still covers the download.
func TestWeightsFetchedOnceIntoTheClaim(t *testing.T) {
	d := seedDeployment(t, "default", 1)
	rt, err := (&Deployer{Catalog: catalog(t)}).Runtime(d)
	if err != nil {
		t.Fatal(err)
	}
	o := testOptions()
	o.WeightsCache, o.WeightsImage = "model-weights", "example.azurecr.io/kaitoflow/trainer:test"
	svc, err := BuildService(d, rt, o)
	if err != nil {
		t.Fatal(err)
	}
	golden.CheckYAML(t, "seed-service-weights.yaml", svc)
	spec := svc.Spec.Template.Spec
	if len(spec.InitContainers) != 1 || !strings.Contains(strings.Join(spec.InitContainers[0].Command, " "),
		"kaitoflow_trainer.fetch --model microsoft/Phi-3-mini-128k-instruct --revision "+rt.Args[2]) {
		t.Fatalf("no weights fetch: %+v", spec.InitContainers)
	}
	model := spec.Containers[1]
	readOnly := slices.ContainsFunc(model.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "cache" && m.ReadOnly })
	offline := slices.Contains(model.Env, corev1.EnvVar{Name: "HF_HUB_OFFLINE", Value: "1"})
	if !readOnly || !offline {
		t.Errorf("the model server does not read the claim read-only and offline: %+v %+v", model.VolumeMounts, model.Env)
	}
	without, _ := BuildService(d, rt, testOptions())
	if got, download := spec.Containers[0].StartupProbe.FailureThreshold, without.Spec.Template.Spec.Containers[0].StartupProbe.FailureThreshold; got >= download {
		t.Errorf("startup allowance %d checks with the weights fetched, %d with a download: want less", got, download)
	}
	// Without the trainer's image the model server downloads into the claim itself, as before.
	o.WeightsImage = ""
	svc, _ = BuildService(d, rt, o)
	if len(svc.Spec.Template.Spec.InitContainers) != 0 {
		t.Errorf("a fetch without an image: %+v", svc.Spec.Template.Spec.InitContainers)
	}
}
