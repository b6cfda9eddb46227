// Package kubewatch turns Kubernetes object changes into kaitoflow signal events: the embedded
// mode's (and `kaitoflow fn --transport jetstream`'s) stand-in for Knative's ApiServerSource.
// Nodes, tuning Jobs and Pods, and Knative Services all go through Run, so every driver's watch
// emits, filters, logs and shuts down the same way.
package kubewatch

import (
	"context"
	"fmt"
	"log/slog"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kaitoflow/kaitoflow/events"
)

// Signal is one kind of object whose changes become events of Type.
type Signal struct {
	// Type is the signal's event type (events.NodeChanged, events.JobChanged, …).
	Type string
	// Kind names the object in logs ("node", "job", "pod", "service").
	Kind string
	// Informer lists and watches the objects, already filtered to kaitoflow's labels.
	Informer cache.SharedIndexInformer
	// Changed says whether an update is worth a signal; nil signals every update. A node's
	// status heartbeat, for example, changes nothing provision looks at.
	Changed func(old, cur metav1.Object) bool
}

// Run publishes an events.ObjectChanged event for every add and every worthwhile update of each
// signal's objects until ctx ends. A change whose publish fails is logged and not retried: the
// periodic tick re-checks every unfinished workspace, so a lost signal only delays it. Event ids
// are derived from the object's state, so a resync or a second watcher stores one event.
func Run(ctx context.Context, pub events.Publisher, log *slog.Logger, sigs ...Signal) error {
	synced := make([]cache.InformerSynced, 0, len(sigs))
	for _, s := range sigs {
		emit := func(obj any) {
			o, err := meta.Accessor(obj)
			if err != nil {
				return
			}
			e, ok := events.ObjectChanged(s.Type, o)
			if !ok {
				return
			}
			if err := pub.Publish(ctx, e); err != nil && ctx.Err() == nil {
				log.Warn("publish "+s.Type+"; the next tick looks again", s.Kind, o.GetName(), "err", err)
			}
		}
		_, err := s.Informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: emit,
			UpdateFunc: func(oldObj, newObj any) {
				if s.Changed != nil {
					o, err1 := meta.Accessor(oldObj)
					n, err2 := meta.Accessor(newObj)
					if err1 != nil || err2 != nil || !s.Changed(o, n) {
						return
					}
				}
				emit(newObj)
			},
		})
		if err != nil {
			return fmt.Errorf("watch %ss: %w", s.Kind, err)
		}
		synced = append(synced, s.Informer.HasSynced)
		go s.Informer.Run(ctx.Done())
		log.Info("watching "+s.Kind+"s", "signal", s.Type)
	}
	cache.WaitForCacheSync(ctx.Done(), synced...)
	<-ctx.Done()
	return nil
}
