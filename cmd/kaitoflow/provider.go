package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/provision/aks"
	"github.com/kaitoflow/kaitoflow/functions/provision/byo"
	"github.com/kaitoflow/kaitoflow/functions/provision/karpenter"
	"github.com/kaitoflow/kaitoflow/functions/provision/nodes"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/serve/knative"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/functions/tune/jobs"
	"github.com/kaitoflow/kaitoflow/internal/dataset"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/presets"
)

// providerFlags choose and configure where GPU capacity comes from; `up` and `fn provision`
// share them.
type providerFlags struct {
	provider, kubeconfig, subscription, resourceGroup, cluster, nodeClass string
	trainer, preflight, trainerImage, wrapperImage                        string
	deployer, runtimeImage, proxyImage                                    string
	spot                                                                  bool
	spotMaxPrice                                                          float64
	deadline                                                              time.Duration
	qps                                                                   float32
}

func (p *providerFlags) register(f *pflag.FlagSet) {
	f.StringVar(&p.provider, "provider", "sim", "where GPU nodes come from: sim, aks (agent pools), karpenter (NodeClaims), byo (existing nodes)")
	f.Float32Var(&p.qps, "kube-qps", 50, "requests per second to the Kubernetes API (burst twice that)")
	f.StringVar(&p.kubeconfig, "kubeconfig", "", "kubeconfig for aks, karpenter and byo (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	f.StringVar(&p.subscription, "subscription", "", "aks: Azure subscription ID")
	f.StringVar(&p.resourceGroup, "resource-group", "", "aks: the cluster's resource group")
	f.StringVar(&p.cluster, "cluster", "", "aks: the AKS cluster's name")
	f.BoolVar(&p.spot, "spot", false, "aks: spot node pools (cheaper, may be evicted)")
	f.Float64Var(&p.spotMaxPrice, "spot-max-price", -1, "aks: highest spot price per hour; -1 pays up to the on-demand price")
	f.StringVar(&p.nodeClass, "node-class", "karpenter.azure.com/AKSNodeClass/default", "karpenter: the NodeClaims' node class, group/kind/name")
	f.DurationVar(&p.deadline, "capacity-deadline", provision.DefaultDeadline, "fail a workspace whose GPU nodes are not ready within this long")
	f.StringVar(&p.trainer, "trainer", "sim", "how tuning runs: sim, or job (a Kubernetes Job running presets/trainer; needs a cluster)")
	f.StringVar(&p.trainerImage, "trainer-image", presets.TrainerImage, "job trainer: the trainer image")
	f.StringVar(&p.wrapperImage, "wrapper-image", jobs.DefaultOptions().WrapperImage, "job trainer: kaitoflow's own image (its binary wraps the trainer)")
	f.StringVar(&p.deployer, "deployer", "sim", "how inference runs: sim, or knative (a scale-to-zero Knative Service running vLLM behind chat-proxy; needs a cluster)")
	f.StringVar(&p.runtimeImage, "runtime-image", knative.DefaultOptions().RuntimeImage, "knative deployer: the model server image (vLLM's OpenAI server)")
	f.StringVar(&p.proxyImage, "proxy-image", knative.DefaultOptions().ProxyImage, "knative deployer: kaitoflow's own image (chat-proxy and pull-adapter)")
}

// preflightFlag registers --preflight with a default: warn for the embedded demo (an offline
// machine still runs the quickstart), enforce for functions in a cluster.
func (p *providerFlags) preflightFlag(f *pflag.FlagSet, def string) {
	f.StringVar(&p.preflight, "preflight", def, "dataset checks before capacity is bought: enforce (a bad dataset fails the workspace), warn (a warning on the plan), off")
}

// preflightOptions turns --preflight into provision's options.
func (p *providerFlags) preflightOptions(policy events.AddressPolicy) (provision.Preflight, bool, error) {
	switch p.preflight {
	case "off":
		return nil, false, nil
	case "warn", "enforce":
		c := dataset.New(policy)
		check := func(ctx context.Context, in *events.DataSource) error {
			if in.Image != "" {
				return c.CheckImage(ctx, in.Image, false)
			}
			_, err := c.Check(ctx, in.URLs)
			return err
		}
		return check, p.preflight == "warn", nil
	}
	return nil, false, fmt.Errorf("--preflight %q: want enforce, warn or off", p.preflight)
}

func (p *providerFlags) restConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = p.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return nil, err
	}
	// client-go's default of 5 requests/s would make a few hundred workspaces wait on the client,
	// not on the cluster: a tick re-checks every unfinished one.
	cfg.QPS, cfg.Burst = p.qps, int(p.qps*2)
	return cfg, nil
}

// buildTrainer returns the trainer and, for Jobs, the watch that turns Job and Pod changes into
// kaitoflow.job.changed.
func (p *providerFlags) buildTrainer(sim tune.Trainer, log *slog.Logger) (tune.Trainer, []func(context.Context, runtime.Publisher) error, error) {
	switch p.trainer {
	case "sim":
		return sim, nil, nil
	case "job":
		cfg, err := p.restConfig()
		if err != nil {
			return nil, nil, fmt.Errorf("--trainer job needs a cluster: %w", err)
		}
		kube, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, nil, err
		}
		o := jobs.DefaultOptions()
		o.TrainerImage, o.WrapperImage = p.trainerImage, p.wrapperImage
		return &jobs.Trainer{Client: kube, Options: o, Log: log}, []func(context.Context, runtime.Publisher) error{
			func(ctx context.Context, pub runtime.Publisher) error { return jobs.Watch(ctx, kube, pub, log) },
		}, nil
	}
	return nil, nil, fmt.Errorf("--trainer %q: want sim or job", p.trainer)
}

// buildDeployer returns the inference deployer and, for Knative, the watch that turns Service
// changes into kaitoflow.service.changed.
func (p *providerFlags) buildDeployer(sim serve.Deployer, log *slog.Logger) (serve.Deployer, []func(context.Context, runtime.Publisher) error, error) {
	switch p.deployer {
	case "sim":
		return sim, nil, nil
	case "knative":
		cfg, err := p.restConfig()
		if err != nil {
			return nil, nil, fmt.Errorf("--deployer knative needs a cluster: %w", err)
		}
		dyn, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return nil, nil, err
		}
		catalog, err := presets.Default()
		if err != nil {
			return nil, nil, err
		}
		kube, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, nil, err
		}
		o := knative.DefaultOptions()
		o.RuntimeImage, o.ProxyImage = p.runtimeImage, p.proxyImage
		// inference.config: Kaito's ConfigMap of vLLM settings in the workspace's namespace.
		return &knative.Deployer{Client: dyn, Catalog: catalog, Options: o, Configs: configMapData(kube), Log: log}, []func(context.Context, runtime.Publisher) error{
			func(ctx context.Context, pub runtime.Publisher) error { return knative.Watch(ctx, dyn, pub, log) },
		}, nil
	}
	return nil, nil, fmt.Errorf("--deployer %q: want sim or knative", p.deployer)
}

// build returns the provider and, for the real ones, the Node watch that turns node changes into
// kaitoflow.node.changed.
func (p *providerFlags) build(sim provision.Provider, log *slog.Logger) (provision.Provider, []func(context.Context, runtime.Publisher) error, error) {
	if p.provider == "sim" {
		return sim, nil, nil
	}
	cfg, err := p.restConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("--provider %s needs a cluster: %w", p.provider, err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	checker := &nodes.Checker{Client: kube}
	watch := []func(context.Context, runtime.Publisher) error{
		func(ctx context.Context, pub runtime.Publisher) error { return nodes.Watch(ctx, kube, pub, log) },
	}
	switch p.provider {
	case "byo":
		return &byo.Provider{Nodes: checker, Log: log}, watch, nil
	case "karpenter":
		parts := strings.Split(p.nodeClass, "/")
		if len(parts) != 3 {
			return nil, nil, fmt.Errorf("--node-class %q: want group/kind/name", p.nodeClass)
		}
		dyn, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return nil, nil, err
		}
		return &karpenter.Provider{Client: dyn, Nodes: checker, NodeClass: karpenter.NodeClassRef{Group: parts[0], Kind: parts[1], Name: parts[2]}, Log: log}, watch, nil
	case "aks":
		// Workload identity in a pod, a managed identity on a VM, environment variables, or the
		// Azure CLI's login on a workstation: DefaultAzureCredential tries them in that order.
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, nil, fmt.Errorf("azure credential: %w", err)
		}
		prov, err := aks.New(aks.Config{SubscriptionID: p.subscription, ResourceGroup: p.resourceGroup, Cluster: p.cluster, Spot: p.spot, SpotMaxPrice: p.spotMaxPrice}, cred, nil, checker, log)
		return prov, watch, err
	}
	return nil, nil, fmt.Errorf("--provider %q: want sim, aks, karpenter or byo", p.provider)
}
