package knative

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kaitoflow/kaitoflow/functions/serve"
)

func TestParseInferencePool(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{"{service}-epp:9002", "{service}-epp:9002:FailClose", ""},
		{"epp:9002:FailOpen", "epp:9002:FailOpen", ""},
		{"epp", "", "want the endpoint picker's Service and port"},
		{"epp:0", "", `port "0"`},
		{"epp:9002:Maybe", "", `failure mode "Maybe"`},
		{"EPP_x:9002", "", "the endpoint picker's Service"},
	} {
		o, err := ParseInferencePool(tc.in)
		got := ""
		if o != nil {
			got = fmt.Sprintf("%s:%d:%s", o.EndpointPicker, o.Port, o.FailureMode)
		}
		if got != tc.want || (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: %q, %v; want %q, %q", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// With --inference-pool, serve publishes each Service as a Gateway API Inference Extension
// InferencePool (its pods, chat-proxy's port, the endpoint picker) and an InferenceObjective per
// adapter, accepted by the extension's own CRDs (v1.5.0) on a real API server; chat-proxy serves
// the model server's metrics the picker scrapes; an adapter's objective goes when it does.
func TestInferencePoolPublished(t *testing.T) {
	k, ns := setup(t)
	ctx := context.Background()
	k.Options.InferencePool = &InferencePoolOptions{EndpointPicker: "{service}-epp", Port: 9002, FailureMode: "FailClose"}
	fn := serve.New(k, slog.New(slog.DiscardHandler))
	d := seedDeployment(t, ns, 1)
	// An objective an earlier adapter left, labelled for this pool: it goes.
	stale := &unstructured.Unstructured{Object: map[string]any{"apiVersion": InferenceObjectives.GroupVersion().String(), "kind": "InferenceObjective",
		"metadata": map[string]any{"name": "gone-adapter", "namespace": ns, "labels": map[string]any{LabelInferencePool: d.Service}},
		"spec":     map[string]any{"poolRef": map[string]any{"name": d.Service}}}}
	if _, err := dyn.Resource(InferenceObjectives).Namespace(ns).Create(ctx, stale, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := fn.Handle(ctx, imagePushed(t, d)); err != nil {
		t.Fatal(err)
	}
	pool, err := dyn.Resource(InferencePools).Namespace(ns).Get(ctx, d.Service, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sel, _, _ := unstructured.NestedString(pool.Object, "spec", "selector", "matchLabels", LabelService)
	ports, _, _ := unstructured.NestedSlice(pool.Object, "spec", "targetPorts")
	picker, _, _ := unstructured.NestedString(pool.Object, "spec", "endpointPickerRef", "name")
	owners := pool.GetOwnerReferences()
	if sel != d.Service || len(ports) != 1 || ports[0].(map[string]any)["number"] != int64(proxyPort) || picker != d.Service+"-epp" ||
		len(owners) != 1 || owners[0].Kind != "Service" || owners[0].Name != d.Service {
		t.Fatalf("InferencePool %v", pool.Object)
	}
	objs, err := dyn.Resource(InferenceObjectives).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: LabelInferencePool + "=" + d.Service})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range objs.Items {
		ref, _, _ := unstructured.NestedString(o.Object, "spec", "poolRef", "name")
		if ref != d.Service {
			t.Errorf("objective %s: poolRef %q", o.GetName(), ref)
		}
		names = append(names, o.GetName())
	}
	if !slices.Equal(names, []string{serve.AdapterName(d.Ref.Name)}) {
		t.Errorf("objectives %v, want one for %s (and the stale one gone)", names, d.Ref.Name)
	}
	svc, err := dyn.Resource(Services).Namespace(ns).Get(ctx, d.Service, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(proxyArgs(t, svc), " "), "--model-metrics") {
		t.Errorf("chat-proxy does not serve the model server's metrics: %v", proxyArgs(t, svc))
	}
}

// proxyArgs is the Service's chat-proxy command.
func proxyArgs(t *testing.T, svc *unstructured.Unstructured) []string {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(svc.Object, "spec", "template", "spec", "containers")
	for _, c := range containers {
		m := c.(map[string]any)
		if m["name"] == "chat-proxy" {
			var out []string
			for _, a := range m["command"].([]any) {
				out = append(out, a.(string))
			}
			return out
		}
	}
	t.Fatal("no chat-proxy container")
	return nil
}
