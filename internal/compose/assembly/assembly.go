// Package assembly builds kaitoflow's functions from one configuration value: the drivers
// (sim, aks, karpenter, byo; sim, local or Kubernetes Jobs; sim, local or Knative), the cluster
// each function talks to, images, registry, preflight, ConfigMaps, credentials, the NATS handles
// and the publisher. A function is a Part: the light ones (status, signals, dead letters) are
// here, each step's in a package of its own beside this one (provisionpart, tunepart,
// publishpart, servepart), so a function's own binary links its step's drivers and no other's.
// internal/compose/pipeline puts every Part (and the controller) together for `kaitoflow up`,
// `kaitoflow fn`, the benchmarks and the tests; the callers only choose a transport.
package assembly

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"k8s.io/client-go/dynamic"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision/aks"
	servelocal "github.com/kaitoflow/kaitoflow/functions/serve/local"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	tunelocal "github.com/kaitoflow/kaitoflow/functions/tune/local"
	"github.com/kaitoflow/kaitoflow/internal/compose/election"
	"github.com/kaitoflow/kaitoflow/internal/compose/sources"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Status is the status projector's function name; the pipeline's others are their packages' Name.
const Status = "status"

// Identities: the cluster identity each part's clients use (a ServiceAccount kaitoflow-<identity>
// in deploy/knative/rbac.yaml). Config.Cluster is asked for one of these. A step's is its
// function's name (TestIdentitiesAreTheFunctionsNames); they are spelt here rather than taken from
// the steps' packages so that this package links none of their drivers.
const (
	IdentityProvision  = "provision"
	IdentityTune       = "tune"
	IdentityPublish    = "publish"
	IdentityServe      = "serve"
	IdentitySources    = "sources"
	IdentityController = "controller"
)

// SimInferencePath is where Assembly.SimInference is mounted under Sim.BaseURL's host.
const SimInferencePath = "/sim/inference"

// Part is how one function is built: its name, and what adds its handler (and its watches) to a
// Builder. A function's own binary (cmd/<function>) imports its Part alone.
type Part struct {
	Name  string
	Build func(ctx context.Context, b *Builder) (runtime.Function, error)
	// JetStream says the function keeps or reads records in NATS JetStream whatever its
	// transport (provision's capacity records, status's workspace records, which tune reads for
	// the adapter a run is scored against): a process running it connects to NATS.
	JetStream bool
}

// StepPart is the Part of a step whose handler newHandler builds, taking the events types.
func StepPart(name string, types []string, newHandler func(ctx context.Context, b *Builder) (runtime.Handler, error)) Part {
	return Part{Name: name, Build: func(ctx context.Context, b *Builder) (runtime.Function, error) {
		h, err := newHandler(ctx, b)
		return runtime.Function{Name: name, Types: types, Handler: h}, err
	}}
}

// Build assembles parts from cfg (but not the controller: internal/compose/pipeline adds it).
func Build(ctx context.Context, cfg Config, parts ...Part) (*Assembly, error) {
	b := NewBuilder(cfg)
	for _, p := range parts {
		if err := b.Add(ctx, p); err != nil {
			return nil, err
		}
	}
	return b.Out, nil
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
	// Functions to build, by name: what pipeline.Build builds (pipeline.Pipeline() for `up`);
	// Build here takes its Parts as arguments instead.
	Functions []string
	// Controller makes pipeline.Build add the Workspace controller (custom resources in, status
	// out) as a watch; Build here never builds it.
	Controller bool
	// CRDGroup is the Workspace CRD's group; kaito.sh when empty.
	CRDGroup string
	// ControllerWorkers is how many Workspaces the controller reconciles at once; 4 when zero.
	ControllerWorkers int
	// LeaderElection, when set, makes the controller reconcile only while this process holds
	// the Lease (its Namespace and Identity): replicas of `kaitoflow controller` elect one.
	LeaderElection *election.Lease
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
	// PushKeychain (a publish.Keychain) finds the credentials to push a workspace's adapter
	// with. Nil: anonymous to a stand-in Registry; to the workspace's own registry, the cluster's
	// imagePushSecret and Entra ID for ACR when there is a cluster, the local Docker login when
	// there is none.
	PushKeychain func(ctx context.Context, ws *kaito.Workspace) (authn.Keychain, error)
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

// Builder is one assembly in the making: what the Parts share (the clients of each identity, the
// Azure credential, the status store) is made once, and what each Part builds is added to Out.
type Builder struct {
	// Config is what the functions are built from.
	Config Config
	// Log is Config.Logger, or the default logger.
	Log *slog.Logger
	// Out is what the parts built so far add up to: a part adds its function's handler there,
	// and what comes with it (Plan, Logs, SimInference, Close, the watches).
	Out  *Assembly
	kube map[string]*kubeclient.Client
	cred azcore.TokenCredential
}

// NewBuilder starts an assembly from cfg.
func NewBuilder(cfg Config) *Builder {
	return &Builder{Config: cfg, Log: logctx.Or(cfg.Logger), Out: &Assembly{Store: cfg.Store, Close: func() {}}, kube: map[string]*kubeclient.Client{}}
}

// Add builds p into the assembly.
func (b *Builder) Add(ctx context.Context, p Part) error {
	fn, err := p.Build(ctx, b)
	if err != nil {
		return fmt.Errorf("function %s: %w", p.Name, err)
	}
	b.Out.Functions = append(b.Out.Functions, fn)
	return nil
}

// RESTConfig is the REST config of identity's clients (see the Identity constants).
func (b *Builder) RESTConfig(identity string) (*rest.Config, error) {
	if b.Config.Cluster == nil {
		return nil, fmt.Errorf("no cluster configured (a kubeconfig or in-cluster config is needed)")
	}
	rc, err := b.Config.Cluster(identity)
	if err != nil {
		return nil, fmt.Errorf("cluster config for %s: %w", identity, err)
	}
	return rc, nil
}

// Kube is identity's typed Kubernetes client (internal/kubeclient), made once.
func (b *Builder) Kube(identity string) (*kubeclient.Client, error) {
	if c, ok := b.kube[identity]; ok {
		return c, nil
	}
	rc, err := b.RESTConfig(identity)
	if err != nil {
		return nil, err
	}
	c, err := kubeclient.New(rc)
	if err != nil {
		return nil, err
	}
	b.kube[identity] = c
	return c, nil
}

// Dynamic is identity's dynamic client, for the kinds kaitoflow reads without their Go types
// (Knative Services, Karpenter's NodeClaims, Kaito's Workspaces).
func (b *Builder) Dynamic(identity string) (dynamic.Interface, error) {
	rc, err := b.RESTConfig(identity)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("dynamic client for %s: %w", identity, err)
	}
	return dyn, nil
}

// Credential is Config.AzureCredential, or a DefaultAzureCredential made once.
func (b *Builder) Credential() (azcore.TokenCredential, error) {
	if b.Config.AzureCredential != nil {
		return b.Config.AzureCredential, nil
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

// ConfigMaps is the ConfigMap source identity's functions read tuning.config and
// inference.config from: Config.ConfigMaps first, then the cluster.
func (b *Builder) ConfigMaps(identity string) (presets.ConfigSource, error) {
	if b.Config.Cluster == nil {
		return b.Config.ConfigMaps, nil
	}
	c, err := b.Kube(identity)
	if err != nil {
		return nil, err
	}
	cluster := ClusterConfigMaps(c)
	first := b.Config.ConfigMaps
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

// Storage is how the functions create the JetStream buckets they need.
func (b *Builder) Storage() runtime.Storage {
	return runtime.Storage{Replicas: b.Config.Replicas, Log: b.Log}
}

// Store is the status store, opened on Config.JetStream once when Config.Store is nil.
func (b *Builder) Store(ctx context.Context) (*status.Store, error) {
	if b.Out.Store != nil {
		return b.Out.Store, nil
	}
	if b.Config.JetStream == nil {
		return nil, fmt.Errorf("the status store needs NATS JetStream")
	}
	s, err := status.Open(ctx, b.Config.JetStream, b.Storage())
	if err != nil {
		return nil, err
	}
	b.Out.Store = s
	return s, nil
}

// Watch adds a background loop the assembly's caller runs beside the functions.
func (b *Builder) Watch(name string, run func(ctx context.Context, pub events.Publisher) error) {
	b.Out.Watches = append(b.Out.Watches, Watch{Name: name, Run: run})
}

// StatusPart builds the status projector on the status store.
func StatusPart() Part { return Part{Name: Status, Build: statusFunction, JetStream: true} }

// SignalsPart builds the signals function: Knative's ApiServerSources and PingSource in,
// kaitoflow's signals out.
func SignalsPart() Part { return Part{Name: sources.Name, Build: signalsFunction} }

// DeadLetterPart builds the dead-letter function.
func DeadLetterPart() Part { return Part{Name: sources.DeadLetterName, Build: deadLetterFunction} }

func statusFunction(ctx context.Context, b *Builder) (runtime.Function, error) {
	store, err := b.Store(ctx)
	if err != nil {
		return runtime.Function{}, err
	}
	return runtime.Function{Name: Status, Types: events.Types, Handler: &status.Projector{Store: store}}, nil
}

func signalsFunction(_ context.Context, b *Builder) (runtime.Function, error) {
	return runtime.Function{Name: sources.Name, Types: sources.Types, Handler: &sources.Signals{TickEvery: b.Config.TickEvery}, Observer: true}, nil
}

func deadLetterFunction(_ context.Context, b *Builder) (runtime.Function, error) {
	return runtime.Function{Name: sources.DeadLetterName, Types: sources.DeadLetterTypes, Handler: &sources.DeadLetters{Log: b.Log}, Observer: true},
		nil
}

// Planner is the fit check, reading ConfigMaps and Secrets as identity: provision's, and tune's
// for the re-plan after a run ran out of GPU memory.
func (b *Builder) Planner(identity string) (*presets.Planner, error) {
	catalog, err := presets.Default()
	if err != nil {
		return nil, fmt.Errorf("preset catalog: %w", err)
	}
	configs, err := b.ConfigMaps(identity)
	if err != nil {
		return nil, err
	}
	planner := &presets.Planner{Catalog: catalog, Configs: configs, Secrets: b.Config.Secrets,
		Hub: &presets.Hub{BaseURL: b.Config.HubURL, Client: netguard.Client(b.Config.Policy, 30*time.Second)}}
	if b.Config.Cluster != nil && b.Config.Secrets == nil {
		c, err := b.Kube(identity)
		if err != nil {
			return nil, err
		}
		planner.Secrets = ClusterSecrets(c)
	}
	if a := b.Config.Drivers.AKS; b.Config.Drivers.Provider == "aks" && a.Location != "" {
		// Agent pools are bought in the cluster's region: its vCPU quota is read first.
		cred, err := b.Credential()
		if err != nil {
			return nil, err
		}
		if planner.Quota, err = aks.NewQuota(a.SubscriptionID, a.Location, a.Spot, cred, b.Config.ARMClientOptions); err != nil {
			return nil, err
		}
	}
	return planner, nil
}

// CheckPreflight refuses a preflight mode that is none of enforce, warn, off or empty.
func CheckPreflight(mode string) error {
	switch mode {
	case "", "off", "warn", "enforce":
		return nil
	}
	return fmt.Errorf("preflight %q: want enforce, warn or off", mode)
}
