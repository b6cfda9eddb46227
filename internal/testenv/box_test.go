package testenv

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The box's parts really act: a GPU Job in a namespace enforcing PodSecurity baseline stays
// unschedulable (the scheduler says why) until a tainted GPU node comes; then the Job controller's
// pod is placed there, kwok runs it, and once the pod reports success the Job controller completes
// the Job. A privileged pod is refused by admission.
func TestBoxSchedulesGPUJob(t *testing.T) {
	b := BoxFor(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const ns = "box"
	kube := b.Client
	if err := b.Namespace(ctx, ns, "baseline"); err != nil {
		t.Fatal(err)
	}
	privileged := true
	_, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "priv"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "c", Image: "x", SecurityContext: &corev1.SecurityContext{Privileged: &privileged}}}}}, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "baseline") {
		t.Errorf("a privileged pod under baseline: %v", err)
	}

	gpu := resource.MustParse("1")
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "tune"}, Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		RestartPolicy: corev1.RestartPolicyNever,
		Tolerations:   []corev1.Toleration{{Key: "sku", Operator: corev1.TolerationOpEqual, Value: "gpu", Effect: corev1.TaintEffectNoSchedule}},
		Containers: []corev1.Container{{Name: "trainer", Image: "trainer",
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/gpu": gpu}}}},
	}}}}
	if _, err := kube.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	b.Await(ctx, t, ns, "the Job's pod unschedulable", func(ctx context.Context) (bool, string) {
		l, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=tune"})
		if err != nil || len(l.Items) != 1 {
			return false, fmt.Sprintf("pods: %v", err)
		}
		pod = l.Items[0]
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Reason == corev1.PodReasonUnschedulable {
				t.Logf("scheduler: %s", c.Message)
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", pod.Status.Conditions)
	})
	// A GPU node the way AKS makes one: the pool's taint, the GPU the device plugin advertises.
	if err := b.Node(ctx, NodeSpec{Name: "aks-gpu-0", GPUs: 1, Labels: map[string]string{"kubernetes.azure.com/agentpool": "gpu"}, Taints: GPUTaints()}); err != nil {
		t.Fatal(err)
	}
	b.Await(ctx, t, ns, "the pod running on the GPU node", func(ctx context.Context) (bool, string) {
		p, err := kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pod = *p
		return p.Spec.NodeName == "aks-gpu-0" && p.Status.Phase == corev1.PodRunning, string(p.Status.Phase) + " on " + p.Spec.NodeName
	})
	// The trainer exits 0: the kubelet reports it, the Job controller completes the Job.
	pod.Status.Phase = corev1.PodSucceeded
	pod.Status.Conditions = append(pod.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse})
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "trainer", Image: "trainer",
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed"}}}}
	if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, &pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	b.Await(ctx, t, ns, "the Job complete", func(ctx context.Context) (bool, string) {
		j, err := kube.BatchV1().Jobs(ns).Get(ctx, "tune", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range j.Status.Conditions {
			if c.Type == batchv1.JobComplete && c.Status == corev1.ConditionTrue {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", j.Status.Conditions)
	})
}
