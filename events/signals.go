package events

import (
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LabelJob names a tuning Job on the Job and its Pod.
const LabelJob = "kaitoflow.io/job"

// ObjectChanged is the signal of type typ (NodeChanged, JobChanged or ServiceChanged) for a
// Kubernetes object kaitoflow labelled for a workspace; ok is false for an object without the
// labels. The id is the object's uid and resourceVersion: one event per observed state, however
// many watchers (an in-process informer, Knative's ApiServerSource) see it.
func ObjectChanged(typ string, obj metav1.Object) (e cloudevents.Event, ok bool) {
	l := obj.GetLabels()
	ns, name := l[LabelNamespace], l[LabelWorkspace]
	if ns == "" || name == "" {
		return e, false
	}
	var data any
	switch typ {
	case NodeChanged:
		data = NodeChangedData{Node: obj.GetName()}
	case JobChanged:
		data = JobChangedData{Job: l[LabelJob]}
	case ServiceChanged:
		data = ServiceChangedData{Service: obj.GetName()}
	default:
		return e, false
	}
	e = cloudevents.NewEvent()
	e.SetID(string(obj.GetUID()) + "/" + obj.GetResourceVersion())
	e.SetSource("kaitoflow/watch")
	e.SetType(typ)
	e.SetSubject(ns + "/" + name)
	if g := l[LabelGeneration]; g != "" {
		e.SetExtension(ExtGeneration, g)
	}
	if err := e.SetData(cloudevents.ApplicationJSON, data); err != nil {
		return e, false
	}
	return e, true
}

// TickAt is the kaitoflow.tick of the interval of length every that contains now. Its id is the
// interval's index, so several tickers (processes, a PingSource and a ticker) store one tick.
func TickAt(now time.Time, every time.Duration) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID("tick-" + strconv.FormatInt(now.UnixNano()/int64(max(every, time.Second)), 10))
	e.SetSource("kaitoflow/tick")
	e.SetType(Tick)
	e.SetTime(now.UTC())
	_ = e.SetData(cloudevents.ApplicationJSON, TickData{At: now.UTC()})
	return e
}
