// Package assembly builds kaitoflow's functions from one configuration value: the drivers
// (sim, aks, karpenter, byo; sim or Kubernetes Jobs; sim or Knative), the cluster each function
// talks to, images, registry, preflight, ConfigMaps, credentials, the NATS handles and the
// publisher. `kaitoflow up`, `kaitoflow fn`, `kaitoflow controller`, the benchmarks, the fault
// suite and the tests all assemble the pipeline here, so a function is wired the same way
// wherever it runs; the callers only choose a transport.
package assembly

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	provisionsim "github.com/kaitoflow/kaitoflow/functions/provision/sim"

	tunelocal "github.com/kaitoflow/kaitoflow/functions/tune/local"
	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/provision/aks"
	"github.com/kaitoflow/kaitoflow/functions/provision/byo"
	"github.com/kaitoflow/kaitoflow/functions/provision/karpenter"
	"github.com/kaitoflow/kaitoflow/functions/provision/nodes"
	"github.com/kaitoflow/kaitoflow/functions/publish"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/serve/knative"
	servelocal "github.com/kaitoflow/kaitoflow/functions/serve/local"
	servesim "github.com/kaitoflow/kaitoflow/functions/serve/sim"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/functions/tune/jobs"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/compose/controller"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/compose/sources"
	"github.com/kaitoflow/kaitoflow/internal/dataset"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/internal/natsauth"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Status is the status projector's function name; the pipeline's others are their packages' Name.
const Status = "status"

// Identities: the cluster identity each part's clients use (a ServiceAccount kaitoflow-<identity>
// in deploy/knative/rbac.yaml). Config.Cluster is asked for one of these.
const (
	IdentityProvision  = provision.Name
	IdentityTune       = tune.Name
	IdentityPublish    = publish.Name
	IdentityServe      = serve.Name
	IdentitySources    = "sources"
	IdentityController = "controller"
)

// SimInferencePath is where Assembly.SimInference is mounted under Sim.BaseURL's host.
const SimInferencePath = "/sim/inference"

// Pipeline returns the functions `kaitoflow up` runs: every step and the status projector.
func Pipeline() []string {
	return []string{provision.Name, tune.Name, publish.Name, serve.Name, Status}
}

// Names returns every function the assembly can build, for `kaitoflow fn`'s usage.
func Names() []string {
	return append(Pipeline(), sources.Name, sources.DeadLetterName)
}

// Drivers chooses what each step drives. The zero value is all sim.
type Drivers struct {
	// Provider supplies GPU capacity: sim, aks (agent pools), karpenter (NodeClaims), byo.
	Provider string
	// Trainer runs tuning: sim, local (the real Python trainer as a process on this machine), or
	// job (a Kubernetes Job).
	Trainer string
	// Local is the local trainer's Python trainer: its interpreter, the trainer's directory, local
	// model directories and whether it trains on the CPU.
	Local tunelocal.Python
	// VLLM is the local deployer's model server: vLLM as a process per replica.
	VLLM servelocal.VLLM
	// Deployer runs inference: sim, local (vLLM processes on this machine behind chat-proxy), or
	// knative (a scale-to-zero Knative Service).
	Deployer string

	// AKS is the aks provider's cluster.
	AKS aks.Config
	// NodeClass is the karpenter provider's node class, group/kind/name.
	NodeClass string
	// TrainerImage and WrapperImage are the job trainer's images, both required by it.
	TrainerImage, WrapperImage string
	// RuntimeImage and ProxyImage are the knative deployer's images: the model server (empty
	// means knative's default, vLLM) and kaitoflow's own, which it requires.
	RuntimeImage, ProxyImage string
	// InferencePool is the knative deployer's endpoint picker, NAME:PORT[:FailOpen|FailClose]
	// (knative.ParseInferencePool): each Service is published as a Gateway API Inference Extension
	// InferencePool; empty: none is.
	InferencePool string
	// WeightsCache is the PersistentVolumeClaim the tuning Jobs and the inference pods keep
	// downloaded base models on (presets.WeightsCache); empty means each pod's own emptyDir.
	WeightsCache string
	// ReplicaAddress is where the knative deployer asks an inference pod's chat-proxy what it
	// serves; nil: the pod's IP and chat-proxy's admin port. Set only where pods have no network
	// of their own (the box's kwok pods, whose chat-proxy runs in the test as a named stand-in).
	ReplicaAddress func(corev1.Pod) string
}

// Sim configures the simulated drivers.
type Sim struct {
	// Delay is how long each simulated step takes.
	Delay time.Duration
	// Dir is where the sim trainer keeps its adapters.
	Dir string
	// Parallel bounds the sim trainer's concurrent runs (its default when zero).
	Parallel int
	// BaseURL is the scheme and host the caller serves Assembly.SimInference on; the simulated
	// endpoints are BaseURL + SimInferencePath.
	BaseURL string
	// Token is the bearer token the caller requires at BaseURL; the sim's replicas send it to
	// their runtimes there.
	Token string
}

// Config is everything the functions are built from.
type Config struct {
	// Functions to build, by name (Pipeline(), or one for `kaitoflow fn`).
	Functions []string
	// Controller adds the Workspace controller (custom resources in, status out) as a watch.
	Controller bool
	// CRDGroup is the Workspace CRD's group; kaito.sh when empty.
	CRDGroup string
	// ControllerWorkers is how many Workspaces the controller reconciles at once; 4 when zero.
	ControllerWorkers int
	// LeaderElection, when set, makes the controller reconcile only while this process holds
	// the Lease (its Namespace and Identity): replicas of `kaitoflow controller` elect one.
	LeaderElection *controller.Election
	// ControllerMetrics and ControllerHealth are where the controller's manager serves its
	// metrics and health probes; empty serves neither.
	ControllerMetrics, ControllerHealth string
	// ControllerKinds are the kinds the controller reconciles (controller.Controller.Kinds): the
	// Workspace alone when empty.
	ControllerKinds []string

	Logger *slog.Logger
	// JetStream holds provision's capacity records and the status store: provision, status and
	// the controller need it.
	JetStream jetstream.JetStream
	// Store is the status store; opened on JetStream when nil and needed.
	Store *status.Store
	// Publisher is what the sim trainer announces its runs with (watches and the controller get
	// theirs in Watch.Run; the runtime publishes a handler's outputs with its own).
	Publisher events.Publisher

	Drivers Drivers
	Sim     Sim
	// Cluster returns the REST config for one identity's clients (see the Identity constants):
	// in a deployment every identity is the process's own ServiceAccount; a test impersonates
	// each. Nil means there is no cluster: only the sim drivers can run.
	Cluster func(identity string) (*rest.Config, error)
	// AzureCredential signs ARM and ACR requests; nil makes a DefaultAzureCredential when aks or
	// an ACR push needs one.
	AzureCredential azcore.TokenCredential
	// ARMClientOptions configure the aks provider's ARM client; nil in production. A test routes
	// it to a stand-in for ARM with a fake server transport.
	ARMClientOptions *arm.ClientOptions
	// PushKeychain finds the credentials to push a workspace's adapter with. Nil: anonymous to
	// a stand-in Registry; to the workspace's own registry, the cluster's imagePushSecret and
	// Entra ID for ACR when there is a cluster, the local Docker login when there is none.
	PushKeychain publish.Keychain
	// ConfigMaps reads the ConfigMaps tuning.config and inference.config name (the embedded
	// mode's submitted ones). One it does not hold is read from the cluster, when there is one;
	// with neither, a workspace naming a ConfigMap is refused.
	ConfigMaps presets.ConfigSource
	// Secrets reads presetOptions.modelAccessSecret for the planner where there is no cluster
	// (the embedded mode's stand-in); with a cluster, its Secrets are read.
	Secrets presets.SecretSource

	// Policy decides which dataset hosts are acceptable; the planner's requests to the Hugging
	// Face Hub go through it too.
	Policy netguard.AddressPolicy
	// Replicas is the replica count of the JetStream buckets the functions create (the stream is
	// created by whoever starts first, with the same setting): 1 for one server, 3 on a cluster.
	// Existing ones are never weakened (runtime.Storage).
	Replicas int
	// HubURL is the Hugging Face Hub (or a mirror) the planner reads models that are not in the
	// catalog from; empty means https://huggingface.co.
	HubURL string
	// Preflight checks datasets before capacity is bought: enforce, warn, or off (the default).
	Preflight string
	// CapacityDeadline is how long capacity may take; provision's default when zero.
	CapacityDeadline time.Duration
	// TuningAttempts bounds the attempts of a tuning run; tune's default when zero.
	TuningAttempts int
	// Registry, when set, receives every push instead of the registry tuning.output.image names:
	// the embedded registry that stands in for ACR, or `fn publish --registry-rewrite`.
	Registry string
	// TickEvery is the signals function's PingSource period.
	TickEvery time.Duration
}

// Watch is a background loop a driver needs besides its handler: a Kubernetes watch that turns
// object changes into signals, or the Workspace controller.
type Watch struct {
	Name string
	Run  func(ctx context.Context, pub events.Publisher) error
}

// Assembly is what Build returns.
type Assembly struct {
	Functions []runtime.Function
	// Watches run alongside the functions in the embedded mode and with the JetStream transport
	// (several replicas watching store each change once: the events' ids derive from the
	// object's state); under Knative, ApiServerSources deliver the same changes instead.
	Watches []Watch
	// SimInference serves the sim deployer's endpoints, nil unless the sim deployer is built:
	// mount it at SimInferencePath.
	SimInference http.Handler
	// Store is the status store, when one was needed.
	Store *status.Store
	// Close stops what the drivers run on this machine (the local deployer's model servers);
	// call it when the functions have stopped.
	Close func()
	// Plan is provision's fit check (nil unless provision is built): the entrances run it at
	// submit, so a misspelt preset or a model that cannot fit is refused before it is accepted.
	Plan func(ctx context.Context, ws *kaito.Workspace) (*events.Plan, error)
	// Logs reads the trainer's output of a workspace's runs (nil unless tune is built).
	Logs tune.Logs
}

// Build assembles cfg.Functions.
func Build(ctx context.Context, cfg Config) (*Assembly, error) {
	if cfg.ControllerWorkers == 0 {
		cfg.ControllerWorkers = 4
	}
	b := &builder{cfg: cfg, log: logctx.Or(cfg.Logger), a: &Assembly{Store: cfg.Store, Close: func() {}}, kube: map[string]*clients{}}
	for _, n := range cfg.Functions {
		fn, err := b.function(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("function %s: %w", n, err)
		}
		b.a.Functions = append(b.a.Functions, fn)
	}
	if cfg.Controller {
		if err := b.controller(ctx); err != nil {
			return nil, fmt.Errorf("workspace controller: %w", err)
		}
	}
	return b.a, nil
}

type builder struct {
	cfg  Config
	log  *slog.Logger
	a    *Assembly
	kube map[string]*clients
	cred azcore.TokenCredential
}

// clients are one identity's.
type clients struct {
	kube kubernetes.Interface
	dyn  dynamic.Interface
}

func (b *builder) clients(identity string) (*clients, error) {
	if c, ok := b.kube[identity]; ok {
		return c, nil
	}
	if b.cfg.Cluster == nil {
		return nil, fmt.Errorf("no cluster configured (a kubeconfig or in-cluster config is needed)")
	}
	rc, err := b.cfg.Cluster(identity)
	if err != nil {
		return nil, fmt.Errorf("cluster config for %s: %w", identity, err)
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	c := &clients{kube: kube, dyn: dyn}
	b.kube[identity] = c
	return c, nil
}

func (b *builder) credential() (azcore.TokenCredential, error) {
	if b.cfg.AzureCredential != nil {
		return b.cfg.AzureCredential, nil
	}
	if b.cred == nil {
		// Workload identity in a pod, a managed identity on a VM, environment variables, or the
		// Azure CLI's login on a workstation, in that order.
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("azure credential: %w", err)
		}
		b.cred = cred
	}
	return b.cred, nil
}

// configMaps is the ConfigMap source identity's functions read tuning.config and
// inference.config from: Config.ConfigMaps first, then the cluster.
func (b *builder) configMaps(identity string) (presets.ConfigSource, error) {
	if b.cfg.Cluster == nil {
		return b.cfg.ConfigMaps, nil
	}
	c, err := b.clients(identity)
	if err != nil {
		return nil, err
	}
	cluster := ClusterConfigMaps(c.kube)
	first := b.cfg.ConfigMaps
	if first == nil {
		return cluster, nil
	}
	return func(ctx context.Context, namespace, name string) (map[string]string, error) {
		data, err := first(ctx, namespace, name)
		if errors.Is(err, presets.ErrConfigMapNotFound) {
			return cluster(ctx, namespace, name)
		}
		return data, err
	}, nil
}

// storage is how the functions create the JetStream buckets they need.
func (b *builder) storage() runtime.Storage {
	return runtime.Storage{Replicas: b.cfg.Replicas, Log: b.log}
}

func (b *builder) store(ctx context.Context) (*status.Store, error) {
	if b.a.Store != nil {
		return b.a.Store, nil
	}
	if b.cfg.JetStream == nil {
		return nil, fmt.Errorf("the status store needs NATS JetStream")
	}
	s, err := status.Open(ctx, b.cfg.JetStream, b.storage())
	if err != nil {
		return nil, err
	}
	b.a.Store = s
	return s, nil
}

func (b *builder) watch(name string, run func(ctx context.Context, pub events.Publisher) error) {
	b.a.Watches = append(b.a.Watches, Watch{Name: name, Run: run})
}

func (b *builder) function(ctx context.Context, n string) (runtime.Function, error) {
	switch n {
	case provision.Name:
		h, err := b.provision(ctx)
		return runtime.Function{Name: n, Types: provision.Types, Handler: h}, err
	case tune.Name:
		h, err := b.tune(ctx)
		return runtime.Function{Name: n, Types: tune.Types, Handler: h}, err
	case publish.Name:
		h, err := b.publish()
		return runtime.Function{Name: n, Types: publish.Types, Handler: h}, err
	case serve.Name:
		h, err := b.serve()
		return runtime.Function{Name: n, Types: serve.Types, Handler: h}, err
	case Status:
		store, err := b.store(ctx)
		if err != nil {
			return runtime.Function{}, err
		}
		return runtime.Function{Name: n, Types: events.Types, Handler: &status.Projector{Store: store}}, nil
	case sources.Name:
		// Knative's ApiServerSources and PingSource in, kaitoflow's signals out.
		return runtime.Function{Name: n, Types: sources.Types, Handler: &sources.Signals{TickEvery: b.cfg.TickEvery}, Observer: true}, nil
	case sources.DeadLetterName:
		return runtime.Function{Name: n, Types: sources.DeadLetterTypes, Handler: &sources.DeadLetters{Log: b.log}, Observer: true}, nil
	}
	return runtime.Function{}, fmt.Errorf("unknown function: want one of %s", strings.Join(Names(), ", "))
}

func (b *builder) provision(ctx context.Context) (runtime.Handler, error) {
	if b.cfg.JetStream == nil {
		return nil, fmt.Errorf("provision keeps its capacity records in NATS JetStream: none configured")
	}
	planner, err := b.planner(IdentityProvision)
	if err != nil {
		return nil, err
	}
	b.a.Plan = planner.Plan
	pending, err := provision.OpenKVPending(ctx, b.cfg.JetStream, b.storage())
	if err != nil {
		return nil, err
	}
	prov, err := b.provider()
	if err != nil {
		return nil, err
	}
	preflight, warnOnly, err := Preflight(b.cfg.Preflight, b.cfg.Policy)
	if err != nil {
		return nil, err
	}
	return provision.New(prov, planner, pending, provision.Options{Policy: b.cfg.Policy, Deadline: b.cfg.CapacityDeadline, Log: b.log,
		Preflight: preflight, PreflightWarnOnly: warnOnly}), nil
}

// planner is the fit check, reading ConfigMaps and Secrets as identity: provision's, and tune's
// for the re-plan after a run ran out of GPU memory.
func (b *builder) planner(identity string) (*presets.Planner, error) {
	catalog, err := presets.Default()
	if err != nil {
		return nil, fmt.Errorf("preset catalog: %w", err)
	}
	configs, err := b.configMaps(identity)
	if err != nil {
		return nil, err
	}
	planner := &presets.Planner{Catalog: catalog, Configs: configs, Secrets: b.cfg.Secrets,
		Hub: &presets.Hub{BaseURL: b.cfg.HubURL, Client: netguard.Client(b.cfg.Policy, 30*time.Second)}}
	if b.cfg.Cluster != nil && b.cfg.Secrets == nil {
		c, err := b.clients(identity)
		if err != nil {
			return nil, err
		}
		planner.Secrets = ClusterSecrets(c.kube)
	}
	if a := b.cfg.Drivers.AKS; b.cfg.Drivers.Provider == "aks" && a.Location != "" {
		// Agent pools are bought in the cluster's region: its vCPU quota is read first.
		cred, err := b.credential()
		if err != nil {
			return nil, err
		}
		if planner.Quota, err = aks.NewQuota(a.SubscriptionID, a.Location, a.Spot, cred, b.cfg.ARMClientOptions); err != nil {
			return nil, err
		}
	}
	return planner, nil
}

// provider is the capacity driver and, for the real ones, the Node watch that turns node changes
// into kaitoflow.node.changed.
func (b *builder) provider() (provision.Provider, error) {
	d := b.cfg.Drivers
	if d.Provider == "" || d.Provider == "sim" {
		return &provisionsim.Provider{Delay: b.cfg.Sim.Delay, Log: b.log}, nil
	}
	if !slices.Contains([]string{"aks", "karpenter", "byo"}, d.Provider) {
		return nil, fmt.Errorf("provider %q: want sim, aks, karpenter or byo", d.Provider)
	}
	c, err := b.clients(IdentityProvision)
	if err != nil {
		return nil, fmt.Errorf("provider %s: %w", d.Provider, err)
	}
	if err := b.nodeWatch(); err != nil {
		return nil, err
	}
	checker := &nodes.Checker{Client: c.kube}
	switch d.Provider {
	case "byo":
		return &byo.Provider{Nodes: checker, Log: b.log}, nil
	case "karpenter":
		parts := strings.Split(d.NodeClass, "/")
		if len(parts) != 3 {
			return nil, fmt.Errorf("karpenter node class %q: want group/kind/name", d.NodeClass)
		}
		return &karpenter.Provider{Client: c.dyn, Nodes: checker, NodeClass: karpenter.NodeClassRef{Group: parts[0], Kind: parts[1], Name: parts[2]},
			Log: b.log}, nil
	}
	cred, err := b.credential()
	if err != nil {
		return nil, err
	}
	return aks.New(d.AKS, cred, b.cfg.ARMClientOptions, checker, b.log)
}

func (b *builder) nodeWatch() error {
	c, err := b.clients(IdentitySources)
	if err != nil {
		return err
	}
	b.watch("nodes", func(ctx context.Context, pub events.Publisher) error { return nodes.Watch(ctx, c.kube, pub, b.log) })
	return nil
}

func (b *builder) tune(ctx context.Context) (runtime.Handler, error) {
	d := b.cfg.Drivers
	planner, err := b.planner(IdentityTune)
	if err != nil {
		return nil, err
	}
	opts := tune.Options{Replanner: planner, MaxAttempts: b.cfg.TuningAttempts, Log: b.log}
	if b.cfg.JetStream != nil {
		// A run scores the adapter serving beside its own: the status records say which it is.
		store, err := b.store(ctx)
		if err != nil {
			return nil, err
		}
		opts.Serving = store
	}
	switch d.Trainer {
	case "", "sim":
		sim := &tunesim.Trainer{Dir: b.cfg.Sim.Dir, Delay: b.cfg.Sim.Delay, Publisher: b.cfg.Publisher, Log: b.log, Policy: b.cfg.Policy,
			Parallel: b.cfg.Sim.Parallel}
		if b.cfg.Registry != "" {
			sim.Resolve = func(image string) (name.Reference, error) { return adapter.Rewrite(b.cfg.Registry, image) }
		}
		b.a.Logs = sim.Logs
		return tune.New(sim, opts), nil
	case "local":
		if d.Local.Interpreter == "" || d.Local.TrainerDir == "" {
			return nil, errors.New("trainer local: the Python trainer's interpreter (--python, an environment from hack/ml-env.sh) and its " +
				"directory (--trainer-dir, presets/trainer) are required")
		}
		local := &tunelocal.Trainer{Dir: filepath.Join(b.cfg.Sim.Dir, "local"), Publisher: b.cfg.Publisher, Log: b.log, Policy: b.cfg.Policy,
			Parallel: 1, Process: d.Local.Process}
		if b.cfg.Registry != "" {
			local.Resolve = func(image string) (name.Reference, error) { return adapter.Rewrite(b.cfg.Registry, image) }
		}
		b.a.Logs = local.Logs
		return tune.New(local, opts), nil
	case "job":
		c, err := b.clients(IdentityTune)
		if err != nil {
			return nil, fmt.Errorf("trainer job: %w", err)
		}
		if d.TrainerImage == "" || d.WrapperImage == "" {
			return nil, errors.New("trainer job: the trainer image (--trainer-image, built from presets/trainer) and kaitoflow's own image " +
				"(--wrapper-image) are required; hack/release.sh builds both")
		}
		o := jobs.DefaultOptions()
		o.TrainerImage, o.WrapperImage, o.WeightsCache, o.AllowHosts = d.TrainerImage, d.WrapperImage, d.WeightsCache, b.cfg.Policy.Allow
		w, err := b.clients(IdentitySources)
		if err != nil {
			return nil, err
		}
		b.watch("jobs", func(ctx context.Context, pub events.Publisher) error { return jobs.Watch(ctx, w.kube, pub, b.log) })
		jt := &jobs.Trainer{Client: c.kube, Options: o, Log: b.log}
		b.a.Logs = jt.Logs
		return tune.New(jt, opts), nil
	}
	return nil, fmt.Errorf("trainer %q: want sim or job", d.Trainer)
}

func (b *builder) publish() (runtime.Handler, error) {
	var resolve publish.Resolver
	if b.cfg.Registry != "" {
		resolve = publish.RewriteRegistry(b.cfg.Registry)
	}
	// The registry a workspace names is reached through the address policy; a rewrite points at
	// the operator's own stand-in (the embedded registry), which is not the workspace's choice.
	pusher := publish.RemotePusher{Options: []remote.Option{remote.WithTransport(netguard.Transport(b.cfg.Policy))}}
	if b.cfg.Registry != "" {
		pusher = publish.RemotePusher{}
	}
	f := publish.New(pusher, resolve, b.log)
	switch {
	case b.cfg.PushKeychain != nil:
		return f.WithKeychain(b.cfg.PushKeychain), nil
	case b.cfg.Registry != "":
		// A stand-in registry (the embedded one, a rewrite) takes anonymous pushes.
		return f, nil
	case b.cfg.Cluster != nil:
		// In a cluster: the workspace's imagePushSecret, and Entra ID for ACR.
		c, err := b.clients(IdentityPublish)
		if err != nil {
			return nil, err
		}
		var acr *registryauth.ACR
		if cred, err := b.credential(); err == nil {
			acr = &registryauth.ACR{Credential: cred}
		}
		return f.WithKeychain(registryauth.Secrets{Client: c.kube, ACR: acr}.For), nil
	}
	// The workspace's own registry from a workstation: the local Docker login.
	return f.WithKeychain(func(context.Context, *kaito.Workspace) (authn.Keychain, error) { return authn.DefaultKeychain, nil }), nil
}

func (b *builder) serve() (runtime.Handler, error) {
	d := b.cfg.Drivers
	switch d.Deployer {
	case "", "sim", "local":
		// The local deployer is the sim's replicas, revisions and scale to zero with a real vLLM
		// process per replica in place of the simulated runtime.
		simd := &servesim.Deployer{BaseURL: b.cfg.Sim.BaseURL + SimInferencePath, Delay: b.cfg.Sim.Delay, Log: b.log}
		if b.cfg.Sim.Dir != "" {
			simd.Dir = filepath.Join(b.cfg.Sim.Dir, "serving")
		}
		if b.cfg.Sim.Token != "" {
			simd.Transport = bearer{token: b.cfg.Sim.Token, next: http.DefaultTransport}
		}
		if d.Deployer == "local" {
			if d.VLLM.Python == "" {
				return nil, errors.New("deployer local: a Python with vLLM (--vllm-python; hack/ml-env.sh vllm makes one) is required")
			}
			catalog, err := presets.Default()
			if err != nil {
				return nil, err
			}
			v := d.VLLM
			v.Catalog, v.Log, v.Dir = catalog, b.log, filepath.Join(b.cfg.Sim.Dir, "vllm")
			simd.Server = &v
			// vLLM's engine processes outlive a server killed with this process: stop them all.
			b.a.Close = simd.Close
		}
		b.a.SimInference = http.StripPrefix(SimInferencePath, simd.Handler())
		return serve.New(simd, b.log), nil
	case "knative":
		c, err := b.clients(IdentityServe)
		if err != nil {
			return nil, fmt.Errorf("deployer knative: %w", err)
		}
		catalog, err := presets.Default()
		if err != nil {
			return nil, err
		}
		configs, err := b.configMaps(IdentityServe)
		if err != nil {
			return nil, err
		}
		o := knative.DefaultOptions()
		if d.ProxyImage == "" {
			return nil, errors.New("deployer knative: kaitoflow's own image (--proxy-image) is required; hack/release.sh builds it")
		}
		if d.RuntimeImage != "" {
			o.RuntimeImage = d.RuntimeImage
		}
		o.ProxyImage, o.WeightsCache, o.WeightsImage, o.AllowHosts = d.ProxyImage, d.WeightsCache, d.TrainerImage, b.cfg.Policy.Allow
		if d.InferencePool != "" {
			if o.InferencePool, err = knative.ParseInferencePool(d.InferencePool); err != nil {
				return nil, fmt.Errorf("deployer knative: --inference-pool %w", err)
			}
		}
		w, err := b.clients(IdentitySources)
		if err != nil {
			return nil, err
		}
		b.watch("knative-services", func(ctx context.Context, pub events.Publisher) error { return knative.Watch(ctx, w.dyn, pub, b.log) })
		return serve.New(&knative.Deployer{Client: c.dyn, Kube: c.kube, Replicas: knative.PodReplicas{Kube: c.kube, Address: d.ReplicaAddress},
			Catalog: catalog, Options: o, Configs: configs, Log: b.log}, b.log), nil
	}
	return nil, fmt.Errorf("deployer %q: want sim or knative", d.Deployer)
}

func (b *builder) controller(ctx context.Context) error {
	c, err := b.clients(IdentityController)
	if err != nil {
		return err
	}
	rc, err := b.cfg.Cluster(IdentityController)
	if err != nil {
		return err
	}
	store, err := b.store(ctx)
	if err != nil {
		return err
	}
	b.watch("workspace-controller", func(ctx context.Context, pub events.Publisher) error {
		recorder, stop := controller.NewRecorder(ctx, c.kube)
		defer stop()
		wc := &controller.Controller{Client: c.dyn, Store: store, Publisher: pub, Group: b.cfg.CRDGroup, Log: b.log, Recorder: recorder,
			Kinds:     b.cfg.ControllerKinds,
			Submitter: &ingress.Submitter{Store: store, Publisher: pub, Policy: b.cfg.Policy, Source: controller.Source}}
		return wc.Run(ctx, rc, controller.RunOptions{Workers: b.cfg.ControllerWorkers, Election: b.cfg.LeaderElection,
			MetricsAddr: b.cfg.ControllerMetrics, HealthAddr: b.cfg.ControllerHealth})
	})
	return nil
}

// Preflight turns a preflight mode (enforce, warn, off or empty) into provision's check.
func Preflight(mode string, policy netguard.AddressPolicy) (provision.Preflight, bool, error) {
	switch mode {
	case "", "off":
		return nil, false, nil
	case "warn", "enforce":
		c := dataset.New(policy)
		check := func(ctx context.Context, in *kaito.DataSource) error {
			if in.Image != "" {
				return c.CheckImage(ctx, in.Image, false)
			}
			_, err := c.Check(ctx, in.URLs)
			return err
		}
		return check, mode == "warn", nil
	}
	return nil, false, fmt.Errorf("preflight %q: want enforce, warn or off", mode)
}

// bearer adds a bearer token to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
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
		fn(Status, statusBuckets, nil),
		fn(sources.Name, nil, nil),
		fn(sources.DeadLetterName, nil, nil),
	}
}
