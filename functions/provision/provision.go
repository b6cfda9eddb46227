// Package provision turns kaitoflow.workspace.requested into kaitoflow.node.ready: it validates
// and plans the request completely before anything is bought, asks a Provider for GPU capacity,
// and emits node.ready once the Kubernetes API shows the nodes Ready with their GPUs — right away
// when they already are, otherwise when a kaitoflow.node.changed or kaitoflow.tick says to look
// again. It fails a workspace whose capacity fails or does not come within the deadline, and gives
// tuning capacity back when the run has finished, failed or been deleted.
package provision

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// Name is the function's name: its consumer, its metrics label, its event source.
const Name = "provision"

// Source is the CloudEvents source of the events the step emits (runtime.Function.Source).
const Source = "kaitoflow/" + Name

// Types are the events the function consumes: its routes'. It reads its own node.ready back to
// learn that the event is stored, and its own workspace.failed to release what a failed
// workspace holds.
var Types = (&Function{}).routes().Types()

// Failure reasons of this step.
const (
	ReasonCapacityTimeout = "CapacityTimeout"
	ReasonCapacityFailed  = "CapacityFailed"
)

// DefaultDeadline is how long capacity may take to become ready.
const DefaultDeadline = 30 * time.Minute

// Purpose says what capacity is for: tuning capacity is released when the run ends; serving
// capacity stays and scales to zero with the inference service.
type Purpose string

// Purposes.
const (
	Tuning  Purpose = "tuning"
	Serving Purpose = "serving"
)

// Request is capacity a workspace generation needs.
type Request struct {
	Ref       events.Ref      `json:"ref"`
	Workspace kaito.Workspace `json:"workspace"`
	Plan      events.Plan     `json:"plan"`
	Purpose   Purpose         `json:"purpose"`
	// Attempt is the tuning attempt the capacity is for (0 or 1: the first); Resume says it
	// continues from the generation's newest checkpoint.
	Attempt int  `json:"attempt,omitempty"`
	Resume  bool `json:"resume,omitempty"`
}

// Labels every node of the request carries: kaitoflow's workspace labels and the workspace's own
// labelSelector.matchLabels, so Kaito-style selectors find the nodes too.
func (r Request) Labels() map[string]string {
	l := map[string]string{LabelWorkspace: r.Ref.Name, LabelNamespace: r.Ref.Namespace}
	if sel := r.Workspace.Resource.LabelSelector; sel != nil {
		for k, v := range sel.MatchLabels {
			l[k] = v
		}
	}
	return l
}

// Node labels and taint kaitoflow puts on the capacity it creates.
const (
	LabelWorkspace = events.LabelWorkspace
	LabelNamespace = events.LabelNamespace
	// GPUTaint keeps everything but GPU workloads off the nodes (Kaito's sku=gpu:NoSchedule).
	GPUTaint = "sku=gpu:NoSchedule"
)

// NodeWant describes the nodes a request needs.
type NodeWant struct {
	Selector labels.Selector
	// Names, when set, limits the nodes to these (Kaito's preferredNodes).
	Names []string
	Count int
	// GPUs is the nvidia.com/gpu each node must have allocatable.
	GPUs int64
	// GPU and GPUMemoryGiB describe the SKU's GPU, for node.ready.
	GPU          string
	GPUMemoryGiB float64
}

// Nodes tells a provider which of the nodes it wants are Ready with their GPUs allocatable
// (nodes.Checker reads them from the API server), and how many match at all, so that a provider
// can tell "coming" from "not there". The providers share it; none reads nodes itself.
type Nodes interface {
	Check(ctx context.Context, w NodeWant) (c Capacity, matching int, err error)
}

// Capacity is what a provider sees of a request's capacity now.
type Capacity struct {
	Nodes []events.Node
	Ready bool
	// Waiting says what is missing while not Ready; it becomes the timeout's message.
	Waiting string
}

// Provider supplies GPU capacity. Ensure starts creating it and returns without waiting; called
// again for the same workspace it creates nothing new — except for a later tuning attempt
// (Request.Attempt > 1), where it brings the capacity back to what the request asks for (nodes
// lost to an eviction replaced). Check reports the capacity's state and
// returns an events.PermanentError when it failed for good (an ARM error, a NodeClaim that cannot
// launch). Release is idempotent.
type Provider interface {
	Name() string
	Ensure(ctx context.Context, req Request) error
	Check(ctx context.Context, req Request) (Capacity, error)
	Release(ctx context.Context, req Request) error
}

// Handover is implemented by providers whose tuning capacity can become the workspace's serving
// capacity when the run ends, instead of being released: the tuned adapter is served on the same
// kind of GPU, so the nodes that are already up take the first inference pod without a cold VM,
// and the capacity then follows the inference service to zero. Serve is idempotent.
type Handover interface {
	Serve(ctx context.Context, req Request) error
}

// Planner is the fit check: the plan for a workspace, or a permanent error (with the numbers)
// when it cannot work on the GPUs it asks for.
type Planner interface {
	Plan(ctx context.Context, ws *kaito.Workspace) (*events.Plan, error)
}

// Record is a request the function is responsible for, from workspace.requested until its
// capacity is released.
type Record struct {
	Request
	Requested time.Time `json:"requested"`
	Deadline  time.Time `json:"deadline"`
	// Ready is set once node.ready is stored (the function reads its own event back).
	Ready bool `json:"ready"`
	// Released is set once the capacity is given back. The record stays, as a tombstone: a late
	// duplicate of the generation's workspace.requested must not buy the capacity again.
	Released bool `json:"released,omitempty"`
}

// Pending stores records. Get returns nil, nil when there is none.
type Pending interface {
	Put(ctx context.Context, rec Record) error
	Get(ctx context.Context, namespace, name string) (*Record, error)
	List(ctx context.Context) ([]Record, error)
	MarkReady(ctx context.Context, ref events.Ref, attempt int) error
	MarkReleased(ctx context.Context, ref events.Ref) error
	// NextAttempt moves ref's record to a later tuning attempt, unless it is another generation's,
	// released, or already there; it returns the record (nil when there is none of ref's
	// generation still held).
	NextAttempt(ctx context.Context, ref events.Ref, next Attempt) (*Record, error)
}

// Function is the provision handler.
type Function struct {
	// router dispatches each event to its route (routes), built once by New.
	router    *runtime.Routes
	provider  Provider
	planner   Planner
	pending   Pending
	policy    netguard.AddressPolicy
	preflight Preflight
	warnOnly  bool
	deadline  time.Duration
	now       func() time.Time
	log       *slog.Logger
}

// Preflight checks a workspace's tuning input (its URLs or its image) before capacity is bought;
// its error is permanent and names the field and the reason.
type Preflight func(ctx context.Context, input *kaito.DataSource) error

// Options configure a Function.
type Options struct {
	// Policy decides which dataset hosts are acceptable.
	Policy netguard.AddressPolicy
	// Deadline for capacity to become ready; DefaultDeadline when zero.
	Deadline time.Duration
	// Now is the clock (tests).
	Now func() time.Time
	Log *slog.Logger
	// Preflight checks dataset URLs; nil skips the check. With PreflightWarnOnly a failed check
	// becomes a warning in the plan's reasons (demos, air-gapped machines) instead of a failure.
	Preflight         Preflight
	PreflightWarnOnly bool
}

// New returns the provision function.
func New(p Provider, planner Planner, pending Pending, o Options) *Function {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Deadline <= 0 {
		o.Deadline = DefaultDeadline
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	f := &Function{provider: p, planner: planner, pending: pending, policy: o.Policy, deadline: o.Deadline, now: o.Now,
		preflight: o.Preflight, warnOnly: o.PreflightWarnOnly, log: o.Log.With("function", Name, "provider", p.Name())}
	f.router = f.routes()
	return f
}

// routes are the events the function takes, each with its handler.
func (f *Function) routes() *runtime.Routes {
	r := &runtime.Routes{}
	r.OnTick(f.tick)
	runtime.On(r, events.WorkspaceRequested, f.requested)
	runtime.On(r, events.NodeReady, func(ctx context.Context, ref events.Ref, _ cloudevents.Event, d events.NodeReadyData) ([]cloudevents.Event, error) {
		return nil, f.pending.MarkReady(ctx, ref, d.Attempt)
	})
	r.Add(events.NodeChanged, f.recheck)
	runtime.On(r, events.TuningRetrying, f.retrying)
	r.Add(events.TuningCompleted, f.releaser(Tuning))
	r.Add(events.WorkspaceFailed, f.releaser(""))
	r.Add(events.WorkspaceDeleted, f.releaser(""))
	return r
}

// Handle implements runtime.Handler.
func (f *Function) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	return f.router.Handle(ctx, ev)
}

// releaser is the route that releases what the workspace holds (only capacity bought for that
// purpose, when only is not empty).
func (f *Function) releaser(only Purpose) runtime.Route {
	return func(ctx context.Context, ref events.Ref, ev cloudevents.Event) ([]cloudevents.Event, error) {
		return f.release(ctx, ev, ref, only)
	}
}

func (f *Function) requested(ctx context.Context, ref events.Ref, ev cloudevents.Event, ws kaito.Workspace) ([]cloudevents.Event, error) {
	// Fail before spending GPUs: a request that cannot work is refused here, with every problem.
	if errs := ws.Validate(f.policy); len(errs) > 0 {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "%s", kaito.FieldErrors(errs))
	}
	if ws.Name != ref.Name || (ws.Namespace != "" && ws.Namespace != ref.Namespace) {
		return nil, events.Permanentf(events.ReasonBadEvent, "event subject %s does not match metadata %s/%s", ref.Subject(), ws.Namespace, ws.Name)
	}
	rec, err := f.pending.Get(ctx, ref.Namespace, ref.Name)
	if err != nil {
		return nil, err
	}
	switch {
	case rec != nil && rec.Ref.Generation > ref.Generation:
		return nil, nil // a late delivery of an older generation
	case rec != nil && rec.Ref.Generation == ref.Generation && rec.Released:
		f.log.InfoContext(ctx, "workspace.requested again for a generation whose capacity was already released: nothing to buy")
		return nil, nil
	}
	if rec == nil || rec.Ref.Generation < ref.Generation {
		// Planned once per generation, at its first delivery: a redelivery must not plan again,
		// where the quota check would count the workspace's own capacity as used, and a later
		// attempt has a plan of its own.
		req, err := f.plan(ctx, ref, ws)
		if err != nil {
			return nil, err
		}
		// The deadline starts at the first delivery of this generation, not at a redelivery.
		rec = &Record{Request: *req, Requested: f.now(), Deadline: f.now().Add(f.deadline)}
		if err := f.pending.Put(ctx, *rec); err != nil {
			return nil, err
		}
	}
	req := rec.Request
	if err := f.provider.Ensure(ctx, req); err != nil {
		return nil, fmt.Errorf("ensure %s capacity for %s: %w", req.Purpose, ref, err)
	}
	return f.check(ctx, *rec, &ev)
}

// plan is the generation's request: the dataset preflight, then the fit check.
func (f *Function) plan(ctx context.Context, ref events.Ref, ws kaito.Workspace) (*Request, error) {
	var warning string
	if f.preflight != nil && ws.Tuning != nil && ws.Tuning.Input != nil {
		if err := f.preflight(ctx, ws.Tuning.Input); err != nil {
			if !f.warnOnly {
				return nil, fmt.Errorf("dataset preflight: %w", err)
			}
			warning = "dataset preflight failed, continuing (--preflight=warn): " + err.Error()
			f.log.WarnContext(ctx, warning)
		}
	}
	plan, err := f.planner.Plan(ctx, &ws)
	if err != nil {
		return nil, fmt.Errorf("fit check: %w", err)
	}
	if warning != "" {
		plan.Reasons = append(plan.Reasons, warning)
	}
	req := &Request{Ref: ref, Workspace: ws, Plan: *plan, Purpose: Serving}
	if ws.Tuning != nil {
		req.Purpose = Tuning
	}
	return req, nil
}

func (f *Function) recheck(ctx context.Context, ref events.Ref, ev cloudevents.Event) ([]cloudevents.Event, error) {
	rec, err := f.pending.Get(ctx, ref.Namespace, ref.Name)
	if err != nil || rec == nil || rec.Ready {
		return nil, err
	}
	return f.check(ctx, *rec, &ev)
}

// check emits node.ready when the capacity is ready. Its id is derived from the generation, so
// however many node changes and ticks find it ready, one node.ready is stored.
func (f *Function) check(ctx context.Context, rec Record, cause *cloudevents.Event) ([]cloudevents.Event, error) {
	c, err := f.provider.Check(ctx, rec.Request)
	if err != nil {
		return nil, fmt.Errorf("check capacity of %s: %w", rec.Ref, err)
	}
	return f.nodeReady(ctx, rec, c, cause)
}

func (f *Function) nodeReady(ctx context.Context, rec Record, c Capacity, cause *cloudevents.Event) ([]cloudevents.Event, error) {
	if !c.Ready {
		f.log.InfoContext(ctx, "waiting for capacity", "workspace", rec.Ref.String(), "waiting_for", c.Waiting, "deadline", rec.Deadline)
		return nil, nil
	}
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		names[i] = n.Name
	}
	step := events.NodeReady
	if rec.Attempt > 1 {
		step = fmt.Sprintf("%s/attempt-%d", events.NodeReady, rec.Attempt)
	}
	return runtime.Emit(events.New(Source, events.NodeReady, step, rec.Ref, events.NodeReadyData{
		Workspace: rec.Workspace, Provider: f.provider.Name(), InstanceType: rec.Plan.InstanceType,
		Nodes: names, NodeInfo: c.Nodes, Plan: &rec.Plan, Attempt: rec.Attempt, Resume: rec.Resume,
	}, cause))
}

// retrying gets capacity for the next tuning attempt: on a new SKU when the re-plan moved to one
// (the old capacity is released first), else the same capacity made whole again (a node lost to
// an eviction replaced). node.ready follows, for that attempt, once it is ready; the deadline
// starts again.
func (f *Function) retrying(ctx context.Context, ref events.Ref, ev cloudevents.Event, d events.TuningRetryingData) ([]cloudevents.Event, error) {
	if d.Plan == nil || d.Attempt < 2 {
		return nil, events.Permanentf(events.ReasonBadEvent, "tuning.retrying without a plan or with attempt %d", d.Attempt)
	}
	old, err := f.pending.Get(ctx, ref.Namespace, ref.Name)
	if err != nil || old == nil || old.Ref.Generation != ref.Generation || old.Released || old.Attempt > d.Attempt {
		return nil, err // a newer generation, nothing held any more, or a redelivery of an earlier retry
	}
	rec, err := f.pending.NextAttempt(ctx, ref, Attempt{Attempt: d.Attempt, Plan: *d.Plan, Resume: d.Resume, Requested: f.now(),
		Expires: f.now().Add(f.deadline)})
	if err != nil || rec == nil {
		return nil, err
	}
	if old.Attempt < d.Attempt && old.Plan.InstanceType != d.Plan.InstanceType {
		if err := f.provider.Release(ctx, old.Request); err != nil {
			return nil, fmt.Errorf("release %s capacity of %s for attempt %d on %s: %w", old.Plan.InstanceType, ref, d.Attempt, d.Plan.InstanceType, err)
		}
		f.log.InfoContext(ctx, "released the failed attempt's capacity for a larger SKU", "workspace", ref.String(), "from", old.Plan.InstanceType,
			"to", d.Plan.InstanceType)
	}
	if err := f.provider.Ensure(ctx, rec.Request); err != nil {
		if _, ok := events.AsPermanent(err); ok {
			return nil, fmt.Errorf("ensure tuning capacity for %s attempt %d: %w", ref, d.Attempt, err)
		}
		// The record says what is wanted: ticks ensure it again (a pool still being deleted for a
		// larger SKU takes minutes, longer than this event's redeliveries), until the deadline.
		f.log.WarnContext(ctx, "capacity for the next attempt not ensured yet; the next tick tries again", "workspace", ref.String(), "attempt",
			d.Attempt, "err", err)
		return nil, nil
	}
	return f.check(ctx, *rec, &ev)
}

// tick looks at every request still waiting: capacity that failed or missed its deadline fails
// the workspace; capacity that became ready without a node event being seen gets its node.ready.
// One workspace's trouble does not hold up the others.
func (f *Function) tick(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	recs, err := f.pending.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []cloudevents.Event
	for _, rec := range recs {
		if rec.Ready || rec.Released {
			continue
		}
		if rec.Attempt > 1 {
			// A later attempt's capacity may need creating again once what it replaces is gone
			// (an agent pool, a NodeClaim still being deleted); Ensure is create-or-get.
			if err := f.provider.Ensure(ctx, rec.Request); err != nil {
				if _, ok := events.AsPermanent(err); !ok {
					f.log.WarnContext(ctx, "capacity for the next attempt not ensured yet; the next tick tries again", "workspace", rec.Ref.String(),
						"attempt", rec.Attempt, "err", err)
				}
			}
		}
		c, err := f.provider.Check(ctx, rec.Request)
		var failure error
		if p, ok := events.AsPermanent(err); ok {
			failure = events.Permanent(ReasonCapacityFailed, p.Err)
		} else if err != nil {
			f.log.WarnContext(ctx, "capacity check failed; the next tick retries", "workspace", rec.Ref.String(), "err", err)
			continue
		} else if !c.Ready && f.now().After(rec.Deadline) {
			failure = events.Permanentf(ReasonCapacityTimeout, "capacity (%s) not ready within %s of the request: %s",
				rec.Plan.InstanceType, rec.Deadline.Sub(rec.Requested).Round(time.Second), c.Waiting)
		}
		if failure != nil {
			e, err := f.failed(rec.Ref, failure, &ev)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
			continue
		}
		evs, err := f.nodeReady(ctx, rec, c, &ev)
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
	}
	return out, nil
}

func (f *Function) failed(ref events.Ref, err error, cause *cloudevents.Event) (cloudevents.Event, error) {
	p, _ := events.AsPermanent(err)
	return events.New(Source, events.WorkspaceFailed, "failed/"+Name, ref, events.WorkspaceFailedData{
		Ref: ref, Function: Name, EventType: events.Tick, Reason: p.Reason, Message: p.Err.Error(),
	}, cause)
}

// release gives back the capacity of ref (only tuning capacity when only is Tuning). An event of
// an older generation never releases a newer generation's capacity.
func (f *Function) release(ctx context.Context, ev cloudevents.Event, ref events.Ref, only Purpose) ([]cloudevents.Event, error) {
	rec, err := f.pending.Get(ctx, ref.Namespace, ref.Name)
	if err != nil || (rec != nil && rec.Ref.Generation > ref.Generation) {
		return nil, err
	}
	data := events.CapacityReleasedData{Ref: ref, Because: ev.Type()}
	held := rec != nil && !rec.Released
	switch {
	case !held && ev.Type() != events.WorkspaceDeleted:
		return nil, nil // nothing held; only a deletion is always answered
	case held && only != "" && rec.Purpose != only:
		return nil, nil
	case held && only == Tuning:
		if h, ok := f.provider.(Handover); ok {
			return nil, f.handover(ctx, h, *rec)
		}
		fallthrough
	case held:
		if err := f.provider.Release(ctx, rec.Request); err != nil {
			return nil, fmt.Errorf("release %s capacity of %s: %w", rec.Purpose, rec.Ref, err)
		}
		d := f.now().Sub(rec.Requested)
		f.log.InfoContext(ctx, "released capacity", "purpose", rec.Purpose, "instance_type", rec.Plan.InstanceType, "held", d.Round(time.Second))
		if err := f.pending.MarkReleased(ctx, rec.Ref); err != nil {
			return nil, err
		}
		data.Ref, data.Purpose, data.InstanceType, data.HeldSeconds = rec.Ref, string(rec.Purpose), rec.Plan.InstanceType, d.Seconds()
		data.GPUSeconds = d.Seconds() * float64(max(rec.Plan.GPUs, 1)*max(rec.Workspace.NodeCount(), 1))
	case rec != nil:
		data.Ref, data.Purpose, data.InstanceType = rec.Ref, string(rec.Purpose), rec.Plan.InstanceType
	}
	return runtime.Emit(events.New(Source, events.CapacityReleased, "released/"+ev.Type(), data.Ref, data, &ev))
}

// handover turns a finished run's tuning capacity into the workspace's serving capacity; the
// record stays held (now for serving) until the workspace fails or is deleted.
func (f *Function) handover(ctx context.Context, h Handover, rec Record) error {
	// Serving time counts from here: the tuning run's own GPU time is tune's to report.
	rec.Purpose, rec.Requested = Serving, f.now()
	if err := h.Serve(ctx, rec.Request); err != nil {
		return fmt.Errorf("hand %s's tuning capacity over to serving: %w", rec.Ref, err)
	}
	if err := f.pending.Put(ctx, rec); err != nil {
		return err
	}
	f.log.InfoContext(ctx, "tuning capacity handed over to serving; it scales to zero with the inference service",
		"workspace", rec.Ref.String(), "instance_type", rec.Plan.InstanceType)
	return nil
}
