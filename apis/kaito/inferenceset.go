package kaito

import (
	"encoding/json"
	"maps"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// KindInferenceSet is Kaito's serving unit since v0.11 (kaito.sh v1beta1, also served at
// v1alpha1; on by default): replicas of one inference Workspace template.
const KindInferenceSet = "InferenceSet"

// Kaito's own names an InferenceSet carries: the label on the Workspaces it makes, and the
// annotations keda-kaito-scaler reads to make a KEDA ScaledObject for it.
const (
	LabelInferenceSetCreatedBy  = "inferenceset.kaito.sh/created-by"
	AnnotationScalerMaxReplicas = "scaledobject.kaito.sh/max-replicas"
)

// InferenceSet is Kaito's InferenceSet as kaitoflow reads it. kaitoflow serves one as a single
// inference workspace (Workspace) whose scale-to-zero service runs between the set's bounds,
// instead of one Workspace per replica: the replicas are the service's, not separate objects.
type InferenceSet struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              InferenceSetSpec `json:"spec"`
	// Status is accepted (a manifest exported from a cluster carries it) and ignored.
	Status *InferenceSetStatus `json:"status,omitempty"`
}

// InferenceSetSpec is Kaito v0.12's.
type InferenceSetSpec struct {
	Template InferenceSetTemplate `json:"template"`
	// Replicas is how many replicas serve at least (Kaito's default 1).
	Replicas *int32 `json:"replicas,omitempty"`
	// NodeCountLimit bounds the GPU nodes of all replicas together.
	NodeCountLimit int                   `json:"nodeCountLimit,omitempty"`
	Selector       *metav1.LabelSelector `json:"labelSelector"`
	// UpdateStrategy and AutoUpgrade are Kaito's rollout of new base images: kaitoflow rolls a
	// new revision of the service instead, and reads neither.
	UpdateStrategy *UpdateStrategy    `json:"updateStrategy,omitempty"`
	AutoUpgrade    *AutoUpgradePolicy `json:"autoUpgrade,omitempty"`
}

// InferenceSetTemplate is the Workspace each replica would be.
type InferenceSetTemplate struct {
	Metadata  metav1.ObjectMeta         `json:"metadata,omitempty"`
	Resource  *InferenceSetResourceSpec `json:"resource,omitempty"`
	Inference *InferenceSpec            `json:"inference"`
}

// InferenceSetResourceSpec is a replica's GPU capacity.
type InferenceSetResourceSpec struct {
	InstanceType string         `json:"instanceType,omitempty"`
	Partition    *PartitionSpec `json:"partition,omitempty"`
}

// UpdateStrategy is appsv1.StatefulSetUpdateStrategy's shape, as Kaito's schema keeps it.
type UpdateStrategy struct {
	Type          string         `json:"type,omitempty"`
	RollingUpdate map[string]any `json:"rollingUpdate,omitempty"`
}

// AutoUpgradePolicy is Kaito's base image upgrade policy.
type AutoUpgradePolicy struct {
	Enabled           bool               `json:"enabled,omitempty"`
	Strategy          string             `json:"strategy,omitempty"`
	MaintenanceWindow *MaintenanceWindow `json:"maintenanceWindow,omitempty"`
}

// MaintenanceWindow is when an auto upgrade may run.
type MaintenanceWindow struct {
	Schedule string           `json:"schedule"`
	Duration *metav1.Duration `json:"duration,omitempty"`
}

// InferenceSetStatus is Kaito's.
type InferenceSetStatus struct {
	Replicas      int                `json:"replicas,omitempty"`
	ReadyReplicas int                `json:"readyReplicas,omitempty"`
	Selector      string             `json:"selector,omitempty"`
	Conditions    []metav1.Condition `json:"conditions,omitempty"`
	Performance   map[string]any     `json:"performance,omitempty"`
	AutoUpgrade   map[string]any     `json:"autoUpgrade,omitempty"`
}

// Validate checks what is the InferenceSet's own, in its own field paths; the workspace it
// becomes is validated as any other.
func (s *InferenceSet) Validate() field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	if r := s.Spec.Replicas; r != nil && *r < 0 {
		errs = append(errs, field.Invalid(spec.Child("replicas"), *r, "must be at least 0"))
	}
	if s.Spec.NodeCountLimit < 0 {
		errs = append(errs, field.Invalid(spec.Child("nodeCountLimit"), s.Spec.NodeCountLimit, "must be at least 0"))
	}
	if s.Spec.Selector == nil {
		errs = append(errs, field.Required(spec.Child("labelSelector"), "the nodes its replicas run on"))
	}
	if s.Spec.Template.Inference == nil {
		errs = append(errs, field.Required(spec.Child("template", "inference"), "what its replicas serve"))
	}
	if v, ok := s.Annotations[AnnotationScalerMaxReplicas]; ok {
		if n, err := strconv.Atoi(v); err != nil || n < 1 {
			path := field.NewPath("metadata", "annotations").Key(AnnotationScalerMaxReplicas)
			errs = append(errs, field.Invalid(path, v, "want a whole number of at least 1"))
		}
	}
	return errs
}

// Bounds are the serving replicas: at least spec.replicas (Kaito's default 1; 0 scales to zero),
// at most keda-kaito-scaler's max-replicas where it is larger, and never more than
// spec.nodeCountLimit nodes, one replica a node.
func (s *InferenceSet) Bounds() (lo, hi int) {
	lo = 1
	if r := s.Spec.Replicas; r != nil {
		lo = int(*r)
	}
	hi = max(lo, 1)
	if n, err := strconv.Atoi(s.Annotations[AnnotationScalerMaxReplicas]); err == nil && n > hi {
		hi = n
	}
	if limit := s.Spec.NodeCountLimit; limit > 0 {
		hi, lo = min(hi, limit), min(lo, limit)
	}
	return lo, hi
}

// Workspace is the inference workspace kaitoflow serves the set as: the template's inference and
// resource, the set's label selector and name, one node a replica up to the upper bound, and the
// bounds as the serving service's min and max scale (the set's own autoscaling.knative.dev
// annotations win, as a workspace's do).
func (s *InferenceSet) Workspace() *Workspace {
	lo, hi := s.Bounds()
	w := &Workspace{TypeMeta: metav1.TypeMeta{APIVersion: APIVersion, Kind: Kind}}
	w.Name, w.Namespace = s.Name, s.Namespace
	w.Labels = maps.Clone(s.Spec.Template.Metadata.Labels)
	if w.Labels == nil {
		w.Labels = map[string]string{}
	}
	maps.Copy(w.Labels, s.Labels)
	w.Labels[LabelInferenceSetCreatedBy] = s.Name
	w.Annotations = map[string]string{
		"autoscaling.knative.dev/min-scale": strconv.Itoa(lo),
		"autoscaling.knative.dev/max-scale": strconv.Itoa(hi),
	}
	maps.Copy(w.Annotations, s.Spec.Template.Metadata.Annotations)
	maps.Copy(w.Annotations, s.Annotations)
	w.Resource = ResourceSpec{Count: &hi, LabelSelector: s.Spec.Selector}
	if r := s.Spec.Template.Resource; r != nil {
		w.Resource.InstanceType, w.Resource.Partition = r.InstanceType, r.Partition
	}
	w.Inference = s.Spec.Template.Inference
	return w
}

// kindOf is a JSON manifest's apiVersion and kind.
func kindOf(j []byte) (apiVersion, kind string) {
	var tm metav1.TypeMeta
	_ = json.Unmarshal(j, &tm)
	return tm.APIVersion, tm.Kind
}
