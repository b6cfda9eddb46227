package knative

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kaitoflow/kaitoflow/internal/kubeerr"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// The Gateway API Inference Extension's resources (sigs.k8s.io/gateway-api-inference-extension
// v1.5.0): an InferencePool is the pods a gateway routes a model's requests to through an endpoint
// picker, which chooses a pod by queue depth, KV-cache use and the LoRA adapters it holds; an
// InferenceObjective gives requests that name it (the x-gateway-inference-objective header) a
// priority in the picker's flow control.
var (
	InferencePools      = schema.GroupVersionResource{Group: "inference.networking.k8s.io", Version: "v1", Resource: "inferencepools"}
	InferenceObjectives = schema.GroupVersionResource{Group: "inference.networking.x-k8s.io", Version: "v1alpha2", Resource: "inferenceobjectives"}
)

// LabelInferencePool on an InferenceObjective names the pool (the inference Service) it was
// published for, so adapters that left are found and deleted.
const LabelInferencePool = "kaitoflow.io/inference-pool"

// InferencePoolOptions turn on publishing an InferencePool for every inference Service, and an
// InferenceObjective for each adapter it serves, for users whose gateway routes with the Gateway API
// Inference Extension. Off (nil) by default.
type InferencePoolOptions struct {
	// EndpointPicker is the endpoint picker's Service in the workspace's namespace, "{service}"
	// replaced by the inference Service's name (a picker serves one pool), and Port its port.
	EndpointPicker string
	Port           int32
	// FailureMode is what the gateway does when the picker does not answer: FailClose (the
	// default) or FailOpen.
	FailureMode string
}

// ParseInferencePool reads --inference-pool's NAME:PORT[:FailOpen|FailClose].
func ParseInferencePool(v string) (*InferencePoolOptions, error) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" {
		return nil, fmt.Errorf("%q: want the endpoint picker's Service and port, NAME:PORT[:FailOpen|FailClose] ({service} in NAME is the "+
			"inference Service's name)", v)
	}
	port, err := strconv.ParseInt(parts[1], 10, 32)
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("%q: port %q: want 1 to 65535", v, parts[1])
	}
	o := &InferencePoolOptions{EndpointPicker: parts[0], Port: int32(port), FailureMode: "FailClose"}
	if len(parts) == 3 {
		if parts[2] != "FailOpen" && parts[2] != "FailClose" {
			return nil, fmt.Errorf("%q: failure mode %q: want FailOpen or FailClose", v, parts[2])
		}
		o.FailureMode = parts[2]
	}
	if msgs := validation.IsDNS1035Label(strings.ReplaceAll(o.EndpointPicker, "{service}", "s")); len(msgs) > 0 {
		return nil, fmt.Errorf("%q: the endpoint picker's Service: %s", v, strings.Join(msgs, "; "))
	}
	return o, nil
}

// publishPool writes the Service's InferencePool (its pods, chat-proxy's port, the endpoint
// picker) and one InferenceObjective per public adapter name its adapter set routes, and deletes
// the objectives of adapters it no longer serves. Each is owned by the Service, so it goes with it.
func (k *Deployer) publishPool(ctx context.Context, ns, service string) error {
	o := k.Options.InferencePool
	owner, err := k.Client.Resource(Services).Namespace(ns).Get(ctx, service, metav1.GetOptions{})
	if err != nil {
		return kubeerr.Classify(fmt.Errorf("get Knative Service %s/%s: %w", ns, service, err))
	}
	set, err := k.readSet(ctx, ns, service)
	if err != nil || set == nil {
		return err
	}
	ownerRef := []any{map[string]any{"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": owner.GetName(), "uid": string(owner.GetUID()),
		"controller": true}}
	meta := func(name string) map[string]any {
		return map[string]any{"name": name, "namespace": ns, "ownerReferences": ownerRef,
			"labels": map[string]any{LabelInferencePool: service, "app.kubernetes.io/managed-by": "kaitoflow"}}
	}
	pool := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": InferencePools.GroupVersion().String(), "kind": "InferencePool", "metadata": meta(service),
		"spec": map[string]any{
			// The pods of every revision: the picker sends to those that are ready.
			"selector": map[string]any{"matchLabels": map[string]any{LabelService: service}},
			// chat-proxy's port: it routes a public name to the adapter loaded for it now and
			// serves the model server's metrics the picker scrapes (--model-metrics).
			"targetPorts": []any{map[string]any{"number": int64(proxyPort)}},
			"endpointPickerRef": map[string]any{"name": strings.ReplaceAll(o.EndpointPicker, "{service}", service),
				"port": map[string]any{"number": int64(o.Port)}, "failureMode": o.FailureMode},
		},
	}}
	if err := k.applyObject(ctx, InferencePools, pool); err != nil {
		return err
	}
	want := slices.Sorted(maps.Keys(set.Routes))
	for _, public := range want {
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": InferenceObjectives.GroupVersion().String(), "kind": "InferenceObjective", "metadata": meta(public),
			"spec": map[string]any{"poolRef": map[string]any{"name": service}},
		}}
		if err := k.applyObject(ctx, InferenceObjectives, obj); err != nil {
			return err
		}
	}
	have, err := k.Client.Resource(InferenceObjectives).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: LabelInferencePool + "=" + service})
	if err != nil {
		return kubeerr.Classify(fmt.Errorf("list InferenceObjectives of %s/%s: %w", ns, service, err))
	}
	for _, u := range have.Items {
		if !slices.Contains(want, u.GetName()) {
			if err := k.Client.Resource(InferenceObjectives).Namespace(ns).Delete(ctx, u.GetName(), metav1.DeleteOptions{}); err != nil {
				return kubeerr.Classify(fmt.Errorf("delete InferenceObjective %s/%s: %w", ns, u.GetName(), err))
			}
		}
	}
	logctx.Or(k.Log).InfoContext(ctx, "InferencePool published", "pool", service, "namespace", ns, "objectives", len(want))
	return nil
}

// applyObject server-side applies obj as kaitoflow's field manager.
func (k *Deployer) applyObject(ctx context.Context, gvr schema.GroupVersionResource, obj *unstructured.Unstructured) error {
	_, err := k.Client.Resource(gvr).Namespace(obj.GetNamespace()).Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: fieldManager,
		Force: true})
	if err != nil {
		return kubeerr.Classify(fmt.Errorf("apply %s %s/%s: %w", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err))
	}
	return nil
}
