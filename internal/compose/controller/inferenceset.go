package controller

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// Kaito's InferenceSet condition and its reasons.
const (
	CondInferenceSetReady     = "InferenceSetReady"
	reasonInferenceSetReady   = "inferencesetReady"
	reasonInferenceSetNot     = "inferencesetNotReady"
	reasonInferenceSetFailed  = "inferencesetFailed"
	inferenceSetReadyMessage  = "inferenceset is ready"
	inferenceSetNotReadyShape = "inferenceset is not ready, %d/%d replicas are ready"
)

// inferenceSetStatus is an InferenceSet's status as Kaito writes it, with what kaitoflow adds to a
// Workspace's: the phase, endpoint and failure, and what the controller keeps for itself.
type inferenceSetStatus struct {
	kaito.InferenceSetStatus `json:",inline"`
	ObservedGeneration       int64  `json:"observedGeneration,omitempty"`
	Phase                    string `json:"phase,omitempty"`
	Endpoint                 string `json:"endpoint,omitempty"`
	Failure                  string `json:"failure,omitempty"`
	EventsRecorded           int    `json:"eventsRecorded,omitempty"`
}

// setStatus is the workspace status st of the InferenceSet u as Kaito reports a set's: the desired
// replicas (spec.replicas, as Kaito counts them), the ready ones (those serving, once the workspace
// is Ready), the selector of the scale subresource, and InferenceSetReady with Kaito's reasons.
func setStatus(u *unstructured.Unstructured, st kaito.WorkspaceStatus) inferenceSetStatus {
	desired, found, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
	if !found {
		desired = 1
	}
	ready := 0
	if st.Phase == string(status.Ready) {
		// The Service keeps min-scale running once it serves: spec.replicas, within nodeCountLimit.
		ready = int(desired)
		if limit, _, _ := unstructured.NestedInt64(u.Object, "spec", "nodeCountLimit"); limit > 0 {
			ready = min(ready, int(limit))
		}
	}
	cond := metav1.Condition{Type: CondInferenceSetReady, ObservedGeneration: st.ObservedGeneration, LastTransitionTime: metav1.Now()}
	switch {
	case st.Phase == string(status.Failed):
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, reasonInferenceSetFailed, st.Failure
	case st.Phase == string(status.Ready) && ready == int(desired):
		cond.Status, cond.Reason, cond.Message = metav1.ConditionTrue, reasonInferenceSetReady, inferenceSetReadyMessage
	default:
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, reasonInferenceSetNot, fmt.Sprintf(inferenceSetNotReadyShape, ready, desired)
	}
	// The transition time moves only when the condition does, as Kubernetes conditions go.
	if prev := previousCondition(u, CondInferenceSetReady); prev != nil && prev.Status == cond.Status {
		cond.LastTransitionTime = prev.LastTransitionTime
	}
	return inferenceSetStatus{
		InferenceSetStatus: kaito.InferenceSetStatus{Replicas: int(desired), ReadyReplicas: ready,
			Selector: servingPods(u), Conditions: []metav1.Condition{cond}},
		ObservedGeneration: st.ObservedGeneration, Phase: st.Phase, Endpoint: st.Endpoint, Failure: st.Failure, EventsRecorded: st.EventsRecorded,
	}
}

// previousCondition is the object's condition of type typ as last written, nil when it has none.
func previousCondition(u *unstructured.Unstructured, typ string) *metav1.Condition {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] != typ {
			continue
		}
		var cond metav1.Condition
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &cond); err == nil {
			return &cond
		}
	}
	return nil
}

// servingPods is the label selector of the pods that serve the set (the scale subresource's, which
// an HPA reads metrics by): its workspace's serving pods.
func servingPods(u *unstructured.Unstructured) string {
	return events.LabelWorkspace + "=" + u.GetName() + "," + events.LabelNamespace + "=" + u.GetNamespace()
}
