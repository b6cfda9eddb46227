package fnhost

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/natsconn"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Drivers are the flags `up` and the functions share: the drivers, the cluster they reach, the
// dataset policy and the sim's pace. Config turns them into the assembly's configuration.
type Drivers struct {
	assembly.Drivers
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

// Register adds the flags to f; preflight is --preflight's default.
func (p *Drivers) Register(f *pflag.FlagSet, preflight string) {
	f.StringVar(&p.Provider, "provider", "sim", "where GPU nodes come from: sim, aks (agent pools), karpenter (NodeClaims), byo (existing nodes)")
	f.StringVar(&p.Trainer, "trainer", "sim",
		"how tuning runs: sim, local (presets/trainer as a process on this machine; --python), or job (a Kubernetes Job running presets/trainer; "+
			"needs a cluster)")
	f.StringVar(&p.Local.Interpreter, "python", "", "local trainer: a Python whose environment has the trainer's packages (hack/ml-env.sh makes one)")
	f.StringVar(&p.Local.TrainerDir, "trainer-dir", "presets/trainer", "local trainer: the directory holding the kaitoflow_trainer package")
	f.StringToStringVar(&p.Local.Models, "local-model", nil,
		"local trainer: PRESET=DIR trains that preset's workspaces on the model in DIR (default: the plan's Hugging Face model, from the Hugging "+
			"Face cache or downloaded)")
	f.BoolVar(&p.Local.CPU, "cpu", true,
		"local trainer and deployer: train in fp32 and serve with vLLM's CPU build, whatever precision the plan chose for its GPU; --cpu=false "+
			"trains and serves as planned on this machine's GPUs")
	f.StringVar(&p.Deployer, "deployer", "sim",
		"how inference runs: sim, local (vLLM processes on this machine behind chat-proxy; --vllm-python), or knative (a scale-to-zero Knative "+
			"Service running vLLM behind chat-proxy; needs a cluster)")
	f.StringVar(&p.VLLM.Python, "vllm-python", "", "local deployer: a Python with vLLM installed (hack/ml-env.sh vllm makes one with vLLM's CPU build)")
	f.StringVar(&p.VLLM.DType, "vllm-dtype", "float32", "local deployer on a CPU: the model's dtype, float32 or bfloat16")
	f.Float32Var(&p.qps, "kube-qps", 50, "requests per second to the Kubernetes API (burst twice that)")
	f.StringVar(&p.kubeconfig, "kubeconfig", "", "kubeconfig for the cluster (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	f.StringVar(&p.AKS.SubscriptionID, "subscription", "", "aks: Azure subscription ID")
	f.StringVar(&p.AKS.ResourceGroup, "resource-group", "", "aks: the cluster's resource group")
	f.StringVar(&p.AKS.Cluster, "cluster", "", "aks: the AKS cluster's name")
	f.StringVar(&p.AKS.Location, "location", "",
		"aks: the cluster's region, whose vCPU quota the fit check reads before creating a pool (needs Microsoft.Compute/locations/usages/read); "+
			"empty: quota is not checked")
	f.BoolVar(&p.AKS.Spot, "spot", false, "aks: spot node pools (cheaper, may be evicted)")
	f.Float64Var(&p.AKS.SpotMaxPrice, "spot-max-price", -1, "aks: highest spot price per hour; -1 pays up to the on-demand price")
	f.StringVar(&p.NodeClass, "node-class", "karpenter.azure.com/AKSNodeClass/default", "karpenter: the NodeClaims' node class, group/kind/name")
	f.DurationVar(&p.deadline, "capacity-deadline", provision.DefaultDeadline, "fail a workspace whose GPU nodes are not ready within this long")
	f.IntVar(&p.attempts, "tuning-attempts", tune.DefaultMaxAttempts,
		"attempts of a tuning run that ran out of GPU memory (each with a smaller plan) or lost its node (each resumed from its checkpoint); 1 never retries")
	f.StringVar(&p.TrainerImage, "trainer-image", "", "job trainer: the trainer image, built from presets/trainer (hack/release.sh); required")
	f.StringVar(&p.WrapperImage, "wrapper-image", "",
		"job trainer: job-run's image (cmd/job-run), whose binary wraps the trainer (ko builds it; hack/release.sh); required")
	f.StringVar(&p.RuntimeImage, "runtime-image", presets.InferenceImage, "knative deployer: the model server image (vLLM's OpenAI server)")
	f.StringVar(&p.InferencePool, "inference-pool", "",
		"knative deployer: publish each inference Service as a Gateway API Inference Extension InferencePool (and an InferenceObjective per "+
			"adapter) routed by this endpoint picker, NAME:PORT[:FailOpen|FailClose], {service} in NAME the Service's name; empty: off")
	f.StringVar(&p.ProxyImage, "proxy-image", "",
		"knative deployer: chat-proxy's image (cmd/chat-proxy), beside the model server in every inference pod (ko builds it; hack/release.sh); required")
	f.StringVar(&p.WeightsCache, "weights-cache", "",
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

// Config is the assembly's configuration for these flags. A cluster is required when a driver or
// the controller needs one, or --kubeconfig names one; in a pod, the pod's cluster is used when it
// can be reached (publish reads imagePushSecrets there, provision and serve ConfigMaps).
func (p *Drivers) Config(controller bool) (assembly.Config, error) {
	cfg := assembly.Config{
		Drivers: p.Drivers, Preflight: p.preflight, CapacityDeadline: p.deadline, TuningAttempts: p.attempts,
		Policy: netguard.AddressPolicy{Allow: p.allow}, Controller: controller, HubURL: p.hubURL,
		Sim: assembly.Sim{Delay: p.delay, Dir: filepath.Join(p.Dir(), "adapters")},
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
	if err := assembly.CheckPreflight(p.preflight); err != nil {
		return cfg, err
	}
	// The local trainer's and the local deployer's models and device are one machine's.
	p.VLLM.Models, p.VLLM.CPU = p.Local.Models, p.Local.CPU
	cfg.Drivers.VLLM.Models, cfg.Drivers.VLLM.CPU = p.Local.Models, p.Local.CPU
	if p.Local.TrainerDir != "" {
		dir, err := filepath.Abs(p.Local.TrainerDir)
		if err != nil {
			return cfg, fmt.Errorf("--trainer-dir: %w", err)
		}
		p.Local.TrainerDir, cfg.Drivers.Local.TrainerDir = dir, dir
	}
	required := controller || p.kubeconfig != "" || notSim(p.Provider) || notSim(p.Trainer) || notSim(p.Deployer)
	if !required && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return cfg, nil
	}
	rc, err := p.RestConfig()
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
func (p *Drivers) why(controller bool) string {
	var parts []string
	for _, d := range [][2]string{{"provider", p.Provider}, {"trainer", p.Trainer}, {"deployer", p.Deployer}} {
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

// Dir is --data-dir, or kaitoflow's directory in the user cache dir (the temporary directory
// where there is none, as in a container without $HOME).
func (p *Drivers) Dir() string {
	if p.dataDir != "" {
		return p.dataDir
	}
	if cache, err := os.UserCacheDir(); err == nil {
		return filepath.Join(cache, "kaitoflow")
	}
	return filepath.Join(os.TempDir(), "kaitoflow")
}

// RestConfig is the --kubeconfig cluster's (or the pod's) REST config, at --kube-qps.
func (p *Drivers) RestConfig() (*rest.Config, error) {
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

// Delivery are the JetStream delivery settings `up` and the functions share.
type Delivery struct {
	// Tick is how often kaitoflow.tick is published (--tick).
	Tick        time.Duration
	ackWait     time.Duration
	maxDeliver  int
	concurrency int
	backoff     []time.Duration
}

// Register adds the flags to f.
func (d *Delivery) Register(f *pflag.FlagSet) {
	f.DurationVar(&d.ackWait, "ack-wait", 30*time.Second,
		"JetStream AckWait; handlers send InProgress every AckWait/2, so it bounds how fast a crashed step is picked up again")
	f.IntVar(&d.maxDeliver, "max-deliver", 5, "deliveries before an event is dead-lettered")
	f.DurationSliceVar(&d.backoff, "retry-backoff", runtime.DefaultBackoff(), "delays before redelivering after the n-th failure, the last repeating")
	f.IntVar(&d.concurrency, "concurrency", 8, "events one function handles at once")
	f.DurationVar(&d.Tick, "tick", 30*time.Second,
		"how often kaitoflow.tick re-checks pending capacity, running Jobs and unready Services (fn --transport jetstream: 0 publishes none; fn "+
			"signals: the PingSource's period)")
}

// Options are the JetStream consumers' settings.
func (d *Delivery) Options() runtime.JetStreamOptions {
	return runtime.JetStreamOptions{AckWait: d.ackWait, MaxDeliver: d.maxDeliver, Concurrency: d.concurrency, Backoff: d.backoff}
}

// notSim says whether a driver needs a cluster: every one but the sim and the local trainer.
func notSim(driver string) bool { return driver != "" && driver != "sim" && driver != "local" }

// NATS are how a command reaches NATS: the URL (user:password@ may be in it), and NKey or
// credentials-file auth and TLS, as a NATS cluster that requires them asks.
type NATS struct {
	natsconn.Options
	// Replicas of the JetStream stream and buckets this process creates where they are missing.
	Replicas int
}

// Register adds the flags to fs, --nats with def and usage.
func (n *NATS) Register(fs *pflag.FlagSet, def, usage string) {
	fs.StringVar(&n.URL, "nats", def, usage)
	fs.StringVar(&n.Creds, "nats-creds", "", "NATS credentials file (a user JWT and its NKey seed)")
	fs.StringVar(&n.NKey, "nats-nkey", "", "file with the NKey seed to authenticate to NATS with")
	fs.StringVar(&n.CA, "nats-ca", "", "CA certificate(s) that sign the NATS server's certificate")
	fs.StringVar(&n.Cert, "nats-cert", "", "client certificate for NATS mutual TLS (with --nats-key)")
	fs.StringVar(&n.Key, "nats-key", "", "client key for NATS mutual TLS")
	fs.IntVar(&n.Replicas, "replicas", 1,
		"replicas of the JetStream stream and key-value buckets, where this process creates them (3 on a NATS cluster); existing ones are never weakened")
}

// Storage is how this process creates and checks kaitoflow's JetStream stream and buckets.
func (n *NATS) Storage(log *slog.Logger) runtime.Storage {
	return runtime.Storage{Replicas: n.Replicas, Log: log}
}

// RegisterCluster adds only the flags that reach the cluster and the dataset policy, for a
// process that drives nothing (the controller).
func (p *Drivers) RegisterCluster(f *pflag.FlagSet) {
	f.StringSliceVar(&p.allow, "allow-host", nil, "private dataset hosts or CIDRs that workspaces may name (repeatable)")
	f.StringVar(&p.kubeconfig, "kubeconfig", "", "kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	f.Float32Var(&p.qps, "kube-qps", 50, "requests per second to the Kubernetes API (burst twice that)")
}

// SimDelay is how long each simulated step takes (--delay).
func (p *Drivers) SimDelay() time.Duration { return p.delay }

// FromEnv sets every flag of fs not given on the command line from KAITOFLOW_<FLAG>, if set
// (--trainer-image is KAITOFLOW_TRAINER_IMAGE), so a ConfigMap's envFrom configures a process.
func FromEnv(fs *pflag.FlagSet) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name := "KAITOFLOW_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		// An empty variable counts as unset, as an empty KUBECONFIG does for kubectl: an empty
		// KAITOFLOW_SERVER= left in a shell is no URL.
		v := os.Getenv(name)
		if v == "" {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			if err := sv.Replace(strings.Split(v, ",")); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	})
	return errors.Join(errs...)
}
