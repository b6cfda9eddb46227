// Package platform holds the stand-ins for the platform parts a box (testenv.Box) does not run,
// each named as such wherever it is used:
//
//   - AKS: Azure's resource provider for agent pools, behind the ARM SDK's own fake server, and
//     the cluster autoscaler of pools that autoscale from zero;
//   - Karpenter: a launcher that turns each NodeClaim into exactly the node it asks for, and a
//     provisioner that launches NodeClaims from a NodePool for pending pods;
//   - Knative: the revision reconciler, which turns a Knative Service into a Deployment of its pod
//     template and reports readiness from that Deployment.
//
// They act on the box the way the real ones act on a cluster — nodes with the platform's labels,
// taints and GPU capacity, a Deployment per revision — so that everything downstream of them (the
// scheduler placing pods, the Job, ReplicaSet and garbage-collector controllers, kwok running the
// pods) is the real thing and can refuse what a real cluster would refuse.
package platform

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/kaitoflow/kaitoflow/presets"
)

// every is how often a stand-in looks at the cluster: the real ones react to watches within a
// second or so, and a poll at this rate is as quick without an informer per stand-in.
const every = 100 * time.Millisecond

// loop runs step every tick until ctx ends; a failed step is retried on the next tick, as a
// controller requeues.
func loop(ctx context.Context, step func(ctx context.Context) error) {
	_ = wait.PollUntilContextCancel(ctx, every, true, func(ctx context.Context) (bool, error) {
		_ = step(ctx)
		return false, nil
	})
}

// gpusOf is the nvidia.com/gpu a VM size has, from kaitoflow's SKU catalog (AKS learns it from
// the VM; the device plugin advertises it).
func gpusOf(vmSize string) (int64, error) {
	c, err := presets.Default()
	if err != nil {
		return 0, err
	}
	s, err := c.SKU(vmSize)
	if err != nil {
		return 0, fmt.Errorf("stand-in: VM size %s: %w", vmSize, err)
	}
	return int64(s.GPUs), nil
}

// parseTaint reads AKS's and Kaito's key=value:Effect spelling.
func parseTaint(s string) (corev1.Taint, error) {
	kv, effect, ok := strings.Cut(s, ":")
	if !ok {
		return corev1.Taint{}, fmt.Errorf("taint %q: want key=value:Effect", s)
	}
	k, v, _ := strings.Cut(kv, "=")
	return corev1.Taint{Key: k, Value: v, Effect: corev1.TaintEffect(effect)}, nil
}

// template is the shape of a node a pool or NodePool launches, for deciding whether a pending
// pod would fit on one.
type template struct {
	labels map[string]string
	taints []corev1.Taint
	gpus   int64
}

// fits: the pod's nodeSelector holds on the template's labels, the pod tolerates every
// NoSchedule/NoExecute taint, and one node has the GPUs its containers ask for. (What the real
// autoscaler and Karpenter simulate with the scheduler's own predicates; the seed's pods use only
// these.)
func (t template) fits(p *corev1.Pod) bool {
	if !labels.SelectorFromSet(p.Spec.NodeSelector).Matches(labels.Set(t.labels)) {
		return false
	}
	for i := range t.taints {
		taint := &t.taints[i]
		if taint.Effect == corev1.TaintEffectPreferNoSchedule {
			continue
		}
		tolerated := false
		for _, tol := range p.Spec.Tolerations {
			if tol.ToleratesTaint(klog.Background(), taint, false) {
				tolerated = true
				break
			}
		}
		if !tolerated {
			return false
		}
	}
	return podGPUs(p) <= t.gpus
}

func podGPUs(p *corev1.Pod) int64 {
	var n int64
	for _, c := range p.Spec.Containers {
		q := c.Resources.Limits["nvidia.com/gpu"]
		n += q.Value()
	}
	return n
}

// unschedulable lists the pods the scheduler has given up on for now: the ones an autoscaler
// acts for.
func unschedulable(ctx context.Context, c kubernetes.Interface) ([]corev1.Pod, error) {
	l, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=,status.phase=Pending"})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// busy reports whether any pod that is not finished runs on the node (a DaemonSet's would not
// count; the box has none).
func busy(ctx context.Context, c kubernetes.Interface, node string) (bool, error) {
	l, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return true, err
	}
	for _, p := range l.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return true, nil
		}
	}
	return false, nil
}
