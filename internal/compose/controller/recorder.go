package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// NewRecorder returns an EventRecorder that writes Kubernetes Events through client as the
// controller, and the function that stops it.
func NewRecorder(ctx context.Context, client kubernetes.Interface) (record.EventRecorder, func()) {
	// client-go's default spam filter lets 25 events an object through and then one every five
	// minutes; a workspace's pipeline has more steps than that over its generations.
	b := record.NewBroadcaster(record.WithContext(ctx), record.WithCorrelatorOptions(record.CorrelatorOptions{BurstSize: 1000, QPS: 1}))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return b.NewRecorder(runtime.NewScheme(), corev1.EventSource{Component: "kaitoflow-controller"}), b.Shutdown
}
