// Package serve turns kaitoflow.image.pushed or kaitoflow.adapter.stored (a tuned adapter, in an
// image or on a volume), or kaitoflow.node.ready for an inference-only workspace, into a running chat endpoint, and the endpoint's readiness into
// kaitoflow.inference.ready — or kaitoflow.workspace.failed with the revision's reason. Applying
// the service returns at once; readiness comes from kaitoflow.service.changed (a watch on the
// Knative Service, or the sim deployer) and kaitoflow.tick, so no step holds a request open while a
// model loads.
package serve

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"strconv"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	corev1 "k8s.io/api/core/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// Name is the function's name.
const Name = "serve"

// Source is the CloudEvents source of the events the step emits (runtime.Function.Source).
const Source = "kaitoflow/" + Name

// Types are the events the function consumes: its routes'. It reads its own inference.ready and
// workspace.failed back: once stored, the service is acknowledged and ticks stop looking at it.
var Types = (&Function{}).routes().Types()

// Adapter is one LoRA adapter to load next to the base model, from an image or from a volume whose
// root holds its files.
type Adapter struct {
	Name   string               `json:"name"`
	Image  string               `json:"image,omitempty"`
	Volume *corev1.VolumeSource `json:"volumeSource,omitempty"`
	// Strength is Kaito's adapter weight, kept as given ("1.0" for a freshly tuned adapter).
	Strength string `json:"strength,omitempty"`
	// PullSecrets are the dockerconfigjson Secrets (in the workspace's namespace) to pull the
	// image with: the adapter source's imagePullSecrets, or the imagePushSecret it was pushed with.
	PullSecrets []string `json:"pullSecrets,omitempty"`
}

// Deployment is what to serve: a workspace generation's base model with its adapters.
type Deployment struct {
	Ref       events.Ref      `json:"ref"`
	Service   string          `json:"service"`
	Workspace kaito.Workspace `json:"workspace"`
	Nodes     []string        `json:"nodes,omitempty"`
	Adapters  []Adapter       `json:"adapters,omitempty"`
	// Plan is provision's (inference-only workspaces) or the tuning run's plan; nil when unknown.
	Plan *events.Plan `json:"plan,omitempty"`
	// Serving is the earlier generation whose adapters these are (a rollback), 0 for Ref's own.
	// Such a deployment changes only the adapter set of the running service.
	Serving int64 `json:"serving,omitempty"`
	// Held is the earlier generation whose adapters serve because the promotion policy held
	// Ref's: unlike Serving, Ref's generation is deployed as any other (its template, its pool),
	// only with that generation's adapters.
	Held int64 `json:"held,omitempty"`
	// Pool is the serving pool the workspace shares a service with (then Service is the pool's),
	// empty when it is served alone.
	Pool string `json:"pool,omitempty"`
	// Canary is a candidate answering a share of the requests next to Adapters' first (the
	// adapter Held names) until its window ends: a canary policy's.
	Canary *CanaryAdapter `json:"canary,omitempty"`
	// Checkpoint is the step of the checkpoint of the serving generation's run that Adapters'
	// first is (`kaitoflow promote --checkpoint`), 0 for the run's final adapter.
	Checkpoint int `json:"checkpoint,omitempty"`
}

// ServingGeneration is the generation whose adapters d serves.
func (d Deployment) ServingGeneration() int64 { return cmp.Or(d.Serving, d.Held, d.Ref.Generation) }

// Phase of a service.
type Phase string

// Phases.
const (
	Pending Phase = "Pending"
	Ready   Phase = "Ready"
	Failed  Phase = "Failed"
)

// Status is what a deployer knows of a workspace's service.
type Status struct {
	// Ref is the generation the service serves.
	Ref      events.Ref
	Service  string
	Adapters []string
	Phase    Phase
	// URL and Revision are set when Ready.
	URL, Revision string
	// Reason and Message are set when Failed (ImagePullBackOff, Unschedulable, ExitCode1, …).
	Reason, Message string
	// Replicas are the running replicas of the serving revision, Serving those that serve the
	// current adapter set.
	Replicas, Serving int
	// Version is the adapter set's version; ServingGeneration the generation its default
	// adapter comes from, ServingCheckpoint the step of that generation's checkpoint it is (0:
	// the final adapter).
	Version           int64
	ServingGeneration int64
	ServingCheckpoint int
	// Verdict is how the canary the current set ended was judged, to announce with it; nil when
	// the set ended none.
	Verdict *CanaryVerdict
}

// ReasonAdapterLoad is a replica that could not pull, load or get an answer from an adapter; the
// adapters it served before keep answering.
const ReasonAdapterLoad = "AdapterLoadFailed"

// Deployer runs inference services. Apply is create-or-update per workspace generation and returns
// at once. Status finds the service of a workspace (nil when it has none). List returns the
// services whose outcome is not yet acknowledged; Acknowledge marks one whose outcome is stored
// (with the adapter set version it reported, 0 for any).
// Delete removes the service.
type Deployer interface {
	Name() string
	Apply(ctx context.Context, d Deployment) error
	Status(ctx context.Context, ref events.Ref) (*Status, error)
	List(ctx context.Context) ([]events.Ref, error)
	Acknowledge(ctx context.Context, ref events.Ref, version int64) error
	Delete(ctx context.Context, ref events.Ref) error
}

// Function is the serve handler.
type Function struct {
	// router dispatches each event to its route (routes), built once by New.
	router   *runtime.Routes
	deployer Deployer
	log      *slog.Logger
}

// New returns the serve function over deployer.
func New(d Deployer, log *slog.Logger) *Function {
	if log == nil {
		log = slog.Default()
	}
	f := &Function{deployer: d, log: log.With("function", Name, "deployer", d.Name())}
	f.router = f.routes()
	return f
}

// ServiceName is the inference service's name: the workspace's, as Kaito names its Service, so
// the seed's `kubectl get svc workspace-tuning-phi-3` finds it.
func ServiceName(ref events.Ref) string { return ref.Name }

// Handle implements runtime.Handler.
func (f *Function) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	return f.router.Handle(ctx, ev)
}

// routes are the events the function takes, each with its handler.
func (f *Function) routes() *runtime.Routes {
	r := &runtime.Routes{}
	r.OnTick(f.tick)
	r.Add(events.WorkspaceDeleted, func(ctx context.Context, ref events.Ref, _ cloudevents.Event) ([]cloudevents.Event, error) {
		if err := f.deployer.Delete(ctx, ref); err != nil {
			return nil, fmt.Errorf("delete inference service of %s: %w", ref, err)
		}
		return nil, nil
	})
	r.Add(events.ServiceChanged, func(ctx context.Context, ref events.Ref, ev cloudevents.Event) ([]cloudevents.Event, error) {
		return f.observe(ctx, ref, &ev)
	})
	runtime.On(r, events.InferenceReady, func(ctx context.Context, ref events.Ref, _ cloudevents.Event,
		in events.InferenceReadyData) ([]cloudevents.Event, error) {
		return nil, f.deployer.Acknowledge(ctx, ref, in.AdapterSet)
	})
	runtime.On(r, events.WorkspaceFailed, func(ctx context.Context, ref events.Ref, _ cloudevents.Event,
		in events.WorkspaceFailedData) ([]cloudevents.Event, error) {
		if in.Function == Name {
			return nil, f.deployer.Acknowledge(ctx, ref, 0)
		}
		return nil, nil
	})
	runtime.On(r, events.NodeReady, f.nodeReady)
	runtime.On(r, events.ImagePushed, f.imagePushed)
	runtime.On(r, events.AdapterSelected, f.adapterSelected)
	runtime.On(r, events.AdapterStored, f.adapterStored)
	return r
}

// nodeReady serves an inference-only workspace on its capacity, with the adapters it names.
func (f *Function) nodeReady(ctx context.Context, ref events.Ref, ev cloudevents.Event, in events.NodeReadyData) ([]cloudevents.Event, error) {
	if in.Workspace.Tuning != nil || in.Workspace.Inference == nil {
		return nil, nil // a tuning workspace is served once its adapter image is pushed
	}
	d := Deployment{Ref: ref, Service: ServiceName(ref), Workspace: in.Workspace, Nodes: in.Nodes, Plan: in.Plan}
	for _, a := range in.Workspace.Inference.Adapters {
		if a.Source == nil {
			continue // validation refuses this; a hand-made event must not crash the handler
		}
		ad := Adapter{Name: a.Source.Name, Image: a.Source.Image, Volume: a.Source.Volume, PullSecrets: a.Source.ImagePullSecrets}
		if a.Strength != nil {
			ad.Strength = *a.Strength
		}
		d.Adapters = append(d.Adapters, ad)
	}
	return f.apply(ctx, ref, d, &ev)
}

// imagePushed serves a tuned generation's adapter, or, where the promotion policy holds it, the
// adapter it was compared with.
func (f *Function) imagePushed(ctx context.Context, ref events.Ref, ev cloudevents.Event, in events.ImagePushedData) ([]cloudevents.Event, error) {
	d := Deployment{Ref: ref, Service: ServiceName(ref), Workspace: in.Workspace, Nodes: in.Nodes, Plan: in.Plan}
	decision, gate := Gate(ref, in)
	if decision == Promote {
		d.Adapters = []Adapter{tunedAdapter(ref, in.Workspace, in.Reference)}
	} else {
		// Held: this generation is served as any other, with the adapter it was compared with.
		d.Held = in.Compared.Generation
		d.Adapters = []Adapter{tunedAdapter(ref, in.Workspace, in.Compared.Reference)}
	}
	if decision == StartCanary {
		// The candidate answers its share next to the held one; the window counts from the
		// push, so a redelivery asks for the same canary.
		p := in.Workspace.Promotion()
		start := ev.Time().UTC()
		d.Canary = &CanaryAdapter{Adapter: tunedAdapter(ref, in.Workspace, in.Reference), Generation: ref.Generation, Share: p.Share,
			Start: start, Ends: start.Add(p.Window)}
		gate.Canary = &events.CanaryWindow{Share: p.Share, Start: start, Ends: d.Canary.Ends}
	}
	out, err := f.apply(ctx, ref, d, &ev)
	if _, policy := in.Workspace.Annotations[kaito.AnnotationPromotion]; !policy {
		return out, err // no policy named: served as Kaito serves it, with nothing to decide
	}
	typ := map[Decision]string{Promote: events.AdapterPromoted, Hold: events.AdapterHeld, StartCanary: events.AdapterCanary}[decision]
	decided, derr := events.New(Source, typ, string(decision), ref, gate, &ev)
	if derr != nil {
		return nil, derr
	}
	f.log.InfoContext(ctx, "promotion policy decided", "generation", ref.Generation, "decision", decision, "reason", gate.Reason)
	return append([]cloudevents.Event{decided}, out...), err
}

// adapterSelected serves an earlier generation's adapter (a rollback, a promotion by hand).
func (f *Function) adapterSelected(ctx context.Context, ref events.Ref, ev cloudevents.Event, in events.AdapterSelectedData) ([]cloudevents.Event, error) {
	if in.Reference == "" || in.Generation < 1 || in.Generation > ref.Generation {
		return nil, events.Permanentf(events.ReasonBadEvent, "adapter.selected: generation %d (reference %q) is not an earlier generation of %s",
			in.Generation, in.Reference, ref)
	}
	if in.Checkpoint < 0 {
		return nil, events.Permanentf(events.ReasonBadEvent, "adapter.selected: checkpoint %d is not a step", in.Checkpoint)
	}
	d := Deployment{Ref: ref, Service: ServiceName(ref), Workspace: in.Workspace, Serving: in.Generation, Checkpoint: in.Checkpoint,
		Adapters: []Adapter{tunedAdapter(ref, in.Workspace, in.Reference)}}
	return f.apply(ctx, ref, d, &ev)
}

// adapterStored serves an adapter the tuning run wrote to a volume.
func (f *Function) adapterStored(ctx context.Context, ref events.Ref, ev cloudevents.Event, in events.AdapterStoredData) ([]cloudevents.Event, error) {
	if in.Volume == nil {
		return nil, events.Permanentf(events.ReasonBadEvent, "adapter.stored names no volumeSource")
	}
	d := Deployment{Ref: ref, Service: ServiceName(ref), Workspace: in.Workspace, Nodes: in.Nodes, Plan: in.Plan,
		Adapters: []Adapter{{Name: ref.Name, Volume: in.Volume, Strength: "1.0"}}}
	return f.apply(ctx, ref, d, &ev)
}

// apply serves d and reports what the service says now.
func (f *Function) apply(ctx context.Context, ref events.Ref, d Deployment, cause *cloudevents.Event) ([]cloudevents.Event, error) {
	if pool, _ := d.Workspace.ServingPool(); pool != "" {
		d.Pool, d.Service = pool, pool
	}
	if err := f.deployer.Apply(ctx, d); err != nil {
		return nil, fmt.Errorf("apply inference service %s: %w", d.Service, err)
	}
	return f.observe(ctx, ref, cause)
}

// Decision is what the promotion policy decided for a pushed adapter.
type Decision string

// Decisions: served in place of the adapter it was compared with, held (kept, not served), or
// served to a share of the requests next to it until the canary's window ends.
const (
	Promote     Decision = "promoted"
	Hold        Decision = "held"
	StartCanary Decision = "canary"
)

// Gate is the workspace's promotion policy (kaito.AnnotationPromotion) applied to a pushed
// adapter: whether it is served in place of the adapter it was compared with, and the decision
// with its numbers. Nothing serving, or the policy always, promotes; manual holds; if-better
// promotes a score at least the minimum improvement better than the serving adapter's on the same
// rows (a lower eval_loss, or a higher task score: ROUGE-L or exact match of generated answers),
// and holds otherwise — and when either score is missing (a failed evaluation). canary starts a
// canary unless its offline gate holds it: an eval_loss worse than the serving adapter's (where
// both are known; live numbers decide the rest).
func Gate(ref events.Ref, in events.ImagePushedData) (Decision, events.AdapterGateData) {
	p := in.Workspace.Promotion()
	g := events.AdapterGateData{Ref: ref, Reference: in.Reference, Policy: p.String(), Compared: in.Compared, Scores: events.Scores(in.Metrics)}
	switch {
	case in.Compared == nil:
		g.Reason = "promoted: nothing was serving"
		if loss, ok := in.Metrics[events.MetricEvalLoss]; ok {
			if base, ok := in.Metrics[events.MetricBaseEvalLoss]; ok {
				g.Reason += fmt.Sprintf(" (eval_loss %.4g, the base model %.4g)", loss, base)
			}
		}
		return Promote, g
	case p.Policy == kaito.PromoteAlways:
		g.Reason = "promoted: policy always"
		return Promote, g
	case p.Policy == kaito.PromoteManual:
		g.Reason = fmt.Sprintf("held: policy manual; `kaitoflow promote %s --generation %d` serves it", ref.Name, ref.Generation)
		return Hold, g
	case p.Policy == kaito.PromoteCanary:
		return canaryGate(in, p, g)
	}
	newKey, oldKey, higher := events.CompareKeys(p.CompareBy())
	now, haveNew := in.Metrics[newKey]
	old, haveOld := in.Metrics[oldKey]
	if !haveNew || !haveOld {
		missing := oldKey
		if !haveNew {
			missing = newKey
		}
		g.Reason = fmt.Sprintf("held: the evaluation failed (no %s); generation %d keeps serving", missing, in.Compared.Generation)
		return Hold, g
	}
	better := now <= old-p.MinImprovement
	if higher {
		better = now >= old+p.MinImprovement
	}
	verdict := "held"
	if better {
		verdict = "promoted"
	}
	g.Reason = fmt.Sprintf("%s: %s %.4g vs %.4g serving (generation %d)", verdict, p.CompareBy(), now, old, in.Compared.Generation)
	if !better && p.MinImprovement > 0 {
		direction := "lower"
		if higher {
			direction = "higher"
		}
		g.Reason += fmt.Sprintf(", and the policy wants it %s by %g", direction, p.MinImprovement)
	}
	if better {
		return Promote, g
	}
	return Hold, g
}

// canaryGate is a canary policy's offline gate: a candidate whose eval_loss on the held-out rows is
// worse than the serving adapter's is held; any other gets its canary.
func canaryGate(in events.ImagePushedData, p kaito.Promotion, g events.AdapterGateData) (Decision, events.AdapterGateData) {
	window := fmt.Sprintf("%d%% of the requests for %s next to generation %d", p.Share, kaito.ShortDuration(p.Window), in.Compared.Generation)
	now, haveNew := in.Metrics[events.MetricEvalLoss]
	old, haveOld := in.Metrics[events.MetricServingEvalLoss]
	switch {
	case haveNew && haveOld && now > old:
		g.Reason = fmt.Sprintf("held: the canary's offline gate: eval_loss %.4g vs %.4g serving (generation %d)", now, old, in.Compared.Generation)
		return Hold, g
	case haveNew && haveOld:
		g.Reason = fmt.Sprintf("canary: %s (eval_loss %.4g vs %.4g serving)", window, now, old)
	default:
		g.Reason = fmt.Sprintf("canary: %s (no eval_loss to compare: the live numbers decide)", window)
	}
	return StartCanary, g
}

// tunedAdapter is a tuning workspace's own adapter, pushed as image.
func tunedAdapter(ref events.Ref, ws kaito.Workspace, image string) Adapter {
	ad := Adapter{Name: ref.Name, Image: image, Strength: "1.0"}
	// A pull-only secret when the workspace names one; never the push secret, which would put
	// the right to overwrite the adapter in the container that answers requests.
	if sec := ws.Annotations[kaito.AnnotationAdapterPullSecret]; sec != "" {
		ad.PullSecrets = []string{sec}
	}
	return ad
}

// observe turns the service's state into events. Their ids derive from the generation, so however
// often a state is observed, inference.ready (or the failure) is stored once per generation.
func (f *Function) observe(ctx context.Context, ref events.Ref, cause *cloudevents.Event) ([]cloudevents.Event, error) {
	st, err := f.deployer.Status(ctx, ref)
	if err != nil || st == nil {
		return nil, err
	}
	if st.Ref.Generation < ref.Generation {
		return nil, nil // the service still serves an older generation: its update is on the way
	}
	ref = st.Ref
	var e cloudevents.Event
	switch st.Phase {
	case Ready:
		// Each adapter set a generation is served with (a live update, a rollback) is reported
		// once: the set's version is part of the id.
		step := events.InferenceReady
		if st.Version > 1 {
			step += "/adapters-v" + strconv.FormatInt(st.Version, 10)
		}
		data := events.InferenceReadyData{Ref: ref, Service: st.Service, URL: st.URL, Revision: st.Revision, Adapters: st.Adapters,
			Driver: f.deployer.Name(), Replicas: st.Serving, AdapterSet: st.Version}
		if st.ServingGeneration != 0 && st.ServingGeneration != ref.Generation {
			data.ServingGeneration = st.ServingGeneration
		}
		data.ServingCheckpoint = st.ServingCheckpoint
		e, err = events.New(Source, events.InferenceReady, step, ref, data, cause)
		if err == nil && st.Verdict != nil {
			// The canary's decision first: once inference.ready is stored (and acknowledged),
			// the decision is too.
			d, derr := decision(st.Verdict, cause)
			if derr != nil {
				return nil, derr
			}
			return []cloudevents.Event{d, e}, nil
		}
	case Failed:
		if st.ServingGeneration != 0 && st.ServingGeneration != ref.Generation && st.Reason == ReasonAdapterLoad {
			// A rollback whose adapter would not load: the adapter serving keeps answering and
			// the workspace's generation has not failed. Said in the log and on the replicas'
			// GET /adapters; ticks stop looking.
			f.log.WarnContext(ctx, "rollback not served; the adapter serving keeps answering", "service", st.Service, "generation",
				st.ServingGeneration, "reason", st.Reason, "message", st.Message)
			return nil, f.deployer.Acknowledge(ctx, ref, st.Version)
		}
		f.log.WarnContext(ctx, "inference service failed", "service", st.Service, "reason", st.Reason, "message", st.Message)
		step := "failed/" + Name
		if st.Version > 1 {
			step += "/adapters-v" + strconv.FormatInt(st.Version, 10)
		}
		e, err = events.New(Source, events.WorkspaceFailed, step, ref, events.WorkspaceFailedData{
			Ref: ref, Function: Name, EventType: events.ServiceChanged, Reason: st.Reason, Message: st.Message,
		}, cause)
	default:
		return nil, nil
	}
	return runtime.Emit(e, err)
}

// tick judges the canaries whose window has passed, and re-observes every unacknowledged service,
// for changes whose watch event was lost (and a canary's end).
func (f *Function) tick(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	f.judgeCanaries(ctx, ev)
	return runtime.Sweep(ctx, ev, f.log, "inference service", f.deployer.List, f.observe)
}

// Source says where the adapter comes from: its image, or its volume.
func (a Adapter) Source() string {
	if a.Volume != nil {
		return kaito.DescribeVolume(a.Volume)
	}
	return a.Image
}
