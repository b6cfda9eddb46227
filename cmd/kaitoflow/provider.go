package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/serve/knative"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// driverFlags are the flags `up` and `fn` share: the drivers, the cluster they reach, the
// dataset policy and the sim's pace. config turns them into the assembly's configuration.
type driverFlags struct {
	d          assembly.Drivers
	preflight  string
	kubeconfig string
	qps        float32
	deadline   time.Duration
	attempts   int
	delay      time.Duration
	allow      []string
	outputs    []string
	hubURL     string
	dataDir    string
}

func (p *driverFlags) register(f *pflag.FlagSet, preflight string) {
	f.StringVar(&p.d.Provider, "provider", "sim", "where GPU nodes come from: sim, aks (agent pools), karpenter (NodeClaims), byo (existing nodes)")
	f.StringVar(&p.d.Trainer, "trainer", "sim",
		"how tuning runs: sim, local (presets/trainer as a process on this machine; --python), or job (a Kubernetes Job running presets/trainer; "+
			"needs a cluster)")
	f.StringVar(&p.d.Local.Interpreter, "python", "", "local trainer: a Python whose environment has the trainer's packages (hack/ml-env.sh makes one)")
	f.StringVar(&p.d.Local.TrainerDir, "trainer-dir", "presets/trainer", "local trainer: the directory holding the kaitoflow_trainer package")
	f.StringToStringVar(&p.d.Local.Models, "local-model", nil,
		"local trainer: PRESET=DIR trains that preset's workspaces on the model in DIR (default: the plan's Hugging Face model, from the Hugging "+
			"Face cache or downloaded)")
	f.BoolVar(&p.d.Local.CPU, "cpu", true,
		"local trainer and deployer: train in fp32 and serve with vLLM's CPU build, whatever precision the plan chose for its GPU; --cpu=false "+
			"trains and serves as planned on this machine's GPUs")
	f.StringVar(&p.d.Deployer, "deployer", "sim",
		"how inference runs: sim, local (vLLM processes on this machine behind chat-proxy; --vllm-python), or knative (a scale-to-zero Knative "+
			"Service running vLLM behind chat-proxy; needs a cluster)")
	f.StringVar(&p.d.VLLM.Python, "vllm-python", "", "local deployer: a Python with vLLM installed (hack/ml-env.sh vllm makes one with vLLM's CPU build)")
	f.StringVar(&p.d.VLLM.DType, "vllm-dtype", "float32", "local deployer on a CPU: the model's dtype, float32 or bfloat16")
	f.Float32Var(&p.qps, "kube-qps", 50, "requests per second to the Kubernetes API (burst twice that)")
	f.StringVar(&p.kubeconfig, "kubeconfig", "", "kubeconfig for the cluster (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	f.StringVar(&p.d.AKS.SubscriptionID, "subscription", "", "aks: Azure subscription ID")
	f.StringVar(&p.d.AKS.ResourceGroup, "resource-group", "", "aks: the cluster's resource group")
	f.StringVar(&p.d.AKS.Cluster, "cluster", "", "aks: the AKS cluster's name")
	f.StringVar(&p.d.AKS.Location, "location", "",
		"aks: the cluster's region, whose vCPU quota the fit check reads before creating a pool (needs Microsoft.Compute/locations/usages/read); "+
			"empty: quota is not checked")
	f.BoolVar(&p.d.AKS.Spot, "spot", false, "aks: spot node pools (cheaper, may be evicted)")
	f.Float64Var(&p.d.AKS.SpotMaxPrice, "spot-max-price", -1, "aks: highest spot price per hour; -1 pays up to the on-demand price")
	f.StringVar(&p.d.NodeClass, "node-class", "karpenter.azure.com/AKSNodeClass/default", "karpenter: the NodeClaims' node class, group/kind/name")
	f.DurationVar(&p.deadline, "capacity-deadline", provision.DefaultDeadline, "fail a workspace whose GPU nodes are not ready within this long")
	f.IntVar(&p.attempts, "tuning-attempts", tune.DefaultMaxAttempts,
		"attempts of a tuning run that ran out of GPU memory (each with a smaller plan) or lost its node (each resumed from its checkpoint); 1 never retries")
	f.StringVar(&p.d.TrainerImage, "trainer-image", "", "job trainer: the trainer image, built from presets/trainer (hack/release.sh); required")
	f.StringVar(&p.d.WrapperImage, "wrapper-image", "",
		"job trainer: kaitoflow's own image, whose binary wraps the trainer (ko builds it; hack/release.sh); required")
	f.StringVar(&p.d.RuntimeImage, "runtime-image", knative.DefaultOptions().RuntimeImage, "knative deployer: the model server image (vLLM's OpenAI server)")
	f.StringVar(&p.d.InferencePool, "inference-pool", "",
		"knative deployer: publish each inference Service as a Gateway API Inference Extension InferencePool (and an InferenceObjective per "+
			"adapter) routed by this endpoint picker, NAME:PORT[:FailOpen|FailClose], {service} in NAME the Service's name; empty: off")
	f.StringVar(&p.d.ProxyImage, "proxy-image", "",
		"knative deployer: kaitoflow's own image, for chat-proxy and pull-adapter (ko builds it; hack/release.sh); required")
	f.StringVar(&p.d.WeightsCache, "weights-cache", "",
		"job trainer and knative deployer: a PersistentVolumeClaim in each workspace's namespace that keeps downloaded base models (a workspace's "+
			"kaitoflow.io/weights-cache annotation overrides it; default: an emptyDir per pod)")
	// warn for the embedded demo (an offline machine still runs the quickstart), enforce for
	// functions in a cluster.
	f.StringVar(&p.preflight, "preflight", preflight,
		"dataset checks before capacity is bought: enforce (a bad dataset fails the workspace), warn (a warning on the plan), off")
	f.DurationVar(&p.delay, "delay", 3*time.Second, "how long each simulated step takes")
	f.StringSliceVar(&p.allow, "allow-host", nil, "private dataset hosts or CIDRs that workspaces may name (repeatable)")
	f.StringArrayVar(&p.outputs, "output-repository", nil,
		"NAMESPACE=REGISTRY/PREFIX: the repositories a namespace's workspaces may push adapters to (repeatable; * for every namespace); without "+
			"any, a workspace may name any repository")
	f.StringVar(&p.hubURL, "hub-url", "",
		"the Hugging Face Hub (or a mirror) the planner reads models that are not presets from: their config.json and file sizes (default "+
			"https://huggingface.co)")
	f.StringVar(&p.dataDir, "data-dir", "",
		"up: where JetStream, the registry and the sim trainer keep their data; fn: the sim trainer's (default: kaitoflow in the user cache dir)")
}

// config is the assembly's configuration for these flags. A cluster is required when a driver or
// the controller needs one, or --kubeconfig names one; in a pod, the pod's cluster is used when it
// can be reached (publish reads imagePushSecrets there, provision and serve ConfigMaps).
func (p *driverFlags) config(controller bool) (assembly.Config, error) {
	cfg := assembly.Config{
		Drivers: p.d, Preflight: p.preflight, CapacityDeadline: p.deadline, TuningAttempts: p.attempts,
		Policy: netguard.AddressPolicy{Allow: p.allow}, Controller: controller, HubURL: p.hubURL,
		Sim: assembly.Sim{Delay: p.delay, Dir: filepath.Join(p.dir(), "adapters")},
	}
	for _, o := range p.outputs {
		ns, prefix, ok := strings.Cut(o, "=")
		if !ok || ns == "" || prefix == "" {
			return cfg, fmt.Errorf("--output-repository %q: want NAMESPACE=REGISTRY/PREFIX", o)
		}
		if cfg.Policy.Outputs == nil {
			cfg.Policy.Outputs = map[string][]string{}
		}
		cfg.Policy.Outputs[ns] = append(cfg.Policy.Outputs[ns], prefix)
	}
	if _, _, err := assembly.Preflight(p.preflight, cfg.Policy); err != nil {
		return cfg, err
	}
	// The local trainer's and the local deployer's models and device are one machine's.
	p.d.VLLM.Models, p.d.VLLM.CPU = p.d.Local.Models, p.d.Local.CPU
	cfg.Drivers.VLLM.Models, cfg.Drivers.VLLM.CPU = p.d.Local.Models, p.d.Local.CPU
	if p.d.Local.TrainerDir != "" {
		dir, err := filepath.Abs(p.d.Local.TrainerDir)
		if err != nil {
			return cfg, fmt.Errorf("--trainer-dir: %w", err)
		}
		p.d.Local.TrainerDir, cfg.Drivers.Local.TrainerDir = dir, dir
	}
	required := controller || p.kubeconfig != "" || notSim(p.d.Provider) || notSim(p.d.Trainer) || notSim(p.d.Deployer)
	if !required && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return cfg, nil
	}
	rc, err := p.restConfig()
	switch {
	case err != nil && required:
		return cfg, fmt.Errorf("a cluster is needed (%s): %w", p.why(controller), err)
	case err != nil:
		return cfg, nil // a pod without API access: the sim drivers need none
	}
	// Every part of one process runs as the process's own identity.
	cfg.Cluster = func(string) (*rest.Config, error) { return rest.CopyConfig(rc), nil }
	return cfg, nil
}

// why names what asked for a cluster.
func (p *driverFlags) why(controller bool) string {
	var parts []string
	for _, d := range [][2]string{{"provider", p.d.Provider}, {"trainer", p.d.Trainer}, {"deployer", p.d.Deployer}} {
		if notSim(d[1]) {
			parts = append(parts, "--"+d[0]+" "+d[1])
		}
	}
	if controller {
		parts = append(parts, "the Workspace controller")
	}
	if p.kubeconfig != "" {
		parts = append(parts, "--kubeconfig "+p.kubeconfig)
	}
	return strings.Join(parts, ", ")
}

// dir is --data-dir, or kaitoflow's directory in the user cache dir (the temporary directory
// where there is none, as in a container without $HOME).
func (p *driverFlags) dir() string {
	if p.dataDir != "" {
		return p.dataDir
	}
	if cache, err := os.UserCacheDir(); err == nil {
		return filepath.Join(cache, "kaitoflow")
	}
	return filepath.Join(os.TempDir(), "kaitoflow")
}

func (p *driverFlags) restConfig() (*rest.Config, error) {
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

// deliveryFlags are the JetStream delivery settings `up` and `fn` share.
type deliveryFlags struct {
	ackWait, tick time.Duration
	maxDeliver    int
	concurrency   int
	backoff       []time.Duration
}

func (d *deliveryFlags) register(f *pflag.FlagSet) {
	f.DurationVar(&d.ackWait, "ack-wait", 30*time.Second,
		"JetStream AckWait; handlers send InProgress every AckWait/2, so it bounds how fast a crashed step is picked up again")
	f.IntVar(&d.maxDeliver, "max-deliver", 5, "deliveries before an event is dead-lettered")
	f.DurationSliceVar(&d.backoff, "retry-backoff", runtime.DefaultBackoff(), "delays before redelivering after the n-th failure, the last repeating")
	f.IntVar(&d.concurrency, "concurrency", 8, "events one function handles at once")
	f.DurationVar(&d.tick, "tick", 30*time.Second,
		"how often kaitoflow.tick re-checks pending capacity, running Jobs and unready Services (fn --transport jetstream: 0 publishes none; fn "+
			"signals: the PingSource's period)")
}

func (d *deliveryFlags) options() runtime.JetStreamOptions {
	return runtime.JetStreamOptions{AckWait: d.ackWait, MaxDeliver: d.maxDeliver, Concurrency: d.concurrency, Backoff: d.backoff}
}

// notSim says whether a driver needs a cluster: every one but the sim and the local trainer.
func notSim(driver string) bool { return driver != "" && driver != "sim" && driver != "local" }
