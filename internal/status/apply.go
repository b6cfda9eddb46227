package status

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
)

// Apply folds one event into the record and reports whether the record changed. It is idempotent
// (an event already seen changes nothing) and tolerates any order within a generation: a phase only
// moves forward, and events of an older generation are ignored.
func Apply(w *Workspace, ev cloudevents.Event) (bool, error) {
	ref, err := events.RefOf(ev)
	if err != nil {
		return false, events.Permanent(events.ReasonBadEvent, err)
	}
	switch {
	case ref.Generation < w.Generation:
		return w.lateLive(ev, ref)
	case ref.Generation > w.Generation || w.Name == "":
		created, history, gpu, live, ckpt, set := w.Created, w.History, w.GPU, w.Live, w.LiveCheckpoint, w.AdapterSet
		*w = Workspace{Namespace: ref.Namespace, Name: ref.Name, Generation: ref.Generation, Phase: Pending, Created: created, History: history,
			GPU: gpu, Live: live, LiveCheckpoint: ckpt, AdapterSet: set}
		if w.Created.IsZero() {
			w.Created = ev.Time()
		}
	}
	if w.seen(ev.ID()) {
		return false, nil
	}
	at := ev.Time()
	rec := EventRecord{Type: ev.Type(), ID: ev.ID(), Source: ev.Source(), Time: at}
	if err := applyType(w, ev, at, &rec); err != nil {
		return false, err
	}
	if !rec.drop {
		w.Events = append(w.Events, rec)
		w.sortEvents()
	}
	// WorkspaceReady follows the phase, never a single event: events arrive in any order, and a
	// success that lands after a failure must not make a failed generation look ready.
	switch w.Phase {
	case Ready:
		w.setCondition(CondWorkspaceReady, true, "Ready", "the chat endpoint answers", at)
	case Failed:
		w.setCondition(CondWorkspaceReady, false, w.Failure.Reason, w.Failure.Message, at)
	case Deleted:
	default:
		w.setCondition(CondWorkspaceReady, false, string(w.Phase), "in progress", at)
	}
	w.Updated = time.Now().UTC()
	return true, nil
}

// applyType applies what an event says to the record, by its type.
func applyType(w *Workspace, ev cloudevents.Event, at time.Time, rec *EventRecord) error {
	switch ev.Type() {
	case events.WorkspaceRequested:
		return apply(ev, func(ws kaito.Workspace) { w.workspaceRequested(ws, at, rec) })
	case events.NodeReady:
		return apply(ev, func(d events.NodeReadyData) { w.nodeReady(d, at, rec) })
	case events.TuningStarted:
		return apply(ev, func(d events.TuningStartedData) { w.tuningStarted(d, at, rec) })
	case events.TuningProgress:
		return apply(ev, func(d events.TuningProgressData) { w.tuningProgress(d, at, rec) })
	case events.TuningRetrying:
		return apply(ev, func(d events.TuningRetryingData) { w.tuningRetrying(d, at, rec) })
	case events.TuningCompleted:
		return apply(ev, func(d events.TuningCompletedData) { w.tuningCompleted(d, at, rec) })
	case events.ImagePushed:
		return apply(ev, func(d events.ImagePushedData) { w.imagePushed(d, at, rec) })
	case events.AdapterStored:
		return apply(ev, func(d events.AdapterStoredData) { w.adapterStored(d, at, rec) })
	case events.InferenceReady:
		return apply(ev, func(d events.InferenceReadyData) { w.inferenceReady(d, at, rec) })
	case events.AdapterSelected:
		return apply(ev, func(d events.AdapterSelectedData) { w.adapterSelected(d, at, rec) })
	case events.AdapterPromoted, events.AdapterHeld, events.AdapterCanary:
		return apply(ev, func(d events.AdapterGateData) { w.adapterGated(d, ev.Type() == events.AdapterHeld, rec) })
	case events.WorkspaceFailed:
		return apply(ev, func(d events.WorkspaceFailedData) { w.workspaceFailed(d, at, rec) })
	case events.WorkspaceDeleted:
		w.Phase = Deleted
		rec.Note = "deleted"
		return nil
	case events.CapacityReleased:
		return apply(ev, func(d events.CapacityReleasedData) { w.capacityReleased(d, at, rec) })
	default:
		return events.Permanentf(events.ReasonUnknownType, "status does not know event type %q", ev.Type())
	}
}

// apply decodes an event's payload and hands it to f.
func apply[T any](ev cloudevents.Event, f func(T)) error {
	var d T
	if err := events.Data(ev, &d); err != nil {
		return err
	}
	f(d)
	return nil
}

func (w *Workspace) workspaceRequested(ws kaito.Workspace, at time.Time, rec *EventRecord) {
	w.Manifest = &ws
	w.InstanceType, w.Preset = ws.InstanceType(), ws.PresetName()
	if ws.Tuning != nil {
		w.Method = ws.Tuning.Method
	}
	w.advance(Provisioning)
	w.startStep(StepProvision, at)
}

func (w *Workspace) nodeReady(d events.NodeReadyData, at time.Time, rec *EventRecord) {
	rec.Note = fmt.Sprintf("%d× %s via %s", len(d.Nodes), d.InstanceType, d.Provider)
	if d.Attempt > 1 {
		rec.Note = fmt.Sprintf("attempt %d: %s", d.Attempt, rec.Note)
	}
	if d.Workspace.Tuning != nil && d.Plan != nil {
		a := w.attempt(d.Attempt)
		a.InstanceType, a.BatchSize, a.SeqLen = d.Plan.InstanceType, d.Plan.BatchSize, d.Plan.SeqLen
	}
	if max(d.Attempt, 1) < len(w.Attempts) {
		return // a late node.ready of an earlier attempt: the later one's nodes and plan stand
	}
	w.Nodes, w.InstanceType, w.Plan = d.Nodes, d.InstanceType, d.Plan
	if d.Plan != nil && d.Plan.DType != "" {
		rec.Note += fmt.Sprintf(", %s, ~%.1f GiB/GPU", d.Plan.DType, d.Plan.EstimatedGiBPerGPU)
	}
	w.endStep(StepProvision, at)
	w.setCondition(CondResourceReady, true, "NodesReady", rec.Note, at)
	if d.Workspace.Tuning != nil {
		w.advance(Tuning)
		w.startStep(StepTune, at)
	} else {
		w.advance(Deploying)
		w.startStep(StepServe, at)
	}
}

func (w *Workspace) tuningStarted(d events.TuningStartedData, at time.Time, rec *EventRecord) {
	w.Job = d.Job
	rec.Note = "job " + d.Job + " (" + d.Trainer + ")"
	w.advance(Tuning)
	w.startStep(StepTune, at)
	w.setCondition(CondJobStarted, true, "JobStarted", rec.Note, at)
}

func (w *Workspace) tuningProgress(d events.TuningProgressData, at time.Time, rec *EventRecord) {
	// The newest attempt's progress, however the reports arrive: a fresh attempt starts at step 1
	// again.
	if p := w.Progress; p == nil || max(d.Attempt, 1) > max(p.Attempt, 1) || (d.Attempt == p.Attempt && d.Step >= p.Step) {
		if p != nil && max(d.Attempt, 1) > max(p.Attempt, 1) {
			w.LossCurve = nil // a new attempt's curve starts again
		}
		w.Progress = &d
		if d.Loss != 0 {
			w.LossCurve = appendLoss(w.LossCurve, d.Loss)
		}
	} else {
		rec.drop = true // an older report: the newest one already stands for it
	}
	rec.Note = ProgressNote(d)
	if len(w.LossCurve) > 1 {
		rec.Note += " " + Sparkline(w.LossCurve)
	}
	// Progress is reported every 30 s for as long as a run lasts (a 36-hour run would pass
	// the record's 1 MiB on its own): it is folded into one entry, the newest.
	w.Events = slices.DeleteFunc(w.Events, func(e EventRecord) bool { return e.Type == events.TuningProgress && !rec.drop })
	w.advance(Tuning)
}

func (w *Workspace) tuningRetrying(d events.TuningRetryingData, at time.Time, rec *EventRecord) {
	a := w.attempt(d.Attempt - 1)
	a.Outcome, a.Message, a.Changes, a.GPUSeconds = d.Reason, d.Message, d.Changes, d.GPUSeconds
	if d.Resume {
		resume := "resumes from its newest checkpoint"
		if d.CheckpointStep > 0 {
			resume += fmt.Sprintf(" (step %d as last reported)", d.CheckpointStep)
		}
		a.Changes = append(slices.Clip(a.Changes), resume)
	}
	w.addGPU(d.GPUSeconds, 0)
	next := w.attempt(d.Attempt)
	if d.Plan != nil {
		next.InstanceType, next.BatchSize, next.SeqLen = d.Plan.InstanceType, d.Plan.BatchSize, d.Plan.SeqLen
	}
	rec.Note = fmt.Sprintf("attempt %d of %d after %s: %s", d.Attempt, d.MaxAttempts, d.Reason, strings.Join(a.Changes, "; "))
	w.advance(Tuning)
}

func (w *Workspace) tuningCompleted(d events.TuningCompletedData, at time.Time, rec *EventRecord) {
	rec.Note = fmt.Sprintf("%d adapter file(s)", len(d.Files))
	h := w.history(w.Generation)
	h.Datasets, h.Scores = d.Datasets, events.Scores(d.Metrics)
	if d.Attempt > 1 {
		rec.Note += fmt.Sprintf(", attempt %d", d.Attempt)
	}
	a := w.attempt(d.Attempt)
	a.Outcome, a.GPUSeconds = "Succeeded", d.GPUSeconds
	w.addGPU(d.GPUSeconds, 0)
	w.endStep(StepTune, at)
	w.startStep(StepPublish, at)
	w.advance(Publishing)
	w.setCondition(CondWorkspaceSucceeded, true, "TuningSucceeded", rec.Note, at)
}

func (w *Workspace) imagePushed(d events.ImagePushedData, at time.Time, rec *EventRecord) {
	w.Image, w.ImageDigest, w.Provenance = d.Reference, d.Digest, d.Provenance
	h := w.history(w.Generation)
	h.Image, h.Digest, h.Pushed = d.Reference, d.Digest, at
	if h.Datasets == nil {
		h.Datasets = d.Datasets
	}
	if h.Scores == nil {
		h.Scores = events.Scores(d.Metrics)
	}
	if h.Checkpoints == nil {
		h.Checkpoints = d.Checkpoints
	}
	if h.Loss == nil {
		h.Loss = slices.Clone(w.LossCurve)
	}
	rec.Note = d.Reference
	w.endStep(StepPublish, at)
	w.startStep(StepServe, at)
	w.advance(Deploying)
}

func (w *Workspace) adapterStored(d events.AdapterStoredData, at time.Time, rec *EventRecord) {
	rec.Note = "adapter on " + kaito.DescribeVolume(d.Volume)
	w.endStep(StepPublish, at)
	w.startStep(StepServe, at)
	w.advance(Deploying)
}

func (w *Workspace) inferenceReady(d events.InferenceReadyData, at time.Time, rec *EventRecord) {
	// Reports of later adapter sets (a rollback) replace what an earlier one said; an earlier
	// one arriving late does not.
	if d.AdapterSet == 0 || d.AdapterSet >= w.AdapterSet {
		w.Endpoint, w.Revision, w.Adapters = d.URL, d.Revision, d.Adapters
		w.ServingGeneration, w.Replicas, w.AdapterSet = d.ServingGeneration, d.Replicas, d.AdapterSet
		w.Live, w.LiveCheckpoint = cmp.Or(d.ServingGeneration, w.Generation), d.ServingCheckpoint
		w.clearHeld()
	}
	rec.Note = d.URL
	if d.ServingGeneration != 0 {
		rec.Note += fmt.Sprintf(" (serving generation %d)", d.ServingGeneration)
	}
	if d.ServingCheckpoint != 0 {
		rec.Note += fmt.Sprintf(" (its checkpoint at step %d)", d.ServingCheckpoint)
	}
	w.endStep(StepServe, at)
	w.advance(Ready)
	w.setCondition(CondInferenceReady, true, "InferenceReady", d.URL, at)
}

func (w *Workspace) adapterSelected(d events.AdapterSelectedData, at time.Time, rec *EventRecord) {
	rec.Note = fmt.Sprintf("%s to generation %d: %s", cmp.Or(d.Reason, "select"), d.Generation, d.Reference)
	// Selecting another adapter ends a running canary: its candidate no longer answers.
	if c, ok := w.Canary(); ok && c.Generation != d.Generation {
		h := w.history(c.Generation)
		h.Held = fmt.Sprintf("held: its canary was ended by %s to generation %d", cmp.Or(d.Reason, "rollback"), d.Generation)
		w.Held = h.Held
	}
}

// adapterGated records what the promotion policy decided for a generation's adapter: at its push,
// or at its canary's end (which carries the live numbers).
func (w *Workspace) adapterGated(d events.AdapterGateData, held bool, rec *EventRecord) {
	gen := cmp.Or(d.Ref.Generation, w.Generation)
	h := w.history(gen)
	if h.Scores == nil {
		h.Scores = d.Scores
	}
	rec.Note = d.Reason
	if c := d.Canary; c != nil && h.Canary == "" {
		h.Canary = fmt.Sprintf("%d%% of requests for %s, until %s UTC", c.Share, kaito.ShortDuration(c.Ends.Sub(c.Start)), c.Ends.UTC().Format(time.DateTime))
	}
	if d.Live != nil {
		h.Live = d.Live
	}
	if held {
		h.Held = d.Reason
		if w.Live != gen && gen == w.Generation {
			w.Held = d.Reason
		}
	}
}

func (w *Workspace) workspaceFailed(d events.WorkspaceFailedData, at time.Time, rec *EventRecord) {
	if w.Failure == nil {
		w.Failure = &Failure{Reason: d.Reason, Message: d.Message, Function: d.Function, EventType: d.EventType}
	}
	if h := w.history(w.Generation); h.Failed == "" {
		h.Failed = d.Reason + ": " + d.Message
	}
	rec.Note = d.Reason + ": " + d.Message
	w.advance(Failed)
	for i := range w.Steps {
		if w.Steps[i].Ended == nil {
			w.Steps[i].Ended = &at
		}
	}
}

func (w *Workspace) capacityReleased(d events.CapacityReleasedData, at time.Time, rec *EventRecord) {
	rec.Note = "no capacity held"
	if d.Purpose == "serving" {
		w.addGPU(0, d.GPUSeconds)
	}
	if d.Purpose != "" {
		rec.Note = fmt.Sprintf("%s capacity (%s) released after %s", d.Purpose, d.InstanceType,
			time.Duration(d.HeldSeconds*float64(time.Second)).Round(time.Second))
	}
	if d.Because == events.WorkspaceDeleted {
		t := at
		w.Released = &t
	}
}

// lateLive applies what an older generation's inference.ready says of the adapter serving when it
// reports a newer adapter set than the record has seen: the generation rolling out when the next
// one was admitted does go live, and what serves is what a next run must be scored against.
func (w *Workspace) lateLive(ev cloudevents.Event, ref events.Ref) (bool, error) {
	if ev.Type() != events.InferenceReady {
		return false, nil
	}
	var d events.InferenceReadyData
	if err := events.Data(ev, &d); err != nil || d.AdapterSet <= w.AdapterSet {
		return false, err
	}
	w.AdapterSet, w.Live, w.LiveCheckpoint = d.AdapterSet, cmp.Or(d.ServingGeneration, ref.Generation), d.ServingCheckpoint
	w.clearHeld()
	return true, nil
}

// clearHeld forgets the hold of the generation now serving: promoted after all.
func (w *Workspace) clearHeld() {
	if w.Live == w.Generation {
		w.Held = ""
	}
	for i := range w.History {
		if w.History[i].Generation == w.Live {
			w.History[i].Held = ""
		}
	}
}

// attempt is attempt n's record, added (with those before it) when missing.
func (w *Workspace) attempt(n int) *Attempt {
	n = max(n, 1)
	for len(w.Attempts) < n {
		w.Attempts = append(w.Attempts, Attempt{Attempt: len(w.Attempts) + 1})
	}
	return &w.Attempts[n-1]
}

// addGPU adds GPU-seconds held to the workspace's totals.
func (w *Workspace) addGPU(tuning, serving float64) {
	if tuning <= 0 && serving <= 0 {
		return
	}
	if w.GPU == nil {
		w.GPU = &GPUTime{}
	}
	w.GPU.TuningSeconds += tuning
	w.GPU.ServingSeconds += serving
}

// maxLossCurve bounds the training losses a record keeps: a curve drawn in a line of text.
const maxLossCurve = 48

// appendLoss adds a report's loss to the curve; a full curve keeps every other point, so it
// always spans the whole run at half the resolution of the last doubling.
func appendLoss(curve []float64, loss float64) []float64 {
	if len(curve) >= maxLossCurve {
		half := curve[:0]
		for i := 0; i < len(curve); i += 2 {
			half = append(half, curve[i])
		}
		curve = half
	}
	return append(curve, loss)
}

// sparks are the bars of a sparkline, lowest first.
var sparks = []rune("▁▂▃▄▅▆▇█")

// Sparkline draws values as a line of bars scaled between their least and greatest (a flat line
// for equal values).
func Sparkline(values []float64) string {
	if len(values) == 0 {
		return ""
	}
	lo, hi := slices.Min(values), slices.Max(values)
	out := make([]rune, len(values))
	for i, v := range values {
		level := 0
		if hi > lo {
			level = int((v - lo) / (hi - lo) * float64(len(sparks)-1))
		}
		out[i] = sparks[level]
	}
	return string(out)
}

// ProgressNote renders training progress as a bar with step, loss, throughput and ETA.
func ProgressNote(d events.TuningProgressData) string {
	var b strings.Builder
	if pct := d.Percent(); pct >= 0 {
		const width = 20
		filled := int(pct / 100 * width)
		fmt.Fprintf(&b, "[%s%s] %3.0f%% step %d/%d", strings.Repeat("=", filled), strings.Repeat(" ", width-filled), pct, d.Step, d.MaxSteps)
	} else {
		fmt.Fprintf(&b, "step %d", d.Step)
	}
	if d.Loss != 0 {
		fmt.Fprintf(&b, " loss %.4f", d.Loss)
	}
	if d.TokensPerSecond > 0 {
		fmt.Fprintf(&b, " %.0f tok/s", d.TokensPerSecond)
	}
	if d.ETASeconds > 0 {
		fmt.Fprintf(&b, " ETA %s", (time.Duration(d.ETASeconds) * time.Second).String())
	}
	return b.String()
}
