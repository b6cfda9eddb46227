// Package controller connects the Workspace custom resource to the pipeline, so Kaito's
// `kubectl apply -f workspace.yaml` then `kubectl get workspace` work: a create or spec change
// becomes kaitoflow.workspace.requested (generation = metadata.generation), a deletion becomes
// kaitoflow.workspace.deleted behind a finalizer that holds the object until the workspace's
// capacity is released, and the status store's record is written back to the object's status.
package controller

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	ctrlcontroller "sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/go-logr/logr"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/compose/election"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// Finalizer holds a deleted Workspace until its capacity is released.
const Finalizer = "kaitoflow.io/release-capacity"

// Source is the CloudEvents source of the events the controller emits.
const Source = "kaitoflow/controller"

// Submitter admits workspaces (*ingress.Submitter).
type Submitter interface {
	Submit(ctx context.Context, ws *kaito.Workspace, origin string) (*ingress.Result, error)
}

// Store is the part of the status store the controller reads (*status.Store).
type Store interface {
	Get(ctx context.Context, namespace, name string) (*status.Workspace, error)
	WatchNamespace(ctx context.Context, namespace string) (<-chan status.Workspace, error)
}

// Controller reconciles Workspace objects with the pipeline. Run puts it on controller-runtime's
// manager: the manager's cache watches the Workspaces, a source fed by the status store enqueues a
// Workspace whenever its record changes, and the manager elects the leader, serves metrics and
// health probes, and shares the work among Workers.
type Controller struct {
	// Client writes the objects: finalizers and status, as merge patches.
	Client    dynamic.Interface
	Submitter Submitter
	Store     Store
	Publisher events.Publisher
	// Group is the CRD's API group: kaito.sh, or another where Kaito itself owns kaito.sh.
	Group string
	// Resync re-lists every Workspace this often, for anything a watch missed. Default 10m.
	Resync time.Duration
	// Recorder, when set, records each pipeline event as a Kubernetes Event on the object.
	Recorder record.EventRecorder
	Log      *slog.Logger
	// Kinds are the kinds reconciled, each of whose CRD must be installed: kaito.Kind (also when
	// empty) and kaito.KindInferenceSet.
	Kinds []string

	// reader is the manager's cache of the objects.
	reader client.Reader
}

// kinds are the kinds reconciled: Kinds, or the Workspace alone.
func (c *Controller) kinds() []string {
	if len(c.Kinds) == 0 {
		return []string{kaito.Kind}
	}
	return c.Kinds
}

// resourceOf is kind's resource in the controller's group, at the version GVR reads.
func (c *Controller) resourceOf(kind string) schema.GroupVersionResource {
	r := GVR(c.Group)
	if kind == kaito.KindInferenceSet {
		r.Resource = "inferencesets"
	}
	return r
}

// GVR is the Workspace resource in group, at Kaito's storage version: the API server serves every
// object at it whichever version it was applied with (the CRD's versions share one schema, so
// nothing is lost either way).
func GVR(group string) schema.GroupVersionResource {
	if group == "" {
		group = kaito.Group
	}
	return schema.GroupVersionResource{Group: group, Version: "v1beta1", Resource: "workspaces"}
}

// gvk is kind in group, at the version GVR reads.
func gvk(group, kind string) schema.GroupVersionKind {
	r := GVR(group)
	return schema.GroupVersionKind{Group: r.Group, Version: r.Version, Kind: kind}
}

// LeaseName is the Lease the Workspace controller's replicas elect their leader with.
const LeaseName = "kaitoflow-controller"

// RunOptions are how the controller runs.
type RunOptions struct {
	// Workers is how many Workspaces are reconciled at once; 1 when zero.
	Workers int
	// Election, when set, elects one leader among the replicas.
	Election *election.Lease
	// MetricsAddr and HealthAddr are where the manager serves Prometheus metrics (its
	// workqueue, reconcile and client metrics) and /healthz and /readyz; empty serves neither.
	MetricsAddr, HealthAddr string
}

// ErrLeadershipLost is returned by Run when this replica stopped leading while ctx was alive: the
// process should exit, so that it restarts as a candidate with fresh state.
var ErrLeadershipLost = errors.New("lost the leader lease")

// ErrForeignCRD is Run's refusal of a CRD kaitoflow did not install: Kaito's own, where Kaito
// runs in the same cluster. Reconciling it would take over another operator's Workspaces.
var ErrForeignCRD = errors.New("the CRD is not kaitoflow's")

// PartOf is the label every object kaitoflow installs carries (deploy/knative's kustomization);
// on a CRD it says the resource is kaitoflow's to reconcile.
const PartOf = "app.kubernetes.io/part-of"

// CRDResource is the API server's CustomResourceDefinitions.
var CRDResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// checkCRDs refuses to start on a CRD of c.Group that another install owns. A CRD that is absent
// is left to Run (Workspaces are required, InferenceSets optional); one the controller may not
// read is reported and trusted, as `up --watch-workspaces` with a narrow kubeconfig can't read it.
func (c *Controller) checkCRDs(ctx context.Context) error {
	for _, kind := range c.kinds() {
		r := c.resourceOf(kind)
		name := r.Resource + "." + r.Group
		crd, err := c.Client.Resource(CRDResource).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case apierrors.IsForbidden(err):
			logctx.Or(c.Log).Warn("cannot read the CRD to check that it is kaitoflow's", "crd", name, "err", err)
			continue
		case err != nil:
			return fmt.Errorf("read CRD %s: %w", name, err)
		}
		if crd.GetLabels()[PartOf] != "kaitoflow" {
			return fmt.Errorf("%w: %s has no label %s=kaitoflow (labels %v), so another operator, Kaito itself, installed it; "+
				"install kaitoflow under its own group (release-kaitoflow-group.yaml, or the deploy/knative/kaitoflow-group "+
				"component) and run the controller with --crd-group kaitoflow.io", ErrForeignCRD, name, PartOf, crd.GetLabels())
		}
	}
	return nil
}

// Run reconciles Workspaces on the API server cfg names until ctx ends, or leadership is lost
// (ErrLeadershipLost). It refuses a CRD another operator installed (ErrForeignCRD).
func (c *Controller) Run(ctx context.Context, cfg *rest.Config, o RunOptions) error {
	if err := c.checkCRDs(ctx); err != nil {
		return err
	}
	mgr, err := c.manager(cfg, o)
	if err != nil {
		return err
	}
	var feeds []chan<- event.TypedGenericEvent[*unstructured.Unstructured]
	for _, kind := range c.kinds() {
		k := gvk(c.Group, kind)
		if _, err := mgr.GetRESTMapper().RESTMapping(k.GroupKind(), k.Version); kind != kaito.Kind && apimeta.IsNoMatchError(err) {
			// A cluster without this CRD (an older install, a --crd-group with Workspaces alone)
			// keeps reconciling Workspaces.
			logctx.Or(c.Log).Warn("not reconciling "+kind+"s: the API server does not serve them (install its CRD)", "kind", k.String())
			continue
		}
		records := make(chan event.TypedGenericEvent[*unstructured.Unstructured])
		feeds = append(feeds, records)
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(gvk(c.Group, kind))
		err = builder.ControllerManagedBy(mgr).
			Named(strings.ToLower(kind)).
			For(u, builder.WithPredicates(specOrMetadataChanged())).
			WatchesRawSource(source.TypedChannel(records, &handler.TypedEnqueueRequestForObject[*unstructured.Unstructured]{})).
			WithOptions(ctrlcontroller.Options{MaxConcurrentReconciles: max(o.Workers, 1)}).
			Complete(kindReconciler{c: c, kind: kind})
		if err != nil {
			return fmt.Errorf("%s controller: %w", kind, err)
		}
		logctx.Or(c.Log).Info("reconciling "+kind+"s", "resource", c.resourceOf(kind).String(), "workers", max(o.Workers, 1))
	}
	// Record changes are read only while leading, as everything else the manager runs.
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { return c.feed(ctx, feeds) })); err != nil {
		return err
	}
	c.reader = mgr.GetCache()
	err = mgr.Start(ctx)
	switch {
	case ctx.Err() != nil:
		return nil
	case err != nil && o.Election != nil && strings.Contains(err.Error(), "leader election lost"):
		return fmt.Errorf("%w: %w", ErrLeadershipLost, err)
	}
	return err
}

// manager is controller-runtime's manager for o: the cache's resync, the Lease, the listeners.
func (c *Controller) manager(cfg *rest.Config, o RunOptions) (manager.Manager, error) {
	resync := c.Resync
	if resync <= 0 {
		resync = 10 * time.Minute
	}
	mo := manager.Options{
		Logger:                 logr.FromSlogHandler(logctx.Or(c.Log).Handler()),
		Cache:                  cache.Options{SyncPeriod: &resync},
		Metrics:                metricsserver.Options{BindAddress: cmp.Or(o.MetricsAddr, "0")},
		HealthProbeBindAddress: o.HealthAddr,
		// Replicas in one process (tests) each register a "workspace" controller.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	}
	if e := o.Election; e != nil {
		kube, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("leader election client: %w", err)
		}
		name := cmp.Or(e.Name, LeaseName)
		// The Lease names the replica by its pod (controller-runtime's own lock would add a
		// random suffix to the host name).
		mo.LeaderElection, mo.LeaderElectionNamespace, mo.LeaderElectionID = true, e.Namespace, name
		mo.LeaderElectionResourceLockInterface = &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: e.Namespace, Name: name},
			Client:     kube.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
		}
		mo.LeaseDuration, mo.RenewDeadline, mo.RetryPeriod = durationOr(e.LeaseDuration, 15*time.Second), durationOr(e.RenewDeadline, 10*time.Second),
			durationOr(e.RetryPeriod, 2*time.Second)
		mo.LeaderElectionReleaseOnCancel = true
	}
	mgr, err := manager.New(cfg, mo)
	if err != nil {
		return nil, fmt.Errorf("controller manager: %w", err)
	}
	if o.HealthAddr != "" {
		if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("cache", func(r *http.Request) error {
			if !mgr.GetCache().WaitForCacheSync(r.Context()) {
				return errors.New("the Workspace cache has not synced")
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return mgr, nil
}

func durationOr(d, def time.Duration) *time.Duration {
	if d <= 0 {
		d = def
	}
	return &d
}

// feed enqueues, for each kind, the object of every status record that changes (a record is a
// Workspace's or an InferenceSet's; the other kind's reconciler finds no object and lets it be),
// until ctx ends.
func (c *Controller) feed(ctx context.Context, outs []chan<- event.TypedGenericEvent[*unstructured.Unstructured]) (err error) {
	records, err := c.Store.WatchNamespace(ctx, "")
	if err != nil {
		return fmt.Errorf("watch the status records: %w", err)
	}
	defer func() {
		if ctx.Err() == nil {
			err = errors.New("the status records' watch ended: restarting, so no record change goes unseen")
		}
	}()
	for rec := range records {
		for _, out := range outs {
			u := &unstructured.Unstructured{}
			u.SetNamespace(rec.Namespace)
			u.SetName(rec.Name)
			select {
			case out <- event.TypedGenericEvent[*unstructured.Unstructured]{Object: u}:
			case <-ctx.Done():
				return nil
			}
		}
	}
	return nil
}

// specOrMetadataChanged passes what the controller acts on: a new spec (generation), annotations
// (the rollback annotation) and labels, finalizers and deletion, and the cache's periodic resync; it drops
// the status writes the controller makes itself.
func specOrMetadataChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld, e.ObjectNew
		return o.GetResourceVersion() == n.GetResourceVersion() || // resync
			o.GetGeneration() != n.GetGeneration() ||
			!maps.Equal(o.GetAnnotations(), n.GetAnnotations()) ||
			!maps.Equal(o.GetLabels(), n.GetLabels()) || // a workspace's labels are part of its spec
			!slices.Equal(o.GetFinalizers(), n.GetFinalizers()) ||
			!o.GetDeletionTimestamp().Equal(n.GetDeletionTimestamp())
	}}
}

// kindReconciler reconciles one kind's objects.
type kindReconciler struct {
	c    *Controller
	kind string
}

// Reconcile implements controller-runtime's reconcile.Reconciler: the object as the cache holds
// it, brought together with the pipeline.
func (r kindReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(gvk(r.c.Group, r.kind))
	if err := r.c.reader.Get(ctx, req.NamespacedName, u); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	return reconcile.Result{}, r.c.reconcile(ctx, u)
}

// reconcile brings one Workspace and the pipeline together.
func (c *Controller) reconcile(ctx context.Context, u *unstructured.Unstructured) error {
	ns, name := u.GetNamespace(), u.GetName()
	rec, err := c.Store.Get(ctx, ns, name)
	if errors.Is(err, status.ErrNotFound) {
		rec, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("status of %s/%s: %w", ns, name, err)
	}
	// A Workspace and an InferenceSet of one name would share the record and undo each other's
	// submissions: the one that does not own it is refused, and its deletion releases nothing.
	if other := otherKind(u, rec); other != "" {
		if u.GetDeletionTimestamp() != nil {
			return c.patchFinalizers(ctx, u, slices.DeleteFunc(slices.Clone(u.GetFinalizers()), func(f string) bool { return f == Finalizer }))
		}
		return c.refuse(ctx, u, fmt.Errorf("the name %s/%s is the %s's of that name: a Workspace and an InferenceSet are served under "+
			"their names, so they must differ", ns, name, other))
	}
	if u.GetDeletionTimestamp() != nil {
		return c.finalize(ctx, u, rec)
	}
	if !slices.Contains(u.GetFinalizers(), Finalizer) {
		// The finalizer goes on before anything is bought, so no deletion can outrun the release.
		return c.patchFinalizers(ctx, u, append(u.GetFinalizers(), Finalizer))
	}
	// Submit a spec once: again only while its record shows nothing happened yet (an earlier
	// submit may have been admitted and then lost its publish). A failed spec is not retried
	// until it changes; a deleted one (the object was deleted and created again) starts over.
	ws, err := decode(u)
	if err != nil {
		return c.refuse(ctx, u, err)
	}
	if needsSubmit(ws, rec) {
		if err := c.submit(ctx, u, ws, rec); err != nil {
			return err
		}
		if rec, err = c.Store.Get(ctx, ns, name); err != nil && !errors.Is(err, status.ErrNotFound) {
			return err
		}
	}
	if rec != nil {
		st := rec.KaitoStatus()
		c.recordEvents(u, rec, &st)
		if err := c.rollback(ctx, u, rec, &st); err != nil {
			return err
		}
		return c.writeStatus(ctx, u, st)
	}
	return nil
}

// otherKind is the kind that owns rec when it is not u's ("" when u's own, or when no live
// record holds the name): an InferenceSet's workspace carries its created-by label.
func otherKind(u *unstructured.Unstructured, rec *status.Workspace) string {
	if rec == nil || rec.Phase == status.Deleted || rec.Manifest == nil {
		return ""
	}
	fromSet := rec.Manifest.Labels[kaito.LabelInferenceSetCreatedBy] != ""
	switch isSet := u.GetKind() == kaito.KindInferenceSet; {
	case fromSet && !isSet:
		return kaito.KindInferenceSet
	case !fromSet && isSet:
		return kaito.Kind
	}
	return ""
}

// rollback acts once on each value of the kaitoflow.io/rollback annotation: it asks serve to serve
// that generation's adapter again (the path `kaitoflow rollback` takes through the API), and says
// on the object what it did — a Normal RollbackRequested Event, or a Warning RollbackRefused with
// the reason. The value handled is kept in the status, so a later generation is served as usual.
func (c *Controller) rollback(ctx context.Context, u *unstructured.Unstructured, rec *status.Workspace, st *kaito.WorkspaceStatus) error {
	st.RollbackHandled, _, _ = unstructured.NestedString(u.Object, "status", "rollbackHandled")
	want := u.GetAnnotations()[kaito.AnnotationRollback]
	if want == "" || want == st.RollbackHandled {
		return nil
	}
	gen, checkpoint, err := kaito.ParseRollback(want)
	if err == nil {
		// The annotation's value is in the event id: re-running this reconcile publishes the
		// same event, which JetStream stores once.
		var target status.PushedAdapter
		target, err = ingress.Rollback(ctx, c.Publisher, Source, rec, gen, checkpoint, "annotation-"+strings.NewReplacer("/", "-", ":", "-").Replace(want), "")
		var refused *ingress.RollbackRefused
		switch {
		case errors.As(err, &refused):
		case err != nil:
			// The bus: retried. The status goes out now, so the Events already recorded are not
			// recorded again by the retry.
			return errors.Join(err, c.writeStatus(ctx, u, *st))
		default:
			c.event(u, corev1.EventTypeNormal, "RollbackRequested", fmt.Sprintf("serving generation %d's adapter %s again", target.Generation, target.Image))
		}
	}
	if err != nil {
		c.event(u, corev1.EventTypeWarning, "RollbackRefused", err.Error())
	}
	st.RollbackHandled = want
	return nil
}

func (c *Controller) event(u *unstructured.Unstructured, kind, reason, msg string) {
	if c.Recorder != nil {
		c.Recorder.Event(u, kind, reason, msg)
	}
}

// recordEvents records the pipeline events the object's status has not counted yet as Kubernetes
// Events on it, so `kubectl describe workspace` shows the timeline; a failure is a Warning. A
// status write that fails records them again on the retry: Events are at least once.
func (c *Controller) recordEvents(u *unstructured.Unstructured, rec *status.Workspace, st *kaito.WorkspaceStatus) {
	st.EventsRecorded = len(rec.Events)
	if c.Recorder == nil {
		return
	}
	done, _, _ := unstructured.NestedInt64(u.Object, "status", "eventsRecorded")
	if og, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration"); og != rec.Generation || int(done) > len(rec.Events) {
		done = 0 // a new generation's record starts its events anew
	}
	for _, e := range rec.Events[done:] {
		kind, msg := corev1.EventTypeNormal, fmt.Sprintf("%s from %s", e.Type, e.Source)
		if e.Note != "" {
			msg += ": " + e.Note
		}
		if e.Type == events.WorkspaceFailed || e.Type == events.TuningRetrying {
			// A retry is a failure the pipeline recovers from: kubectl describe shows it as one.
			kind = corev1.EventTypeWarning
		}
		c.Recorder.Event(u, kind, EventReason(e.Type), msg)
	}
}

// EventReason is a pipeline event type as a Kubernetes Event reason: kaitoflow.tuning.started is
// TuningStarted.
func EventReason(typ string) string {
	var b strings.Builder
	for _, part := range strings.FieldsFunc(strings.TrimPrefix(typ, events.SubjectPrefix), func(r rune) bool { return r == '.' || r == '_' || r == '-' }) {
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	return b.String()
}

func needsSubmit(ws *kaito.Workspace, rec *status.Workspace) bool {
	if rec == nil || rec.Phase == status.Deleted || rec.Generation < ws.Generation {
		return true
	}
	hash, err := status.SpecHash(ws)
	return err != nil || hash != rec.SpecHash || rec.Phase == status.Pending
}

func (c *Controller) submit(ctx context.Context, u *unstructured.Unstructured, ws *kaito.Workspace, rec *status.Workspace) error {
	if rec != nil && ws.Generation <= rec.Generation {
		// The object was created again, or changed only in what metadata.generation does not
		// count: the pipeline's generation continues from its record, so no event id of an
		// earlier generation is ever reused.
		ws.Generation = 0
	}
	_, err := c.Submitter.Submit(ctx, ws, "")
	var invalid *ingress.InvalidError
	switch {
	case errors.As(err, &invalid):
		return c.refuse(ctx, u, err)
	case err != nil:
		return err
	}
	logctx.Or(c.Log).Info("Workspace submitted", "workspace", u.GetNamespace()+"/"+u.GetName(), "generation", u.GetGeneration())
	return nil
}

// refuse tells the user, in the object's status, why its spec cannot run, and does not retry:
// the spec must change.
func (c *Controller) refuse(ctx context.Context, u *unstructured.Unstructured, err error) error {
	now := metav1.Now()
	msg := err.Error()
	cond := func(typ string) metav1.Condition {
		return metav1.Condition{Type: typ, Status: metav1.ConditionFalse, Reason: "InvalidWorkspace", Message: msg, LastTransitionTime: now,
			ObservedGeneration: u.GetGeneration()}
	}
	st := kaito.WorkspaceStatus{ObservedGeneration: u.GetGeneration(), Phase: string(status.Failed), Failure: "InvalidWorkspace: " + msg,
		Conditions: []metav1.Condition{cond(status.CondWorkspaceSucceeded), cond(status.CondWorkspaceReady)}}
	logctx.Or(c.Log).Warn("Workspace refused", "workspace", u.GetNamespace()+"/"+u.GetName(), "generation", u.GetGeneration(), "err", msg)
	return c.writeStatus(ctx, u, st)
}

// decode reads the object as the Kaito Workspace it is (or that an InferenceSet is served as), with
// the strict decoder every other entrance uses; the server's own fields (status, managedFields) are not the user's.
func decode(u *unstructured.Unstructured) (*kaito.Workspace, error) {
	obj := u.DeepCopy().Object
	delete(obj, "status")
	// A --crd-group resource is still Kaito's shape, at the version it was read at.
	obj["apiVersion"] = kaito.Group + "/" + GVR("").Version
	meta, _ := obj["metadata"].(map[string]any)
	delete(meta, "managedFields")
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	ws, err := kaito.DecodeManifest(b) // a Workspace, or the workspace an InferenceSet is served as
	if err != nil {
		return nil, err
	}
	ws.Generation = u.GetGeneration()
	return ws, nil
}

// finalize publishes workspace.deleted for the recorded generation and lets the object go once
// the capacity is released (or there never was a record).
func (c *Controller) finalize(ctx context.Context, u *unstructured.Unstructured, rec *status.Workspace) error {
	if !slices.Contains(u.GetFinalizers(), Finalizer) {
		return nil
	}
	if rec != nil && rec.Released == nil {
		if rec.Phase != status.Deleted {
			ref := events.Ref{Namespace: rec.Namespace, Name: rec.Name, Generation: rec.Generation}
			ev, err := events.New(Source, events.WorkspaceDeleted, events.WorkspaceDeleted, ref, events.WorkspaceDeletedData{Ref: ref}, nil)
			if err != nil {
				return err
			}
			if err := c.Publisher.Publish(ctx, ev); err != nil {
				return fmt.Errorf("publish workspace.deleted for %s: %w", ref, err)
			}
			logctx.Or(c.Log).Info("Workspace deleted: releasing its capacity before letting it go", "workspace", ref.String())
		}
		return nil // the record's next change (capacity.released) brings it back here
	}
	kept := slices.DeleteFunc(slices.Clone(u.GetFinalizers()), func(f string) bool { return f == Finalizer })
	logctx.Or(c.Log).Info("Workspace released", "workspace", u.GetNamespace()+"/"+u.GetName())
	return c.patchFinalizers(ctx, u, kept)
}

func (c *Controller) patchFinalizers(ctx context.Context, u *unstructured.Unstructured, finalizers []string) error {
	if finalizers == nil {
		finalizers = []string{}
	}
	// The resourceVersion makes it a compare-and-swap: another writer's finalizers are not lost.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": finalizers, "resourceVersion": u.GetResourceVersion()}})
	_, err := c.Client.Resource(c.resourceOf(u.GetKind())).Namespace(u.GetNamespace()).Patch(ctx, u.GetName(), types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: "kaitoflow"})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finalizers of %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

// writeStatus writes the record, as Kaito's status block, to the resource when it changed.
func (c *Controller) writeStatus(ctx context.Context, u *unstructured.Unstructured, st kaito.WorkspaceStatus) error {
	var v any = st
	if u.GetKind() == kaito.KindInferenceSet {
		v = setStatus(u, st)
	}
	m, err := toMap(v)
	if err != nil {
		return err
	}
	cur, _, _ := unstructured.NestedMap(u.Object, "status")
	// Compared as JSON values: the cache holds whole numbers as int64, toMap as float64.
	if c, err := toMap(cur); err == nil && reflect.DeepEqual(c, m) {
		return nil
	}
	// A merge patch leaves what it does not name: a field the new status no longer has (a cleared
	// failure, readyReplicas back to none) is removed by name.
	for k := range cur {
		if _, ok := m[k]; !ok {
			m[k] = nil
		}
	}
	patch, _ := json.Marshal(map[string]any{"status": m})
	_, err = c.Client.Resource(c.resourceOf(u.GetKind())).Namespace(u.GetNamespace()).Patch(ctx, u.GetName(), types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: "kaitoflow"}, "status")
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("status of %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

func toMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(b, &m)
}
