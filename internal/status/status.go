// Package status keeps each workspace's state — phase, Kaito-style conditions, step timings, the
// events seen — in a JetStream key-value bucket. A Projector folds events into it; the API and the
// CLI read it.
package status

import (
	"cmp"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
)

// Phase is where a workspace is in the pipeline.
type Phase string

// Phases, in pipeline order. Failed and Deleted end a generation.
const (
	Pending      Phase = "Pending"
	Provisioning Phase = "Provisioning"
	Tuning       Phase = "Tuning"
	Publishing   Phase = "Publishing"
	Deploying    Phase = "Deploying"
	Ready        Phase = "Ready"
	Failed       Phase = "Failed"
	Deleted      Phase = "Deleted"
)

var phaseRank = map[Phase]int{Pending: 0, Provisioning: 1, Tuning: 2, Publishing: 3, Deploying: 4, Ready: 5}

// Terminal reports whether no further events are expected for this generation.
func (p Phase) Terminal() bool { return p == Ready || p == Failed || p == Deleted }

// Kaito's condition types, so `get` prints the columns `kubectl get workspace` prints.
const (
	CondResourceReady      = "ResourceReady"
	CondJobStarted         = "JobStarted"
	CondWorkspaceSucceeded = "WorkspaceSucceeded"
	CondInferenceReady     = "InferenceReady"
	CondWorkspaceReady     = "WorkspaceReady"
)

// Step names and the event types that start and end them.
const (
	StepProvision = "provision"
	StepTune      = "tune"
	StepPublish   = "publish"
	StepServe     = "serve"
)

// Workspace is the status record of one workspace (its latest generation).
type Workspace struct {
	Namespace    string                     `json:"namespace"`
	Name         string                     `json:"name"`
	Generation   int64                      `json:"generation"`
	SpecHash     string                     `json:"specHash,omitempty"`
	InstanceType string                     `json:"instanceType,omitempty"`
	Preset       string                     `json:"preset,omitempty"`
	Method       string                     `json:"method,omitempty"`
	Phase        Phase                      `json:"phase"`
	Conditions   []metav1.Condition         `json:"conditions,omitempty"`
	Nodes        []string                   `json:"nodes,omitempty"`
	Plan         *events.Plan               `json:"plan,omitempty"`
	Job          string                     `json:"job,omitempty"`
	Progress     *events.TuningProgressData `json:"progress,omitempty"`
	// LossCurve is the training loss at each progress report of the newest attempt, at most
	// maxLossCurve points spanning the run (`watch` and `adapters` draw it as a sparkline).
	LossCurve   []float64 `json:"lossCurve,omitempty"`
	Image       string    `json:"image,omitempty"`
	ImageDigest string    `json:"imageDigest,omitempty"`
	// Provenance is the training record attached to the image (an OCI referrer).
	Provenance string `json:"provenance,omitempty"`
	Endpoint   string `json:"endpoint,omitempty"`
	// Released is when a deleted workspace's capacity was given back (a finalizer waits for it).
	Released *time.Time `json:"released,omitempty"`
	// Revision is the serving revision; Adapters the LoRA adapters it serves, by model name.
	Revision string   `json:"revision,omitempty"`
	Adapters []string `json:"adapters,omitempty"`
	// ServingGeneration is the generation whose adapter answers when it is not this one (after
	// a rollback); Replicas the replicas that served it when last reported (0: scaled to zero).
	ServingGeneration int64 `json:"servingGeneration,omitempty"`
	Replicas          int   `json:"replicas,omitempty"`
	// History lists every generation's adapter (or failure), kept across generations: what a
	// rollback or a promotion can serve, and `kaitoflow adapters` lists. Live is the generation
	// whose adapter the endpoint serves, kept across generations too (0: none yet); Held why the
	// promotion policy kept this generation's adapter from serving.
	History []PushedAdapter `json:"history,omitempty"`
	Live    int64           `json:"liveGeneration,omitempty"`
	// LiveCheckpoint is the step of Live's checkpoint that serves, 0 when its final adapter does.
	LiveCheckpoint int    `json:"liveCheckpoint,omitempty"`
	Held           string `json:"held,omitempty"`
	// AdapterSet is the version of the adapter set last reported ready: an earlier report
	// arriving late changes nothing.
	AdapterSet int64 `json:"adapterSet,omitempty"`
	// Attempts are the generation's tuning attempts: the shape each ran with, why it ended and
	// what the next one changed.
	Attempts []Attempt `json:"attempts,omitempty"`
	// GPU is the GPU time the workspace has held, over all its generations.
	GPU      *GPUTime         `json:"gpu,omitempty"`
	Failure  *Failure         `json:"failure,omitempty"`
	Steps    []Step           `json:"steps,omitempty"`
	Events   []EventRecord    `json:"events,omitempty"`
	Manifest *kaito.Workspace `json:"manifest,omitempty"`
	Created  time.Time        `json:"created"`
	Updated  time.Time        `json:"updated"`
}

// Attempt is one tuning attempt of a generation.
type Attempt = kaito.TuningAttempt

// GPUTime is the GPU time a workspace has held.
type GPUTime = kaito.GPUTime

// PushedAdapter is one generation's adapter (kaito.AdapterRecord).
type PushedAdapter = kaito.AdapterRecord

// Adapter states, as `kaitoflow adapters` shows them.
const (
	AdapterServing    = "serving"
	AdapterHeld       = "held"
	AdapterSuperseded = "superseded"
	AdapterFailed     = "failed"
	AdapterCanary     = "canary"
)

// AdapterState is the adapter's state in w: serving, held (pushed, kept, never served by the policy's
// decision), canary (answering a share of the requests until its window ends), superseded (served
// before, or pushed and replaced), or failed.
func (w *Workspace) AdapterState(p PushedAdapter) string {
	switch {
	case p.Generation == w.Live && p.Image != "" && w.LiveCheckpoint == 0:
		return AdapterServing
	case p.Failed != "":
		return AdapterFailed
	case p.Held != "":
		return AdapterHeld
	case p.Canary != "" && p.Live == nil && p.Generation == w.Generation:
		return AdapterCanary // answering its share; judged at the window's end
	}
	return AdapterSuperseded
}

// Canary is the adapter whose canary answers a share of the requests now, if one does.
func (w *Workspace) Canary() (PushedAdapter, bool) {
	for _, p := range w.History {
		if w.AdapterState(p) == AdapterCanary {
			return p, true
		}
	}
	return PushedAdapter{}, false
}

// Pushed is generation gen's adapter image, if it was pushed.
func (w *Workspace) Pushed(gen int64) (PushedAdapter, bool) {
	for _, p := range w.History {
		if p.Generation == gen && p.Image != "" {
			return p, true
		}
	}
	return PushedAdapter{}, false
}

// history is generation gen's entry, added in generation order when missing.
func (w *Workspace) history(gen int64) *PushedAdapter {
	for i := range w.History {
		if w.History[i].Generation == gen {
			return &w.History[i]
		}
	}
	w.History = append(w.History, PushedAdapter{Generation: gen})
	slices.SortFunc(w.History, func(a, b PushedAdapter) int { return cmp.Compare(a.Generation, b.Generation) })
	return w.history(gen)
}

// Serving is the generation whose adapter answers.
func (w *Workspace) Serving() int64 { return cmp.Or(w.ServingGeneration, w.Generation) }

// Failure says why a generation failed.
type Failure struct {
	Reason    string `json:"reason"`
	Message   string `json:"message"`
	Function  string `json:"function,omitempty"`
	EventType string `json:"eventType,omitempty"`
}

// Step is one function's part of the pipeline.
type Step struct {
	Name    string     `json:"name"`
	Started *time.Time `json:"started,omitempty"`
	Ended   *time.Time `json:"ended,omitempty"`
}

// Duration is how long the step took, or has taken so far.
func (s Step) Duration(now time.Time) time.Duration {
	switch {
	case s.Started == nil:
		return 0
	case s.Ended == nil:
		return now.Sub(*s.Started)
	}
	return s.Ended.Sub(*s.Started)
}

// EventRecord is one event seen for the workspace.
type EventRecord struct {
	Type   string    `json:"type"`
	ID     string    `json:"id"`
	Source string    `json:"source"`
	Time   time.Time `json:"time"`
	Note   string    `json:"note,omitempty"`
	// drop: applied, but not kept in Events (an older progress report).
	drop bool
}

// Condition returns the condition of type t, or nil.
func (w *Workspace) Condition(t string) *metav1.Condition {
	for i := range w.Conditions {
		if w.Conditions[i].Type == t {
			return &w.Conditions[i]
		}
	}
	return nil
}

// ConditionStatus returns "True", "False" or "" (unknown) for condition t.
func (w *Workspace) ConditionStatus(t string) string {
	if c := w.Condition(t); c != nil {
		return string(c.Status)
	}
	return ""
}

// State is Kaito v1beta1's status.state for the workspace's phase: Pending until capacity is
// there, Running while it tunes, publishes and deploys, then Ready or Failed.
func (w *Workspace) State() string {
	switch w.Phase {
	case Pending, Provisioning:
		return "Pending"
	case Tuning, Publishing, Deploying:
		return "Running"
	case Ready:
		return "Ready"
	case Failed:
		return "Failed"
	}
	return ""
}

// TargetNodeCount is Kaito v1beta1's status.targetNodeCount: the nodes the workspace runs on, 0
// before its manifest is recorded.
func (w *Workspace) TargetNodeCount() int {
	if w.Manifest == nil {
		return 0
	}
	return w.Manifest.NodeCount()
}

func (w *Workspace) seen(id string) bool {
	return slices.ContainsFunc(w.Events, func(e EventRecord) bool { return e.ID == id })
}

func (w *Workspace) advance(p Phase) {
	if w.Phase.Terminal() && w.Phase != Ready {
		return // Failed and Deleted stay until a new generation
	}
	if phaseRank[p] >= phaseRank[w.Phase] || p == Failed {
		w.Phase = p
	}
}

func (w *Workspace) step(name string) *Step {
	for i := range w.Steps {
		if w.Steps[i].Name == name {
			return &w.Steps[i]
		}
	}
	w.Steps = append(w.Steps, Step{Name: name})
	return &w.Steps[len(w.Steps)-1]
}

func (w *Workspace) startStep(name string, t time.Time) {
	s := w.step(name)
	if s.Started == nil || t.Before(*s.Started) {
		s.Started = &t
	}
}

func (w *Workspace) endStep(name string, t time.Time) {
	s := w.step(name)
	if s.Started == nil {
		s.Started = &t
	}
	s.Ended = &t
}

func (w *Workspace) setCondition(t string, ok bool, reason, msg string, at time.Time) {
	st := metav1.ConditionFalse
	if ok {
		st = metav1.ConditionTrue
	}
	c := w.Condition(t)
	if c == nil {
		w.Conditions = append(w.Conditions, metav1.Condition{Type: t})
		c = &w.Conditions[len(w.Conditions)-1]
	}
	if c.Status != st {
		c.LastTransitionTime = metav1.NewTime(at)
	}
	c.Status, c.Reason, c.Message, c.ObservedGeneration = st, reason, msg, w.Generation
}

func (w *Workspace) sortEvents() {
	slices.SortStableFunc(w.Events, func(a, b EventRecord) int { return cmp.Compare(a.Time.UnixNano(), b.Time.UnixNano()) })
}
