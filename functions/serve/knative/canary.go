package knative

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/internal/kubeerr"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// LiveKey is the adapter set ConfigMap's key holding what the replicas reported of the set's
// canaries (by serve.TallyKey, then replica process: serve.LiveTally), kept so that a replica that
// scaled away still counts at the window's end; VerdictKey holds how the canary the set ended was
// judged (serve.CanaryVerdict), until it is announced. A new set drops both.
const (
	LiveKey    = "canary-live"
	VerdictKey = "canary-verdict"
)

// Canaries implements serve.CanaryDeployer: every Service whose adapter set runs a canary (marked
// with AnnotationCanary: the others' sets are not read), with what the running replicas of its
// ready revision report now added to what earlier replicas did.
// A Service whose canaries cannot be read is skipped (and said so); the others are reported.
func (k *Deployer) Canaries(ctx context.Context) ([]serve.CanaryReport, error) {
	if k.Kube == nil {
		return nil, nil
	}
	l, err := k.Client.Resource(Services).Namespace("").List(ctx, metav1.ListOptions{LabelSelector: events.LabelWorkspace})
	if err != nil {
		return nil, fmt.Errorf("list Knative Services: %w", err)
	}
	var out []serve.CanaryReport
	for _, u := range l.Items {
		if u.GetAnnotations()[AnnotationCanary] == "" {
			continue // no canary runs there: its set is not read
		}
		reports, err := k.canariesOf(ctx, &u)
		if err != nil {
			logctx.Or(k.Log).WarnContext(ctx, "canaries of a service not read; judged at a later tick", "service", u.GetName(), "namespace",
				u.GetNamespace(), "err", err)
			continue
		}
		out = append(out, reports...)
	}
	return out, nil
}

// canariesOf reports the canaries of one Service's adapter set, keeping the replicas' numbers in
// its ConfigMap.
func (k *Deployer) canariesOf(ctx context.Context, u *unstructured.Unstructured) ([]serve.CanaryReport, error) {
	ns, name := u.GetNamespace(), u.GetName()
	cm, err := k.Kube.ConfigMaps(ns).Get(ctx, AdapterSetName(name), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, kubeerr.Classify(fmt.Errorf("get adapter set %s/%s: %w", ns, AdapterSetName(name), err))
	}
	set, err := chatproxy.DecodeAdapterSet([]byte(cm.Data[AdapterSetKey]))
	if err != nil || len(set.Canaries) == 0 {
		return nil, nil //nolint:nilerr // a set that does not decode runs no canary; Status reports it
	}
	kept := map[string]serve.LiveTally{}
	_ = json.Unmarshal([]byte(cm.Data[LiveKey]), &kept) // what earlier ticks kept; none is a fresh start
	tally := map[string]serve.LiveTally{}
	for public, c := range set.Canaries {
		tally[serve.TallyKey(public, c)] = kept[serve.TallyKey(public, c)] // another canary's numbers go
	}
	if rev, _, _ := unstructured.NestedString(u.Object, "status", "latestReadyRevisionName"); rev != "" && k.Replicas != nil {
		reps, err := k.Replicas.Replicas(ctx, ns, rev)
		if err != nil {
			return nil, err
		}
		for _, r := range reps {
			for public, l := range r.Live {
				// Only this canary's numbers: a replica still on an older set reports another's.
				c, running := set.Canaries[public]
				if !running || !r.Canaries[public].Same(c) {
					continue
				}
				key := serve.TallyKey(public, c)
				if tally[key] == nil {
					tally[key] = serve.LiveTally{}
				}
				tally[key][serve.ReplicaKey(r.Replica, r.Instance)] = l
			}
		}
		if b, _ := json.Marshal(tally); string(b) != cm.Data[LiveKey] {
			next := cm.DeepCopy()
			next.Data[LiveKey] = string(b)
			// A conflict (the set changed meanwhile) loses only this tick's copy: the replicas keep
			// their totals, and the next tick reads them again.
			if err := k.putSet(ctx, next, cm.ResourceVersion); err != nil && !apierrors.IsConflict(err) {
				return nil, err
			}
		}
	}
	var out []serve.CanaryReport
	for _, public := range slices.Sorted(maps.Keys(set.Canaries)) {
		c := set.Canaries[public]
		r := serve.CanaryReport{Ref: events.Ref{Namespace: ns, Name: u.GetLabels()[events.LabelWorkspace], Generation: c.Generation}, Public: public,
			Canary: c, Stable: set.Generations[public], Live: tally[serve.TallyKey(public, c)].Total()}
		if i := slices.IndexFunc(set.Adapters, func(a chatproxy.AdapterSpec) bool { return a.Name == c.Adapter }); i >= 0 {
			r.Reference = set.Adapters[i].Image
		}
		out = append(out, r)
	}
	return out, nil
}

// EndCanary implements serve.CanaryDeployer: the adapter set moves on without the canary v judged
// (its candidate routed to, or gone), with v beside it until announced; the running replicas load
// it live, and the Service is unacknowledged so ticks report it served. The write is conditional on
// the ConfigMap read: of two ticks ending one canary, one does.
func (k *Deployer) EndCanary(ctx context.Context, v serve.CanaryVerdict) (bool, error) {
	name := serve.ServiceName(v.Ref)
	cm, err := k.Kube.ConfigMaps(v.Ref.Namespace).Get(ctx, AdapterSetName(name), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, kubeerr.Classify(fmt.Errorf("get adapter set %s/%s: %w", v.Ref.Namespace, AdapterSetName(name), err))
	}
	set, err := chatproxy.DecodeAdapterSet([]byte(cm.Data[AdapterSetKey]))
	if err != nil {
		return false, fmt.Errorf("adapter set %s/%s: %w", v.Ref.Namespace, cm.Name, err)
	}
	if !set.Canaries[v.Public].Same(v.Canary) {
		return false, nil // no longer running: a newer generation, a rollback, or ended already
	}
	next := set.EndCanary(v.Public, v.Promote)
	next.Version = set.Version + 1
	b, _ := json.MarshalIndent(next, "", "  ") // as setConfigMap writes it
	verdict, err := json.Marshal(v)
	if err != nil {
		return false, err
	}
	cm = cm.DeepCopy()
	cm.Data[AdapterSetKey], cm.Data[VerdictKey] = string(b), string(verdict)
	delete(cm.Data, LiveKey)
	if err := k.putSet(ctx, cm, cm.ResourceVersion); err != nil {
		return false, err
	}
	client := k.Client.Resource(Services).Namespace(v.Ref.Namespace)
	return true, patchMetadata(ctx, client, v.Ref.Namespace, name, map[string]any{AnnotationSetVersion: strconv.FormatInt(next.Version, 10),
		events.AnnotationAcked: nil, AnnotationCanary: nil}, nil, false)
}
