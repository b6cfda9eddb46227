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
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/kaitoflow/kaitoflow/events"
)

// ListerWatcher is a typed client's List and Watch: kubeclient's, the generated clientset's, or the
// dynamic client's for a resource.
type ListerWatcher[L runtime.Object] interface {
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// Informer is an informer on the objects of c that selector (a label selector) selects; example
// is one of them, empty. One informer per kind, rather than client-go's shared informer
// factories, whose ForResource links every API group's informers and listers into the binary.
func Informer[L runtime.Object](c ListerWatcher[L], example runtime.Object, selector string) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return c.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return c.Watch(ctx, o)
		},
	}
	return cache.NewSharedIndexInformer(lw, example, 0, cache.Indexers{})
}

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
