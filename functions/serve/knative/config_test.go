package knative

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/presets"
)

// An inference-only workspace naming inference.config gets those vLLM settings in its Service.
func TestInferenceConfigFromTheCluster(t *testing.T) {
	k, ns := setup(t)
	ctx := context.Background()
	cm := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": "phi-3-serving", "namespace": ns},
		"data":     map[string]any{presets.InferenceConfigKey: "vllm:\n  max-model-len: 4096\n  gpu-memory-utilization: 0.95\n"}}}
	configmaps := schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	if _, err := dyn.Resource(configmaps).Namespace(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k.Configs = func(ctx context.Context, ns, name string) (map[string]string, error) {
		u, err := dyn.Resource(configmaps).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		data, _, err := unstructured.NestedStringMap(u.Object, "data")
		return data, err
	}
	d := seedDeployment(t, ns, 1)
	d.Workspace.Tuning = nil
	d.Workspace.Inference = &kaito.InferenceSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-128k-instruct"}}, Config: "phi-3-serving"}
	d.Adapters, d.Plan = nil, nil
	if err := k.Apply(ctx, d); err != nil {
		t.Fatal(err)
	}
	u, err := dyn.Resource(Services).Namespace(ns).Get(ctx, d.Service, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
	args := strings.Join(func() (out []string) {
		for _, a := range containers[1].(map[string]any)["args"].([]any) {
			out = append(out, a.(string))
		}
		return
	}(), " ")
	if !strings.Contains(args, "--max-model-len 4096") || !strings.Contains(args, "--gpu-memory-utilization 0.95") || strings.Contains(args, "0.90") {
		t.Errorf("model args %s", args)
	}
	d.Workspace.Inference.Config = "missing"
	d.Ref.Generation = 2
	if err := k.Apply(ctx, d); err == nil || !strings.Contains(err.Error(), "inference.config") {
		t.Errorf("a missing ConfigMap: %v", err)
	}
}
