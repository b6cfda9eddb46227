package jobs

import (
	"context"
	"fmt"
	"io"
	"slices"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
)

// Logs implements tune.Logs: the trainer container's log of the generation's attempt (the newest
// when 0), from its newest pod, as `kubectl logs` reads it; with follow, until the container ends
// or ctx does. The kubelet keeps it: a pod that is gone has none.
func (t *Trainer) Logs(ctx context.Context, ref events.Ref, want int, follow bool, w io.Writer) error {
	p, err := t.logPod(ctx, ref, want)
	if err != nil {
		return err
	}
	rc, err := t.Client.PodLogs(ctx, p.Namespace, p.Name, &corev1.PodLogOptions{Container: trainerContainer, Follow: follow})
	if err != nil {
		return fmt.Errorf("logs of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil && ctx.Err() == nil {
		return fmt.Errorf("logs of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// logPod is the pod whose log is the attempt's: the newest pod of the generation's Job for that
// attempt (the newest attempt when 0).
func (t *Trainer) logPod(ctx context.Context, ref events.Ref, want int) (*corev1.Pod, error) {
	js, err := t.jobs(ctx, ref)
	if err != nil {
		return nil, err
	}
	js = slices.DeleteFunc(js, func(j batchv1.Job) bool { return generation(&j) != ref.Generation || want > 0 && attempt(&j) != want })
	if len(js) == 0 {
		return nil, fmt.Errorf("%w: no tuning Job of %s attempt %d", tune.ErrNoLogs, ref.Subject(), want)
	}
	j := slices.MaxFunc(js, newer)
	pods, err := t.Client.Pods(j.Namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelJob + "=" + j.Name})
	if err != nil {
		return nil, fmt.Errorf("list Pods of Job %s: %w", j.Name, err)
	}
	if len(pods.Items) == 0 {
		return nil, fmt.Errorf("%w: Job %s/%s has no pod yet", tune.ErrNoLogs, j.Namespace, j.Name)
	}
	p := slices.MaxFunc(pods.Items, func(a, b corev1.Pod) int { return a.CreationTimestamp.Compare(b.CreationTimestamp.Time) })
	return &p, nil
}
