package jobs

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/kubeclient"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/kubeerr"
	"github.com/kaitoflow/kaitoflow/internal/kubewatch"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// Trainer runs tuning as Jobs in the workspace's namespace.
type Trainer struct {
	Client  *kubeclient.Client
	Options Options
	Log     *slog.Logger
	// ConfigGrace is how long a run may wait for its pod or its volumes before the Events that
	// say why are its outcome (DefaultConfigGrace when zero).
	ConfigGrace time.Duration
}

// Name implements tune.Trainer.
func (t *Trainer) Name() string { return "job" }

// Start implements tune.Trainer: create the ConfigMap and the Job unless they exist, and delete
// the Jobs of older generations (a changed spec replaces its run).
func (t *Trainer) Start(ctx context.Context, job tune.Job) error {
	j, cm, err := Build(job, t.Options)
	if err != nil {
		return err
	}
	if err := t.deleteOlder(ctx, job.Ref); err != nil {
		return err
	}
	if _, err := t.Client.ConfigMaps(cm.Namespace).Create(ctx, cm,
		metav1.CreateOptions{FieldManager: "kaitoflow"}); err != nil && !apierrors.IsAlreadyExists(err) {
		return kubeerr.Classify(fmt.Errorf("create ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err))
	}
	_, err = t.Client.Jobs(j.Namespace).Create(ctx, j, metav1.CreateOptions{FieldManager: "kaitoflow"})
	switch {
	case apierrors.IsAlreadyExists(err):
		return nil
	case err != nil:
		return kubeerr.Classify(fmt.Errorf("create Job %s/%s: %w", j.Namespace, j.Name, err))
	}
	logctx.Or(t.Log).InfoContext(ctx, "tuning Job created", "job", j.Name, "namespace", j.Namespace, "image", t.Options.TrainerImage)
	return nil
}

func (t *Trainer) jobs(ctx context.Context, ref events.Ref) ([]batchv1.Job, error) {
	sel := labels.SelectorFromSet(labels.Set{LabelWorkspace: ref.Name, LabelNamespace: ref.Namespace})
	l, err := t.Client.Jobs(ref.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list tuning Jobs of %s: %w", ref.Subject(), err)
	}
	return l.Items, nil
}

func generation(j *batchv1.Job) int64 {
	n, _ := strconv.ParseInt(j.Labels[LabelGeneration], 10, 64)
	return n
}

// attempt is the Job's attempt of its generation (1 for a Job from before attempts).
func attempt(j *batchv1.Job) int {
	n, _ := strconv.Atoi(j.Labels[LabelAttempt])
	return max(n, 1)
}

// newer orders Jobs by generation, then attempt.
func newer(a, b batchv1.Job) int {
	return cmp.Or(cmp.Compare(generation(&a), generation(&b)), cmp.Compare(attempt(&a), attempt(&b)))
}

func (t *Trainer) deleteOlder(ctx context.Context, ref events.Ref) error {
	js, err := t.jobs(ctx, ref)
	if err != nil {
		return err
	}
	for _, j := range js {
		if generation(&j) < ref.Generation {
			if err := t.delete(ctx, &j); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *Trainer) delete(ctx context.Context, j *batchv1.Job) error {
	bg := metav1.DeletePropagationBackground
	if err := t.Client.Jobs(j.Namespace).Delete(ctx, j.Name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete Job %s/%s: %w", j.Namespace, j.Name, err)
	}
	if err := t.Client.ConfigMaps(j.Namespace).Delete(ctx, j.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete ConfigMap %s/%s: %w", j.Namespace, j.Name, err)
	}
	logctx.Or(t.Log).InfoContext(ctx, "tuning Job deleted", "job", j.Name)
	return nil
}

// Status implements tune.Trainer: the newest run of the workspace, from its Job and Pods.
func (t *Trainer) Status(ctx context.Context, ref events.Ref) (*tune.Status, error) {
	js, err := t.jobs(ctx, ref)
	if err != nil || len(js) == 0 {
		return nil, err
	}
	j := slices.MaxFunc(js, newer)
	var run tune.Job
	if err := json.Unmarshal([]byte(j.Annotations[AnnotationRun]), &run); err != nil {
		return nil, events.Permanentf(events.ReasonBadEvent, "Job %s/%s: annotation %s: %v", j.Namespace, j.Name, AnnotationRun, err)
	}
	pods, err := t.Client.Pods(j.Namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelJob + "=" + j.Name})
	if err != nil {
		return nil, fmt.Errorf("list Pods of Job %s: %w", j.Name, err)
	}
	st := jobStatus(run, &j, pods.Items)
	if st.Phase == tune.Pending || st.Phase == tune.Running {
		if reason, msg := t.configFailure(ctx, &j, pods.Items); reason != "" {
			st.Phase, st.Reason, st.Message = tune.Failed, reason, msg
		}
	}
	st.Acknowledged = j.Annotations[AnnotationAcked] != ""
	return st, nil
}

// configFailure looks for what only Events say, on a run that has not started: the Job controller
// cannot create its pod (the trainer's ServiceAccount missing, an admission refusal), or the
// kubelet cannot mount the pod's volumes (a push Secret that does not exist, the quickstart's
// placeholder name). Either would otherwise hold the GPU node until the Job's 12-hour deadline.
// Event reads that fail are not the run's failure: the next tick looks again.
func (t *Trainer) configFailure(ctx context.Context, j *batchv1.Job, pods []corev1.Pod) (string, string) {
	list := func(kind, name string) []corev1.Event {
		evs, err := t.Client.Events(j.Namespace).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=" + kind + ",involvedObject.name=" + name, Limit: 100})
		if err != nil {
			return nil
		}
		return evs.Items
	}
	now, grace := time.Now(), cmp.Or(t.ConfigGrace, DefaultConfigGrace)
	if len(pods) == 0 && now.Sub(j.CreationTimestamp.Time) > grace {
		return configFailureOf(list("Job", j.Name), "FailedCreate", ReasonPodNotCreated, now)
	}
	for i := range pods {
		p := &pods[i]
		if p.Status.Phase == corev1.PodPending && p.Spec.NodeName != "" && now.Sub(p.CreationTimestamp.Time) > grace {
			if reason, msg := configFailureOf(list("Pod", p.Name), "FailedMount", ReasonVolumeMount, now); reason != "" {
				return reason, msg
			}
		}
	}
	return "", ""
}

// Failure reasons only Events report.
const (
	// ReasonPodNotCreated: the Job controller keeps failing to create the pod.
	ReasonPodNotCreated = "PodNotCreated"
	// ReasonVolumeMount: the kubelet keeps failing to mount a volume of the pod.
	ReasonVolumeMount = "VolumeMountFailed"
)

// DefaultConfigGrace: long enough for a Secret created just after the workspace, or a mount that
// needs a retry; short next to a GPU hour.
const DefaultConfigGrace = 3 * time.Minute

// stillFailing is how recent the newest Event of a failure must be for it to be still happening:
// the kubelet retries a mount with a backoff of up to about two minutes, and the Job controller
// its pod creation likewise, each retry refreshing the Event.
const stillFailing = 5 * time.Minute

// configFailureOf returns reason and the newest message of the evReason Events, when one was seen
// within stillFailing of now (a failure still happening, not one long resolved).
func configFailureOf(evs []corev1.Event, evReason, reason string, now time.Time) (string, string) {
	var newest *corev1.Event
	for i := range evs {
		e := &evs[i]
		if e.Reason == evReason && (newest == nil || eventTime(e).After(eventTime(newest))) {
			newest = e
		}
	}
	if newest == nil || now.Sub(eventTime(newest)) > stillFailing {
		return "", ""
	}
	return reason, fmt.Sprintf("%s: %s", evReason, newest.Message)
}

// eventTime is when an Event was last seen: the newest of its times (a series' last observation,
// the deprecated last timestamp; EventTime is a series' first).
func eventTime(e *corev1.Event) time.Time {
	t := e.FirstTimestamp.Time
	for _, c := range []time.Time{e.EventTime.Time, e.LastTimestamp.Time} {
		if c.After(t) {
			t = c
		}
	}
	if e.Series != nil && e.Series.LastObservedTime.After(t) {
		t = e.Series.LastObservedTime.Time
	}
	return t
}

// ReasonContainerConfig: the trainer container cannot be created from its spec, most often because
// presetOptions.modelAccessSecret names a Secret (or a key) that does not exist; the message is
// the kubelet's, which names it.
const ReasonContainerConfig = "ContainerConfigError"

// ReasonNodeLost is the failure reason of a run whose pod was taken away with its node.
const ReasonNodeLost = tune.ReasonNodeLost

// jobStatus reads a run's phase from its Job and Pods: a pure function, so each outcome the
// Job controller and kubelet can report is a table case.
func jobStatus(run tune.Job, j *batchv1.Job, pods []corev1.Pod) *tune.Status {
	st := &tune.Status{Job: run, Phase: tune.Pending}
	seen := readPods(st, pods)
	defer stamp(st, j, seen.last)
	if st.Phase == tune.Failed {
		return st
	}
	for _, c := range j.Status.Conditions {
		if c.Status != corev1.ConditionTrue {
			continue
		}
		switch c.Type {
		case batchv1.JobComplete:
			completed(st, j, c, seen.last)
			return st
		case batchv1.JobFailed:
			failed(st, c, seen)
			return st
		}
	}
	return st
}

// podsSeen is what the pods say beyond the status: the trainer's last exit, and how a pod was
// taken away with its node, when one was.
type podsSeen struct {
	last *corev1.ContainerStateTerminated
	lost string
}

// readPods reads the node, start, progress and running state from the run's pods into st, and
// fails it at once on what the kubelet would retry until the deadline (an image that cannot be
// pulled, a missing Secret).
func readPods(st *tune.Status, pods []corev1.Pod) podsSeen {
	var seen podsSeen
	for i := range pods {
		p := &pods[i]
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue {
				seen.lost = fmt.Sprintf("pod %s on node %s: %s: %s", p.Name, p.Spec.NodeName, c.Reason, c.Message)
			}
		}
		if p.Spec.NodeName != "" && (p.Status.Phase == corev1.PodRunning || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed) {
			st.Node = p.Spec.NodeName
			if p.Status.StartTime != nil {
				st.Started = p.Status.StartTime.Time
			}
			if p.Status.Phase == corev1.PodRunning {
				st.Phase = tune.Running
			}
		}
		// The last report stays on the pod after it ends: how far a failed run got, and its
		// newest checkpoint, for the retry to say.
		var prog events.TuningProgressData
		if a := p.Annotations[AnnotationProgress]; a != "" && json.Unmarshal([]byte(a), &prog) == nil {
			st.Progress = &prog
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name != "trainer" {
				continue
			}
			if w := cs.State.Waiting; w != nil {
				switch w.Reason {
				case "ErrImagePull", "ImagePullBackOff", "InvalidImageName":
					st.Phase, st.Reason, st.Message = tune.Failed, "ImagePullError", fmt.Sprintf("%s: %s", w.Reason, w.Message)
					return seen
				case "CreateContainerConfigError":
					// A Secret or key the pod's environment names is missing (the model access
					// token): the kubelet would retry until the Job's deadline, on a paid GPU.
					st.Phase, st.Reason, st.Message = tune.Failed, ReasonContainerConfig, w.Message
					return seen
				}
			}
			if cs.State.Terminated != nil {
				seen.last = cs.State.Terminated
			}
		}
	}
	return seen
}

// stamp sets when the run began and, once finished, when it stopped: its trainer's exit, else the
// Job's final condition.
func stamp(st *tune.Status, j *batchv1.Job, last *corev1.ContainerStateTerminated) {
	if st.Started.IsZero() && j.Status.StartTime != nil {
		// The pod went with its node: the Job says when the run began.
		st.Started = j.Status.StartTime.UTC()
	}
	if last != nil && !last.FinishedAt.IsZero() {
		st.Ended = last.FinishedAt.UTC()
	}
	for _, c := range j.Status.Conditions {
		if st.Ended.IsZero() && c.Status == corev1.ConditionTrue && (c.Type == batchv1.JobFailed || c.Type == batchv1.JobComplete) {
			st.Ended = c.LastTransitionTime.UTC()
		}
	}
}

// completed reads a completed Job's result: job-run's summary in the trainer's termination message.
func completed(st *tune.Status, j *batchv1.Job, c batchv1.JobCondition, last *corev1.ContainerStateTerminated) {
	st.Phase = tune.Succeeded
	var s jobrun.Summary
	if last == nil || json.Unmarshal([]byte(last.Message), &s) != nil || len(s.Files) == 0 {
		st.Phase, st.Reason, st.Message = tune.Failed, "NoSummary", "the Job completed but its trainer left no adapter summary in the termination message"
		return
	}
	st.Result = tune.Result{Location: s.Location, Files: s.Files, Layer: s.Layer, Metrics: s.Metrics, Datasets: s.Datasets}
	if t := j.Status.CompletionTime; t != nil {
		st.Result.Finished = t.UTC()
	} else {
		st.Result.Finished = c.LastTransitionTime.UTC()
	}
}

// failed says why a failed Job failed: its node lost, out of memory, its deadline, or the
// trainer's own exit and account.
func failed(st *tune.Status, c batchv1.JobCondition, seen podsSeen) {
	st.Phase = tune.Failed
	last, lost := seen.last, seen.lost
	switch {
	case lost != "" || (c.Reason == batchv1.JobReasonPodFailurePolicy && strings.Contains(c.Message, string(corev1.DisruptionTarget))):
		// The pod went with its node (PodGC removes it soon after: the Job's own condition
		// then is all that says so).
		if lost == "" {
			lost = c.Message
		}
		st.Reason, st.Message = ReasonNodeLost, "the tuning pod's node was lost (spot eviction, deleted VM or drain): "+lost
	case last != nil && last.Reason == "OOMKilled":
		st.Reason, st.Message = "OOMKilled", fmt.Sprintf("the trainer ran out of memory (exit code %d); lower per_device_train_batch_size or "+
			"max_seq_length", last.ExitCode)
	case c.Reason == batchv1.JobReasonDeadlineExceeded:
		st.Reason, st.Message = "DeadlineExceeded", c.Message
	case last != nil && last.ExitCode != 0:
		st.Reason = exitReasons[last.ExitCode]
		if st.Reason == "" {
			st.Reason = fmt.Sprintf("TrainerExit%d", last.ExitCode)
		}
		st.Message = last.Message
		// The trainer's own account, when it gave one as JSON (out of GPU memory: the step,
		// batch, sequence and memory).
		var tf events.TrainerFailure
		if strings.HasPrefix(last.Message, "{") && json.Unmarshal([]byte(last.Message), &tf) == nil && tf.Message != "" {
			st.Failure, st.Message = &tf, tf.Message
		}
		if st.Message == "" {
			st.Message = fmt.Sprintf("the trainer exited with code %d", last.ExitCode)
		}
	default:
		st.Reason, st.Message = c.Reason, c.Message
	}
}

// List implements tune.Trainer: every run not yet acknowledged, in all namespaces.
func (t *Trainer) List(ctx context.Context) ([]events.Ref, error) {
	l, err := t.Client.Jobs("").List(ctx, metav1.ListOptions{LabelSelector: LabelWorkspace})
	if err != nil {
		return nil, fmt.Errorf("list tuning Jobs: %w", err)
	}
	var refs []events.Ref
	for _, j := range l.Items {
		ref := events.Ref{Namespace: j.Labels[LabelNamespace], Name: j.Labels[LabelWorkspace], Generation: generation(&j)}
		if j.Annotations[AnnotationAcked] == "" && !slices.Contains(refs, ref) {
			refs = append(refs, ref)
		}
	}
	return refs, nil
}

// Acknowledge implements tune.Trainer: annotate the generation's Jobs up to attempt so ticks skip
// them.
func (t *Trainer) Acknowledge(ctx context.Context, ref events.Ref, upTo int) error {
	js, err := t.jobs(ctx, ref)
	if err != nil {
		return err
	}
	patch := []byte(`{"metadata":{"annotations":{"` + AnnotationAcked + `":"true"}}}`)
	for _, j := range js {
		if generation(&j) != ref.Generation || attempt(&j) > upTo || j.Annotations[AnnotationAcked] != "" {
			continue
		}
		_, err := t.Client.Jobs(ref.Namespace).Patch(ctx, j.Name, types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("acknowledge Job %s/%s: %w", ref.Namespace, j.Name, err)
		}
	}
	return nil
}

// Delete implements tune.Trainer.
func (t *Trainer) Delete(ctx context.Context, ref events.Ref) error {
	js, err := t.jobs(ctx, ref)
	if err != nil {
		return err
	}
	for _, j := range js {
		if err := t.delete(ctx, &j); err != nil {
			return err
		}
	}
	return nil
}

// Watch publishes kaitoflow.job.changed when a tuning Job or its Pod changes: the embedded mode's
// ApiServerSource on Jobs and Pods. It runs until ctx ends.
func Watch(ctx context.Context, client *kubeclient.Client, pub events.Publisher, log *slog.Logger) error {
	return kubewatch.Run(ctx, pub, log,
		kubewatch.Signal{Type: events.JobChanged, Kind: "job", Informer: kubewatch.Informer(client.Jobs(metav1.NamespaceAll), &batchv1.Job{}, LabelWorkspace)},
		kubewatch.Signal{Type: events.JobChanged, Kind: "pod", Informer: kubewatch.Informer(client.Pods(metav1.NamespaceAll), &corev1.Pod{}, LabelWorkspace)})
}
