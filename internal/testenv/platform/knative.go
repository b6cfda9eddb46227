package platform

import (
	"context"
	"fmt"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// Knative Serving's resources (functions/serve/knative names them too; its tests use this package,
// so it cannot be imported here).
var (
	ksvcs     = schema.GroupVersionResource{Group: "serving.knative.dev", Version: "v1", Resource: "services"}
	revisions = schema.GroupVersionResource{Group: "serving.knative.dev", Version: "v1", Resource: "revisions"}
)

// Knative's labels on a revision's objects.
const (
	LabelService  = "serving.knative.dev/service"
	LabelRevision = "serving.knative.dev/revision"
)

// Knative is a stand-in for Knative Serving's controllers: each generation of a Knative Service
// becomes a Revision and a Deployment of the revision's pod template (owned as Knative owns them,
// so the box's garbage collector removes them with the Service), with Knative's defaulting of a
// probe's port. The Service is Ready, with its URL, once the revision's Deployment has an
// available pod, and stays Ready when its pods are scaled away (scale to zero); until then it is
// Ready Unknown with what holds the pod up (the scheduler's reason, say). An older revision's
// Deployment is scaled to zero once a newer one is ready. Not here: the queue-proxy sidecar, the
// autoscaler (replicas stay as created: the annotation's initial scale, or what a test sets),
// routing, tag-to-digest resolution and Knative's admission webhooks.
type Knative struct {
	Box *testenv.Box
	dyn dynamic.Interface
}

// NewKnative returns a Knative stand-in acting on b, whose API server must serve Knative
// Serving's CRDs.
func NewKnative(b *testenv.Box) *Knative {
	return &Knative{Box: b, dyn: dynamic.NewForConfigOrDie(b.Config)}
}

// Run reconciles every Knative Service until ctx ends.
func (k *Knative) Run(ctx context.Context) {
	loop(ctx, func(ctx context.Context) error {
		l, err := k.dyn.Resource(ksvcs).Namespace("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for i := range l.Items {
			if l.Items[i].GetDeletionTimestamp() == nil {
				_ = k.reconcile(ctx, &l.Items[i])
			}
		}
		return nil
	})
}

// RevisionName is the name Knative gives a Service's generation-th revision.
func RevisionName(service string, generation int64) string {
	return fmt.Sprintf("%s-%05d", service, generation)
}

func (k *Knative) reconcile(ctx context.Context, u *unstructured.Unstructured) error {
	var svc servingv1.Service
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &svc); err != nil {
		return err
	}
	ns, rev := svc.Namespace, RevisionName(svc.Name, svc.Generation)
	owner := func(apiVersion, kind, name string, uid any) []any {
		return []any{map[string]any{"apiVersion": apiVersion, "kind": kind, "name": name, "uid": fmt.Sprint(uid), "controller": true,
			"blockOwnerDeletion": true}}
	}
	r, err := k.dyn.Resource(revisions).Namespace(ns).Get(ctx, rev, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		spec, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&svc.Spec.Template.Spec)
		if err != nil {
			return err
		}
		r = &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
			"metadata": map[string]any{"name": rev, "namespace": ns, "labels": map[string]any{LabelService: svc.Name},
				"ownerReferences": owner("serving.knative.dev/v1", "Service", svc.Name, svc.UID)},
			"spec": spec,
		}}
		if r, err = k.dyn.Resource(revisions).Namespace(ns).Create(ctx, r, metav1.CreateOptions{}); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}

	deps := k.Box.Client.AppsV1().Deployments(ns)
	d, err := deps.Get(ctx, rev+"-deployment", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		d, err = deps.Create(ctx, RevisionDeployment(&svc, rev, r.GetUID()), metav1.CreateOptions{})
	}
	if err != nil {
		return err
	}

	ready, reason, msg := d.Status.AvailableReplicas > 0, "Deploying", "waiting for the revision's pod"
	if ready {
		reason, msg = "", ""
	} else if why := k.holdup(ctx, ns, rev); why != "" {
		msg = why
	}
	// Once ready, a revision stays ready while scaled to zero.
	wasReady := svc.Status.LatestReadyRevisionName == rev
	if wasReady {
		ready = true
	}
	if ready {
		if err := k.retire(ctx, ns, svc.Name, rev); err != nil {
			return err
		}
	}
	status := "Unknown"
	if ready {
		status = "True"
	}
	if err := k.revisionStatus(ctx, r, status, reason, msg); err != nil {
		return err
	}
	if svc.Status.ObservedGeneration == svc.Generation && svc.Status.LatestCreatedRevisionName == rev && wasReady == ready {
		if c := svc.Status.GetCondition(servingv1.ServiceConditionReady); c != nil && string(c.Status) == status && c.Message == msg {
			return nil
		}
	}
	now := time.Now().UTC().Format(time.RFC3339)
	conds := []any{}
	for _, t := range []string{"Ready", "ConfigurationsReady", "RoutesReady"} {
		conds = append(conds, map[string]any{"type": t, "status": status, "reason": reason, "message": msg, "lastTransitionTime": now})
	}
	st := map[string]any{"observedGeneration": svc.Generation, "latestCreatedRevisionName": rev, "conditions": conds}
	if ready {
		st["latestReadyRevisionName"] = rev
		st["url"] = "http://" + svc.Name + "." + ns + ".example.com"
	} else if svc.Status.LatestReadyRevisionName != "" {
		st["latestReadyRevisionName"] = svc.Status.LatestReadyRevisionName
	}
	u = u.DeepCopy()
	u.Object["status"] = st
	_, err = k.dyn.Resource(ksvcs).Namespace(ns).UpdateStatus(ctx, u, metav1.UpdateOptions{})
	return err
}

// RevisionDeployment is what Knative makes of revision rev of svc: a Deployment of the template's
// pod spec with Knative's defaulting of probe ports, owned by the Revision (uid).
func RevisionDeployment(svc *servingv1.Service, rev string, revUID types.UID) *appsv1.Deployment {
	tmpl := svc.Spec.Template
	spec := *tmpl.Spec.PodSpec.DeepCopy()
	for _, c := range spec.Containers {
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.StartupProbe, c.LivenessProbe} {
			if p != nil && p.HTTPGet != nil && p.HTTPGet.Port.IntValue() == 0 && len(c.Ports) > 0 {
				p.HTTPGet.Port = intstr.FromInt32(c.Ports[0].ContainerPort)
			}
		}
	}
	replicas := int32(1)
	if n, err := strconv.Atoi(tmpl.Annotations["autoscaling.knative.dev/initial-scale"]); err == nil {
		replicas = int32(n)
	}
	labels := map[string]string{LabelService: svc.Name, LabelRevision: rev}
	for k, v := range tmpl.Labels {
		labels[k] = v
	}
	yes := true
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: rev + "-deployment", Labels: labels, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "serving.knative.dev/v1", Kind: "Revision", Name: rev, UID: revUID, Controller: &yes, BlockOwnerDeletion: &yes}}},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelRevision: rev}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: tmpl.Annotations}, Spec: spec},
		},
	}
}

// holdup is why the revision's pod is not running: the scheduler's or the kubelet's word.
func (k *Knative) holdup(ctx context.Context, ns, rev string) string {
	pods, err := k.Box.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: LabelRevision + "=" + rev})
	if err != nil {
		return ""
	}
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Status == corev1.ConditionFalse && c.Message != "" {
				return fmt.Sprintf("pod %s: %s: %s", p.Name, c.Reason, c.Message)
			}
		}
	}
	return ""
}

// retire scales the Service's other revisions to zero once rev is ready.
func (k *Knative) retire(ctx context.Context, ns, service, rev string) error {
	deps := k.Box.Client.AppsV1().Deployments(ns)
	l, err := deps.List(ctx, metav1.ListOptions{LabelSelector: LabelService + "=" + service})
	if err != nil {
		return err
	}
	for i := range l.Items {
		d := &l.Items[i]
		if d.Labels[LabelRevision] == rev || (d.Spec.Replicas != nil && *d.Spec.Replicas == 0) {
			continue
		}
		zero := int32(0)
		d.Spec.Replicas = &zero
		if _, err := deps.Update(ctx, d, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

func (k *Knative) revisionStatus(ctx context.Context, r *unstructured.Unstructured, status, reason, msg string) error {
	conds, _, _ := unstructured.NestedSlice(r.Object, "status", "conditions")
	if len(conds) > 0 {
		if m, _ := conds[0].(map[string]any); m["status"] == status && m["message"] == msg {
			return nil
		}
	}
	now := time.Now().UTC().Format(time.RFC3339)
	var out []any
	for _, t := range []string{"Ready", "ResourcesAvailable", "ContainerHealthy"} {
		out = append(out, map[string]any{"type": t, "status": status, "reason": reason, "message": msg, "lastTransitionTime": now})
	}
	r = r.DeepCopy()
	r.Object["status"] = map[string]any{"observedGeneration": r.GetGeneration(), "conditions": out}
	_, err := k.dyn.Resource(revisions).Namespace(r.GetNamespace()).UpdateStatus(ctx, r, metav1.UpdateOptions{})
	return err
}
