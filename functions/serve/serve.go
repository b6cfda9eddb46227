// Package serve turns kaitoflow.image.pushed (a tuned adapter), or kaitoflow.node.ready for an
// inference-only workspace, into a running chat endpoint and kaitoflow.inference.ready.
package serve

import (
	"context"
	"fmt"
	"log/slog"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
)

// Name is the function's name.
const Name = "serve"

// Types are the events the function consumes.
var Types = []string{events.ImagePushed, events.NodeReady, events.WorkspaceDeleted}

// Adapter is one LoRA adapter to load next to the base model.
type Adapter struct {
	Name     string
	Image    string
	Strength string
}

// Deployment is what to serve: a workspace generation's base model with its adapters.
type Deployment struct {
	Ref       events.Ref
	Service   string
	Workspace events.Workspace
	Nodes     []string
	Adapters  []Adapter
}

// Deployer runs inference services. Deploy is create-or-update and returns the endpoint URL once
// it answers.
type Deployer interface {
	Name() string
	Deploy(ctx context.Context, d Deployment) (url string, err error)
	Delete(ctx context.Context, ref events.Ref) error
}

// Function is the serve handler.
type Function struct {
	deployer Deployer
	log      *slog.Logger
}

// New returns the serve function over deployer.
func New(d Deployer, log *slog.Logger) *Function {
	if log == nil {
		log = slog.Default()
	}
	return &Function{deployer: d, log: log.With("function", Name, "deployer", d.Name())}
}

// ServiceName is the inference service's name: the workspace's, as Kaito names its Service, so
// the seed's `kubectl get svc workspace-tuning-phi-3` finds it.
func ServiceName(ref events.Ref) string { return ref.Name }

// Handle implements runtime.Handler.
func (f *Function) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	ref, err := events.RefOf(ev)
	if err != nil {
		return nil, events.Permanent(events.ReasonBadEvent, err)
	}
	d := Deployment{Ref: ref, Service: ServiceName(ref)}
	switch ev.Type() {
	case events.WorkspaceDeleted:
		if err := f.deployer.Delete(ctx, ref); err != nil {
			return nil, fmt.Errorf("delete inference service of %s: %w", ref, err)
		}
		return nil, nil
	case events.NodeReady:
		var in events.NodeReadyData
		if err := events.Data(ev, &in); err != nil {
			return nil, err
		}
		if in.Workspace.Tuning != nil || in.Workspace.Inference == nil {
			return nil, nil // a tuning workspace is served once its adapter image is pushed
		}
		d.Workspace, d.Nodes = in.Workspace, in.Nodes
		for _, a := range in.Workspace.Inference.Adapters {
			ad := Adapter{Name: a.Source.Name, Image: a.Source.Image}
			if a.Strength != nil {
				ad.Strength = *a.Strength
			}
			d.Adapters = append(d.Adapters, ad)
		}
	case events.ImagePushed:
		var in events.ImagePushedData
		if err := events.Data(ev, &in); err != nil {
			return nil, err
		}
		d.Workspace, d.Nodes = in.Workspace, in.Nodes
		d.Adapters = []Adapter{{Name: ref.Name, Image: in.Reference, Strength: "1.0"}}
	default:
		return nil, nil
	}
	url, err := f.deployer.Deploy(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("deploy %s: %w", d.Service, err)
	}
	names := make([]string, len(d.Adapters))
	for i, a := range d.Adapters {
		names[i] = a.Name
	}
	out, err := events.New("kaitoflow/"+Name, events.InferenceReady, events.InferenceReady, ref, events.InferenceReadyData{
		Ref: ref, Service: d.Service, URL: url, Adapters: names, Driver: f.deployer.Name(),
	}, &ev)
	if err != nil {
		return nil, err
	}
	return []cloudevents.Event{out}, nil
}
