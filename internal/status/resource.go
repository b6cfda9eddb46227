package status

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
)

// KaitoStatus is the record as Kaito's status block: the controller writes it to the Workspace
// resource, and the CLI prints it on the objects it shows.
func (w *Workspace) KaitoStatus() kaito.WorkspaceStatus {
	st := kaito.WorkspaceStatus{WorkerNodes: w.Nodes, Conditions: w.Conditions, ObservedGeneration: w.Generation,
		Phase: string(w.Phase), Endpoint: w.Endpoint, Image: w.Image, Adapters: w.Adapters, State: w.State(),
		TargetNodeCount:   int32(w.TargetNodeCount()),
		ServingGeneration: w.ServingGeneration, Replicas: w.Replicas, GPU: w.GPU,
		History: w.History, LiveGeneration: w.Live, LiveCheckpoint: w.LiveCheckpoint, Held: w.Held}
	if len(w.Attempts) > 1 {
		st.Attempts = w.Attempts
	}
	if w.Failure != nil {
		st.Failure = w.Failure.Reason + ": " + w.Failure.Message
	}
	return st
}

// Resource is the workspace as a Kaito Workspace object at kaito.sh/v1beta1: its manifest with the
// record's metadata and status, what `kubectl get workspace -o yaml` shows of a Workspace
// resource, and what `kubectl apply` and `kubectl diff` take.
func (w *Workspace) Resource() kaito.Workspace {
	var r kaito.Workspace
	if w.Manifest != nil {
		r = *w.Manifest
	}
	r.TypeMeta = metav1.TypeMeta{APIVersion: kaito.APIVersionV1Beta1, Kind: kaito.Kind}
	r.Name, r.Namespace, r.Generation = w.Name, w.Namespace, w.Generation
	r.CreationTimestamp = metav1.NewTime(w.Created)
	r.Status = w.KaitoStatus()
	return r
}
