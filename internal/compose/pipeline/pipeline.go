// Package pipeline puts kaitoflow together: every function's Part by name and the Workspace
// controller, for `kaitoflow up`, `kaitoflow fn NAME`, `kaitoflow controller`, the benchmarks and
// the tests, and the bus's users, one per function. A function's own binary (cmd/<function>)
// imports its Part alone instead, so it does not link the others' drivers.
package pipeline

import (
	"context"
	"fmt"
	"strings"

	"k8s.io/client-go/kubernetes"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/publish"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly/provisionpart"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly/publishpart"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly/servepart"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly/tunepart"
	"github.com/kaitoflow/kaitoflow/internal/compose/controller"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/compose/sources"
	"github.com/kaitoflow/kaitoflow/internal/natsauth"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// Pipeline returns the functions `kaitoflow up` runs: every step and the status projector.
func Pipeline() []string {
	return []string{provision.Name, tune.Name, publish.Name, serve.Name, assembly.Status}
}

// Parts returns every function's Part.
func Parts() []assembly.Part {
	return []assembly.Part{provisionpart.Part(), tunepart.Part(), publishpart.Part(), servepart.Part(), assembly.StatusPart(),
		assembly.SignalsPart(), assembly.DeadLetterPart()}
}

// Names returns every function's name, for `kaitoflow fn`'s usage.
func Names() []string {
	var names []string
	for _, p := range Parts() {
		names = append(names, p.Name)
	}
	return names
}

// PartNamed returns the Part of the function called name.
func PartNamed(name string) (assembly.Part, error) {
	for _, p := range Parts() {
		if p.Name == name {
			return p, nil
		}
	}
	return assembly.Part{}, fmt.Errorf("unknown function %q: want one of %s", name, strings.Join(Names(), ", "))
}

// Build assembles cfg.Functions, by name, and the controller when cfg.Controller is set.
func Build(ctx context.Context, cfg assembly.Config) (*assembly.Assembly, error) {
	if cfg.ControllerWorkers == 0 {
		cfg.ControllerWorkers = 4
	}
	b := assembly.NewBuilder(cfg)
	for _, n := range cfg.Functions {
		p, err := PartNamed(n)
		if err != nil {
			return nil, err
		}
		if err := b.Add(ctx, p); err != nil {
			return nil, err
		}
	}
	if cfg.Controller {
		if err := addController(ctx, b); err != nil {
			return nil, fmt.Errorf("workspace controller: %w", err)
		}
	}
	return b.Out, nil
}

// addController adds the Workspace controller as a watch.
func addController(ctx context.Context, b *assembly.Builder) error {
	rc, err := b.RESTConfig(assembly.IdentityController)
	if err != nil {
		return err
	}
	// The controller runs on controller-runtime, which links the generated clientset anyway:
	// its event recorder writes through it.
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client for the controller: %w", err)
	}
	dyn, err := b.Dynamic(assembly.IdentityController)
	if err != nil {
		return err
	}
	store, err := b.Store(ctx)
	if err != nil {
		return err
	}
	b.Watch("workspace-controller", func(ctx context.Context, pub events.Publisher) error {
		recorder, stop := controller.NewRecorder(ctx, kube)
		defer stop()
		wc := &controller.Controller{Client: dyn, Store: store, Publisher: pub, Group: b.Config.CRDGroup, Log: b.Log, Recorder: recorder,
			Kinds:     b.Config.ControllerKinds,
			Submitter: &ingress.Submitter{Store: store, Publisher: pub, Policy: b.Config.Policy, Source: controller.Source}}
		return wc.Run(ctx, rc, controller.RunOptions{Workers: b.Config.ControllerWorkers, Election: b.Config.LeaderElection,
			MetricsAddr: b.Config.ControllerMetrics, HealthAddr: b.Config.ControllerHealth})
	})
	return nil
}

// Entrance is the NATS role of what takes requests from outside: the API, the Kubernetes
// controller, the Service Bus bridge and the upload webhook.
const Entrance = "entrance"

// NATSRoles are the bus's users (natsauth): the admin, the entrances, and each function, which may
// publish the pipeline's events but never a request, and write only its own buckets.
func NATSRoles() []natsauth.Role {
	// Requests: what a workspace is, that it goes, and which adapter serves it (rollback, promote).
	requests := []string{events.WorkspaceRequested, events.WorkspaceDeleted, events.AdapterSelected}
	fn := func(name string, writes, opens []string) natsauth.Role {
		return natsauth.Role{Name: name, Publish: []string{events.SubjectPrefix + ">"}, Deny: requests,
			Stream: runtime.StreamName, Writes: writes, Opens: opens}
	}
	statusBuckets := []string{status.Bucket, status.ConfigMapBucket}
	return []natsauth.Role{
		{Name: natsauth.Admin},
		{Name: Entrance, Publish: requests, Stream: runtime.StreamName, Writes: []string{status.ConfigMapBucket}, Opens: []string{status.Bucket}},
		fn(provision.Name, []string{provision.PendingBucket}, nil),
		fn(tune.Name, nil, statusBuckets),
		fn(publish.Name, nil, nil),
		fn(serve.Name, nil, nil),
		fn(assembly.Status, statusBuckets, nil),
		fn(sources.Name, nil, nil),
		fn(sources.DeadLetterName, nil, nil),
	}
}
