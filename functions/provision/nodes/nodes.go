// Package nodes reads GPU readiness from the Kubernetes API: which nodes of a workspace are Ready
// with their GPUs allocatable, and — as a watch — when that changes.
package nodes

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/kubewatch"
)

// GPUResource is the extended resource the NVIDIA device plugin advertises.
const GPUResource corev1.ResourceName = "nvidia.com/gpu"

// gpuProductLabel is set by NVIDIA's GPU feature discovery.
const gpuProductLabel = "nvidia.com/gpu.product"

// Checker finds Ready GPU nodes: it is the providers' provision.Nodes.
type Checker struct {
	// Client is internal/kubeclient's, as provision's identity.
	Client *kubeclient.Client
}

// Check lists the nodes w selects. It reports how many exist at all (matching) besides the
// ready ones, so a provider can tell "coming" from "not there".
func (c *Checker) Check(ctx context.Context, w provision.NodeWant) (provision.Capacity, int, error) {
	list, err := c.Client.Nodes().List(ctx, metav1.ListOptions{LabelSelector: w.Selector.String()})
	if err != nil {
		return provision.Capacity{}, 0, fmt.Errorf("list nodes %s: %w", w.Selector, err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	var ready []events.Node
	var notes []string
	matching := 0
	for _, n := range list.Items {
		if len(w.Names) > 0 && !slices.Contains(w.Names, n.Name) {
			continue
		}
		matching++
		ok, why := usable(&n, w.GPUs)
		if !ok {
			notes = append(notes, n.Name+": "+why)
			continue
		}
		gpu := n.Labels[gpuProductLabel]
		if gpu == "" {
			gpu = w.GPU
		}
		q := n.Status.Allocatable[GPUResource]
		ready = append(ready, events.Node{Name: n.Name, GPU: gpu, GPUs: q.Value(), GPUMemoryGiB: w.GPUMemoryGiB})
	}
	if len(ready) > w.Count {
		// More nodes than needed (your own, or a pool's): those whose GPUs no running pod holds
		// come first. A node that serves the workspace's last generation is busy, and a tuning
		// Job pinned to it would wait for the GPU until serving scales to zero.
		free, err := c.freeGPUs(ctx, ready)
		if err != nil {
			return provision.Capacity{}, 0, err
		}
		slices.SortStableFunc(ready, func(a, b events.Node) int {
			return cmp.Compare(boolInt(free[b.Name] >= w.GPUs), boolInt(free[a.Name] >= w.GPUs))
		})
	}
	c2 := provision.Capacity{Nodes: ready, Ready: len(ready) >= w.Count}
	if c2.Ready {
		c2.Nodes = ready[:w.Count]
	} else {
		c2.Waiting = fmt.Sprintf("%d of %d nodes (%s) Ready with %d %s", len(ready), w.Count, w.Selector, w.GPUs, GPUResource)
		if len(notes) > 0 {
			c2.Waiting += "; " + strings.Join(notes, "; ")
		}
	}
	return c2, matching, nil
}

// freeGPUs is each node's allocatable nvidia.com/gpu less what its running and pending pods
// request.
func (c *Checker) freeGPUs(ctx context.Context, ready []events.Node) (map[string]int64, error) {
	free := map[string]int64{}
	for _, n := range ready {
		pods, err := c.Client.Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.Name})
		if err != nil {
			return nil, fmt.Errorf("pods on node %s: %w", n.Name, err)
		}
		used := int64(0)
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			for _, ctr := range p.Spec.Containers {
				q := ctr.Resources.Requests[GPUResource]
				used += q.Value()
			}
		}
		free[n.Name] = n.GPUs - used
	}
	return free, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// usable: the node is Ready, schedulable and has the GPUs allocatable.
func usable(n *corev1.Node, gpus int64) (bool, string) {
	if n.Spec.Unschedulable {
		return false, "cordoned"
	}
	ready := false
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	if !ready {
		return false, "not Ready"
	}
	q, ok := n.Status.Allocatable[GPUResource]
	if !ok || q.Value() < gpus {
		return false, fmt.Sprintf("%s %d of %d allocatable (is the NVIDIA device plugin running?)", GPUResource, q.Value(), gpus)
	}
	return true, ""
}

// Watch publishes kaitoflow.node.changed whenever a node labelled for a workspace appears or its
// readiness or GPUs change — not on every status heartbeat. It runs until ctx ends: the embedded
// mode's ApiServerSource on Nodes.
func Watch(ctx context.Context, client *kubeclient.Client, pub events.Publisher, log *slog.Logger) error {
	informer := kubewatch.Informer(client.Nodes(), &corev1.Node{}, provision.LabelWorkspace)
	return kubewatch.Run(ctx, pub, log, kubewatch.Signal{Type: events.NodeChanged, Kind: "node", Informer: informer,
		Changed: func(old, cur metav1.Object) bool {
			o, ok1 := old.(*corev1.Node)
			n, ok2 := cur.(*corev1.Node)
			return ok1 && ok2 && state(o) != state(n)
		}})
}

// state is what readiness depends on.
func state(n *corev1.Node) string {
	ok, why := usable(n, 1)
	q := n.Status.Allocatable[GPUResource]
	return fmt.Sprintf("%v|%s|%d|%v", ok, why, q.Value(), n.Spec.Unschedulable)
}
