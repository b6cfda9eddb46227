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
)

// LiveKey is the adapter set ConfigMap's key holding what the replicas reported of the set's
// canaries (by public name, then replica: serve.LiveTally), kept so that a replica that scaled away
// still counts at the window's end. A new set drops it: its canary starts afresh.
const LiveKey = "canary-live"

// Canaries implements serve.CanaryDeployer: every Service whose adapter set runs a canary, with
// what the running replicas of its ready revision report now added to what earlier replicas did.
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
		reports, err := k.canariesOf(ctx, &u)
		if err != nil {
			return out, err
		}
		out = append(out, reports...)
	}
	return out, nil
}

// canariesOf reports the canaries of one Service's adapter set, keeping the replicas' numbers in
// its ConfigMap.
func (k *Deployer) canariesOf(ctx context.Context, u *unstructured.Unstructured) ([]serve.CanaryReport, error) {
	ns, name := u.GetNamespace(), u.GetName()
	cm, err := k.Kube.CoreV1().ConfigMaps(ns).Get(ctx, AdapterSetName(name), metav1.GetOptions{})
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
	tally := map[string]serve.LiveTally{}
	_ = json.Unmarshal([]byte(cm.Data[LiveKey]), &tally) // what earlier ticks kept; none is a fresh start
	if rev, _, _ := unstructured.NestedString(u.Object, "status", "latestReadyRevisionName"); rev != "" && k.Replicas != nil {
		reps, err := k.Replicas.Replicas(ctx, ns, rev)
		if err != nil {
			return nil, err
		}
		for _, r := range reps {
			for public, l := range r.Live {
				if _, running := set.Canaries[public]; !running {
					continue
				}
				if tally[public] == nil {
					tally[public] = serve.LiveTally{}
				}
				tally[public][r.Replica] = l
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
			Canary: c, Stable: set.Generations[public], Live: tally[public].Total()}
		if i := slices.IndexFunc(set.Adapters, func(a chatproxy.AdapterSpec) bool { return a.Name == c.Adapter }); i >= 0 {
			r.Reference = set.Adapters[i].Image
		}
		out = append(out, r)
	}
	return out, nil
}

// EndCanary implements serve.CanaryDeployer: the adapter set moves on without the canary of ref's
// generation (its candidate routed to, or gone), the running replicas load it live, and the
// Service is unacknowledged so ticks report it served.
func (k *Deployer) EndCanary(ctx context.Context, ref events.Ref, promote bool) error {
	name := serve.ServiceName(ref)
	cm, err := k.Kube.CoreV1().ConfigMaps(ref.Namespace).Get(ctx, AdapterSetName(name), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return kubeerr.Classify(fmt.Errorf("get adapter set %s/%s: %w", ref.Namespace, AdapterSetName(name), err))
	}
	set, err := chatproxy.DecodeAdapterSet([]byte(cm.Data[AdapterSetKey]))
	if err != nil {
		return fmt.Errorf("adapter set %s/%s: %w", ref.Namespace, cm.Name, err)
	}
	public := ""
	for p, c := range set.Canaries {
		if c.Generation == ref.Generation {
			public = p
		}
	}
	if public == "" {
		return nil // no longer running: a newer generation or a rollback replaced it
	}
	next := set.EndCanary(public, promote)
	next.Version = set.Version + 1
	b, _ := json.MarshalIndent(next, "", "  ") // as setConfigMap writes it
	cm = cm.DeepCopy()
	cm.Data[AdapterSetKey] = string(b)
	delete(cm.Data, LiveKey)
	if err := k.putSet(ctx, cm, cm.ResourceVersion); err != nil {
		return err
	}
	client := k.Client.Resource(Services).Namespace(ref.Namespace)
	return patchMetadata(ctx, client, ref.Namespace, name, map[string]any{AnnotationSetVersion: strconv.FormatInt(next.Version, 10),
		events.AnnotationAcked: nil}, nil, false)
}
