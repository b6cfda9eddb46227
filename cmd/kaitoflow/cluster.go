package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/kubeclient"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/compose/controller"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// workspaceSource is where get, delete, watch and chat find workspaces: kaitoflow's API (`up`, or
// a port-forward to it), or the Workspace resources of the cluster kaitoflow is deployed in.
type workspaceSource interface {
	List(ctx context.Context, all bool) ([]status.Workspace, error)
	Get(ctx context.Context, name string) (*status.Workspace, error)
	Delete(ctx context.Context, name string) error
	Watch(ctx context.Context, name string, fn func(status.Workspace) bool) error
	// WatchList calls fn with each workspace of the namespace (every namespace with all), the
	// current ones first, each time one changes, until fn returns false or ctx ends.
	WatchList(ctx context.Context, all bool, fn func(status.Workspace) bool) error
	Rollback(ctx context.Context, name string, generation int64) (*status.Workspace, error)
	Promote(ctx context.Context, name string, generation int64, checkpoint int) (*status.Workspace, error)
}

// clusterFlags are kubectl's: with either, a command reads the cluster's Workspace resources
// instead of kaitoflow's API.
type clusterFlags struct{ kubeconfig, context string }

// registerTarget registers the flags for a command that always acts on a cluster: what it does
// there completes the help ("install into" the cluster in this kubeconfig).
func (c *clusterFlags) registerTarget(fs *pflag.FlagSet, what string) {
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", what+" the cluster in this kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
	fs.StringVar(&c.context, "context", "", "the kubeconfig context to use")
}

func (c *clusterFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "read the Workspace resources of the cluster in this kubeconfig instead of kaitoflow's API")
	fs.StringVar(&c.context, "context", "", "the kubeconfig context to use (implies the cluster)")
}

// loader reads the kubeconfig the flags name (kubectl's loading rules otherwise), at the context
// they name.
func (c clusterFlags) loader() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: c.context})
}

// workspaces is the source the flags choose.
func (g *globals) workspaces(c clusterFlags) (workspaceSource, error) {
	if c.kubeconfig == "" && c.context == "" {
		return g.client(), nil
	}
	loader := c.loader()
	cfg, err := loader.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	ns := g.namespace
	if ns == "" {
		if ns, _, err = loader.Namespace(); err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	kube, err := kubeclient.New(cfg)
	if err != nil {
		return nil, err
	}
	return &clusterWorkspaces{dyn: dyn, kube: kube, namespace: ns, poll: time.Second}, nil
}

// clusterWorkspaces reads Workspace resources and the Events the controller records on them.
type clusterWorkspaces struct {
	dyn       dynamic.Interface
	kube      *kubeclient.Client
	namespace string
	poll      time.Duration
}

func (c *clusterWorkspaces) resource(all bool) dynamic.ResourceInterface {
	r := c.dyn.Resource(controller.GVR(""))
	if all {
		return r.Namespace(metav1.NamespaceAll)
	}
	return r.Namespace(c.namespace)
}

func (c *clusterWorkspaces) List(ctx context.Context, all bool) ([]status.Workspace, error) {
	l, err := c.resource(all).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list workspaces: %w", err)
	}
	var out []status.Workspace
	for i := range l.Items {
		w, err := fromResource(&l.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, *w)
	}
	return out, nil
}

func (c *clusterWorkspaces) Get(ctx context.Context, name string) (*status.Workspace, error) {
	u, err := c.resource(false).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("workspace %s/%s not found", c.namespace, name)
	}
	if err != nil {
		return nil, fmt.Errorf("get workspace %s/%s: %w", c.namespace, name, err)
	}
	w, err := fromResource(u)
	if err != nil {
		return nil, err
	}
	// The timeline: the Events the controller recorded for each pipeline event.
	evs, err := c.kube.Events(c.namespace).List(ctx, metav1.ListOptions{FieldSelector: fields.Set{
		"involvedObject.name": name, "involvedObject.uid": string(u.GetUID())}.String()})
	if err != nil {
		return nil, fmt.Errorf("events of workspace %s/%s: %w", c.namespace, name, err)
	}
	for _, e := range evs.Items {
		w.Events = append(w.Events, status.EventRecord{Type: e.Reason, ID: string(e.UID), Source: e.Source.Component, Time: eventTime(e), Note: e.Message})
	}
	slices.SortStableFunc(w.Events, func(a, b status.EventRecord) int { return a.Time.Compare(b.Time) })
	return w, nil
}

// Rollback annotates the resource with kaitoflow.io/rollback: the controller asks serve to serve
// that generation's adapter (0: the one before the serving one) and records what it did as an Event.
func (c *clusterWorkspaces) Rollback(ctx context.Context, name string, generation int64) (*status.Workspace, error) {
	return c.annotateRollback(ctx, name, strconv.FormatInt(generation, 10))
}

// annotateRollback sets kaitoflow.io/rollback to what (kaito.ParseRollback's forms).
func (c *clusterWorkspaces) annotateRollback(ctx context.Context, name, what string) (*status.Workspace, error) {
	// The time makes each request a new value, so asking for the same generation again acts again.
	value := fmt.Sprintf("%s@%d", what, time.Now().Unix())
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{kaito.AnnotationRollback: value}}})
	if err != nil {
		return nil, err
	}
	_, err = c.resource(false).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "kaitoflow-cli"})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("workspace %s/%s not found", c.namespace, name)
	}
	if err != nil {
		return nil, fmt.Errorf("annotate workspace %s/%s: %w", c.namespace, name, err)
	}
	return c.Get(ctx, name)
}

// Promote is Rollback to the generation given (or its checkpoint at a step): in a cluster the
// controller serves a held adapter through the same annotation.
func (c *clusterWorkspaces) Promote(ctx context.Context, name string, generation int64, checkpoint int) (*status.Workspace, error) {
	what := strconv.FormatInt(generation, 10)
	if checkpoint > 0 {
		what += ":" + strconv.Itoa(checkpoint)
	}
	return c.annotateRollback(ctx, name, what)
}

func (c *clusterWorkspaces) Delete(ctx context.Context, name string) error {
	err := c.resource(false).Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("workspace %s/%s not found", c.namespace, name)
	}
	return err
}

// Watch polls the resource and its Events until fn returns false or ctx ends.
func (c *clusterWorkspaces) Watch(ctx context.Context, name string, fn func(status.Workspace) bool) error {
	return wait.PollUntilContextCancel(ctx, c.poll, true, func(ctx context.Context) (bool, error) {
		w, err := c.Get(ctx, name)
		if err != nil {
			return false, err
		}
		return !fn(*w), nil
	})
}

// WatchList follows the Workspace resources with the API server's watch (listed first, listed
// again when the watch expires), as kubectl get -w does.
func (c *clusterWorkspaces) WatchList(ctx context.Context, all bool, fn func(status.Workspace) bool) error {
	r := c.resource(all)
	lw := &cache.ListWatch{
		ListWithContextFunc:  func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return r.List(ctx, o) },
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return r.Watch(ctx, o) },
	}
	_, err := watchtools.UntilWithSync(ctx, lw, &unstructured.Unstructured{}, nil, func(e watch.Event) (bool, error) {
		u, ok := e.Object.(*unstructured.Unstructured)
		if !ok || e.Type == watch.Deleted {
			return false, nil
		}
		w, err := fromResource(u)
		if err != nil {
			return false, err
		}
		return !fn(*w), nil
	})
	if wait.Interrupted(err) || ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// fromResource is a Workspace resource as the CLI prints workspaces: the spec it was given and
// the status the controller wrote.
func fromResource(u *unstructured.Unstructured) (*status.Workspace, error) {
	b, err := json.Marshal(u.Object)
	if err != nil {
		return nil, err
	}
	var ws kaito.Workspace
	if err := json.Unmarshal(b, &ws); err != nil {
		return nil, fmt.Errorf("workspace %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	st := ws.Status
	ws.Status = kaito.WorkspaceStatus{}
	w := &status.Workspace{Namespace: u.GetNamespace(), Name: u.GetName(), Generation: st.ObservedGeneration,
		InstanceType: ws.InstanceType(), Preset: ws.PresetName(), Phase: status.Phase(st.Phase), Conditions: st.Conditions,
		Nodes: st.WorkerNodes, Endpoint: st.Endpoint, Image: st.Image, Adapters: st.Adapters, Manifest: &ws,
		ServingGeneration: st.ServingGeneration, Replicas: st.Replicas, Attempts: st.Attempts, GPU: st.GPU,
		History: st.History, Live: st.LiveGeneration, Held: st.Held,
		Created: u.GetCreationTimestamp().Time, Updated: time.Now()}
	if ws.Tuning != nil {
		w.Method = ws.Tuning.Method
	}
	if st.Failure != "" {
		reason, msg, _ := strings.Cut(st.Failure, ": ")
		w.Failure = &status.Failure{Reason: reason, Message: msg}
	}
	return w, nil
}

func eventTime(e corev1.Event) time.Time {
	switch {
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	}
	return e.FirstTimestamp.Time
}
