// Package knative runs inference services as Knative Services: scale-to-zero revisions of
// chat-proxy in front of vLLM on the workspace's GPU nodes. It builds the Service (a pure function,
// golden-tested), applies it with a dynamic client, and turns its status into serve's phases; Watch
// is the embedded mode's ApiServerSource on Knative Services.
package knative

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Options are the cluster-wide settings of inference Services.
type Options struct {
	// RuntimeImage is the model server (vLLM's OpenAI server); ProxyImage is chat-proxy's own
	// image (cmd/chat-proxy: the proxy and its adapter reconciler, which pulls adapters): required,
	// there is no public default (hack/release.sh builds it into the user's registry).
	RuntimeImage string
	ProxyImage   string
	// Target is the concurrent requests per replica the autoscaler aims at where the model server
	// is not sized by kaitoflow (a user's template); a planned one is sized by its --max-num-seqs
	// (concurrency).
	Target int
	// Retention keeps the last replica this long after traffic stops, before scaling to zero.
	Retention string
	// TimeoutSeconds bounds a request: long generations need more than Knative's default 300.
	TimeoutSeconds int64
	// WeightsCache is a PersistentVolumeClaim (in each workspace's namespace) the model server
	// keeps downloaded weights on, so a pod woken from zero skips the download; a workspace's
	// kaitoflow.io/weights-cache annotation overrides it (presets.WeightsCache).
	WeightsCache string
	// WeightsImage is the trainer's image: with a weights cache claim, its kaitoflow_trainer.fetch
	// fills the claim once per model revision (an init container, checksums verified) and the
	// model server reads it read-only and offline. Without it the model server downloads into the
	// claim itself.
	WeightsImage string
	// AllowHosts are the private hosts or CIDRs the pipeline admits (--allow-host): chat-proxy's
	// adapter pulls connect only to public addresses and these.
	AllowHosts []string
	// InferencePool, when set, publishes each Service's pods as a Gateway API Inference Extension
	// InferencePool (and chat-proxy serves the model server's metrics its endpoint picker scrapes).
	InferencePool *InferencePoolOptions
}

// DefaultOptions are the defaults of Options.
func DefaultOptions() Options {
	return Options{
		// 30 minutes: a request to a service scaled to zero waits while a GPU node is provisioned
		// and the model loads (deploy/knative/serving-features raises Knative's maximum to match).
		RuntimeImage: presets.InferenceImage, Target: 16, Retention: "10m", TimeoutSeconds: 1800,
	}
}

// Runtime is how the model server runs, from the inference plan.
type Runtime struct {
	// Args are the model server's arguments (presets.InferencePlan.VLLMArgs).
	Args []string
	GPUs int
	// StartupSeconds is how long the model may take to download and load before the pod counts
	// as failed: sized to the weights (WeightsGiB, 0 when unknown).
	StartupSeconds int32
	WeightsGiB     float64
}

// Ports and paths inside the pod.
const (
	proxyPort = 5000
	// AdminPort is chat-proxy's GET /adapters, asked on the pod's own address with the admin token
	// (AdminTokenKey); Knative does not route to it, and each namespace's NetworkPolicy
	// (deploy/knative/rbac.yaml) admits only serve where the CNI enforces it.
	AdminPort   = 5001
	runtimePort = 8000
	adapterDir  = "/mnt/adapters"
	// adapterVolumeDir holds one mount per adapter served from a volume.
	adapterVolumeDir = "/mnt/adapter-volumes"
	// pullSecretDir holds one directory per registry Secret the adapters are pulled with.
	pullSecretDir = "/mnt/pull-secrets"
	// adapterSetDir is where the adapter set's ConfigMap is mounted into chat-proxy.
	adapterSetDir = "/etc/kaitoflow/adapter-set"
	// AdapterSetKey is the ConfigMap key holding the set.
	AdapterSetKey = "adapters.json"
	// AdminTokenKey is the adapter set ConfigMap's key holding the token chat-proxy's admin port
	// requires: made once with the ConfigMap, read by serve when it asks a replica what it serves.
	AdminTokenKey = "admin-token"
)

// AdapterSetName is the ConfigMap holding a service's adapter set (chatproxy.AdapterSet), mounted into
// every replica's chat-proxy.
func AdapterSetName(service string) string { return service + "-adapters" }

// AdapterSet is the set that serves d at version: image adapters pulled with the pod's mounted
// pull secrets (or its workload identity for ACR), volume adapters read where the pod mounts them.
func AdapterSet(d serve.Deployment, version int64) chatproxy.AdapterSet {
	return serve.DesiredSet(d, version, placer())
}

// placer says where a pod finds each adapter, numbering pull secrets as presetPod numbers their
// volumes (one placer per set, so a pool's members number alike).
func placer() func(serve.Adapter, *chatproxy.AdapterSpec) {
	secretFiles := map[string]string{}
	n := 0
	return func(a serve.Adapter, spec *chatproxy.AdapterSpec) {
		if a.Volume != nil {
			spec.Path = adapterVolumeDir + "/" + serve.AdapterName(a.Name)
			return
		}
		// Numbered in the order presetPod numbers the Secrets' volumes.
		for _, sec := range a.PullSecrets {
			if _, ok := secretFiles[sec]; !ok {
				secretFiles[sec] = pullSecretDir + "/pull-secret-" + strconv.Itoa(n) + "/config.json"
				n++
			}
			spec.PullSecrets = append(spec.PullSecrets, secretFiles[sec])
		}
		spec.ACRIdentity = len(a.PullSecrets) == 0 && isACR(a.Image)
	}
}

// progressDeadline is Knative's per-revision rollout deadline; nodeStartSeconds what a GPU node
// from zero takes on AKS (image pull and driver start included), allowed on top of the model load.
const (
	progressDeadline = "serving.knative.dev/progress-deadline"
	nodeStartSeconds = 600
)

// autoscaling annotations a workspace may override with its own metadata.annotations.
const autoscaling = "autoscaling.knative.dev/"

// revisionAnnotations are the revision's autoscaling bounds and progress deadline, and the
// workspace's own autoscaling annotations over them.
func revisionAnnotations(d serve.Deployment, rt Runtime, o Options) map[string]string {
	ws := d.Workspace
	count := ws.NodeCount()
	annotations := map[string]string{
		// The first rollout waits for the model to load (the pod's startup allowance) plus a
		// node from zero; Knative's 600 s default fails a revision that is merely loading.
		progressDeadline:                                   strconv.Itoa(int(rt.StartupSeconds)+nodeStartSeconds) + "s",
		autoscaling + "min-scale":                          "0",
		autoscaling + "max-scale":                          strconv.Itoa(count),
		autoscaling + "initial-scale":                      "1",
		autoscaling + "target":                             strconv.Itoa(cmp.Or(maxNumSeqsOf(rt.Args), o.Target)),
		autoscaling + "scale-to-zero-pod-retention-period": o.Retention,
	}
	if maxNumSeqsOf(rt.Args) > 0 {
		// Knative aims at this share of the target: a replica is added before the limit is met.
		annotations[autoscaling+"target-utilization-percentage"] = strconv.Itoa(TargetUtilizationPercent)
	}
	for k, v := range ws.Annotations {
		if strings.HasPrefix(k, autoscaling) {
			annotations[k] = v
		}
	}
	return annotations
}

// BuildService returns the Knative Service that serves a deployment: chat-proxy on the one port
// Knative routes to (it loads the adapter set into the model server at run time), the model
// server beside it on localhost, GPUs, the serving pool's node selector and taint toleration, and
// scale-to-zero autoscaling. A pure function of its inputs.
func BuildService(d serve.Deployment, rt Runtime, o Options) (*servingv1.Service, error) {
	ws := d.Workspace
	labels := map[string]string{events.LabelWorkspace: d.Ref.Name, events.LabelNamespace: d.Ref.Namespace,
		events.LabelGeneration: strconv.FormatInt(d.Ref.Generation, 10)}
	if d.Pool != "" {
		// A pool's Service belongs to no one member; its members are labels of their own.
		labels = map[string]string{LabelPool: d.Pool, events.LabelNamespace: d.Ref.Namespace}
	}
	annotations := revisionAnnotations(d, rt, o)
	tolerations := []corev1.Toleration{
		{Key: "sku", Operator: corev1.TolerationOpEqual, Value: "gpu", Effect: corev1.TaintEffectNoSchedule},
		{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
	}
	// The workspace's nodes: those its resource.labelSelector names (kaitoflow puts those labels on
	// the nodes it creates, and they are how your own nodes are chosen), else kaitoflow's labels.
	nodeSelector := map[string]string{events.LabelWorkspace: d.Ref.Name, events.LabelNamespace: d.Ref.Namespace}
	if sel := ws.Resource.LabelSelector; sel != nil && len(sel.MatchLabels) > 0 {
		nodeSelector = maps.Clone(sel.MatchLabels)
	}

	var spec corev1.PodSpec
	if in := ws.Inference; in != nil && in.Template != nil {
		// Kaito's inference.template: the user's pod, placed on the workspace's nodes.
		spec = *in.Template.Spec.DeepCopy()
		// kaitoflow's labels win: they say whose Service this is (validation refuses templates
		// that set them).
		own := labels
		labels = maps.Clone(in.Template.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		maps.Copy(labels, own)
		// No API token: left unset, the namespace's default ServiceAccount token would be mounted
		// into a pod the workspace's submitter controls.
		spec.AutomountServiceAccountToken = ptr(false)
	} else {
		var err error
		if spec, err = presetPod(d, rt, o); err != nil {
			return nil, err
		}
	}
	spec.NodeSelector = nodeSelector
	spec.Tolerations = append(spec.Tolerations, tolerations...)
	timeout := o.TimeoutSeconds
	meta := map[string]string{}
	if len(d.Adapters) > 0 && d.Pool == "" {
		names := make([]string, len(d.Adapters))
		for i, a := range d.Adapters {
			names[i] = serve.AdapterName(a.Name)
		}
		meta[AnnotationAdapters] = strings.Join(names, ",")
	}
	// The generation is on the Service, not its template: a generation that changes only the
	// adapters changes no pod, so Knative rolls no revision and the adapters change live.
	podMeta := maps.Clone(labels)
	delete(podMeta, events.LabelGeneration)
	template := servingv1.RevisionTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: podLabels(podMeta, spec), Annotations: annotations},
		Spec:       servingv1.RevisionSpec{PodSpec: spec, TimeoutSeconds: &timeout, ContainerConcurrency: containerConcurrency(rt.Args)},
	}
	meta[AnnotationTemplate] = templateHash(template)
	return &servingv1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "serving.knative.dev/v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: d.Service, Namespace: d.Ref.Namespace, Labels: serviceLabels(labels), Annotations: meta},
		Spec:       servingv1.ServiceSpec{ConfigurationSpec: servingv1.ConfigurationSpec{Template: template}},
	}, nil
}

// AnnotationTemplate on the Service is a digest of the revision template kaitoflow built: equal
// digests mean a new generation needs no new revision, only a new adapter set.
const AnnotationTemplate = "kaitoflow.io/template"

func templateHash(t servingv1.RevisionTemplateSpec) string {
	b, _ := json.Marshal(t)
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func presetPod(d serve.Deployment, rt Runtime, o Options) (corev1.PodSpec, error) {
	if len(rt.Args) == 0 {
		return corev1.PodSpec{}, fmt.Errorf("service %s: no runtime arguments from the plan", d.Service)
	}
	if o.ProxyImage == "" {
		return corev1.PodSpec{}, fmt.Errorf("service %s: chat-proxy's image is not configured (--proxy-image)", d.Service)
	}
	ad, err := adapterVolumes(d)
	if err != nil {
		return corev1.PodSpec{}, err
	}
	w := weightsFor(d, rt, o)
	args := append(append([]string{}, rt.Args...), "--host", "127.0.0.1", "--port", strconv.Itoa(runtimePort))
	served := serve.ServedModel(d)
	if d.Pool != "" {
		// A pool's requests name their model; the pool holds its size in adapters, and one
		// more for a swap.
		served = d.Workspace.PresetName()
		_, size := d.Workspace.ServingPool()
		args = presets.MergeArgs(args, []string{"--max-loras", strconv.Itoa(size + 1)})
	}
	sa := ""
	if ad.identity {
		sa = InferenceServiceAccount
	}
	shm := resource.MustParse("8Gi")
	return corev1.PodSpec{
		ServiceAccountName: sa,
		InitContainers:     w.inits,
		Containers:         []corev1.Container{proxyContainer(served, w.startupSeconds, ad, o), modelContainer(d, rt, args, w, ad, o)},
		Volumes: append([]corev1.Volume{
			{Name: "adapters", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "shm", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &shm}}},
			{Name: "cache", VolumeSource: w.cache},
			{Name: "adapter-set", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: AdapterSetName(d.Service)}}}},
		}, slices.Concat(ad.secretVols, ad.adapterVols)...),
	}, nil
}

// podAdapters is what a pod needs for its adapters: the volumes of adapters served from volumes,
// the pull Secrets chat-proxy reads, and whether it signs in to ACR with the pod's identity.
type podAdapters struct {
	identity                  bool
	secretVols, adapterVols   []corev1.Volume
	secretMounts, adapterMnts []corev1.VolumeMount
}

func adapterVolumes(d serve.Deployment) (podAdapters, error) {
	var pa podAdapters
	for i, a := range d.Adapters {
		name := serve.AdapterName(a.Name)
		if a.Volume != nil {
			// The adapter's files are at the volume's root: the model server mounts it read-only
			// and loads it from there; nothing is pulled.
			vol, err := servableVolume(a.Volume)
			if err != nil {
				return podAdapters{}, events.Permanentf(events.ReasonNotSupported, "adapter %s: volumeSource: %v", a.Name, err)
			}
			v := corev1.Volume{Name: "adapter-volume-" + strconv.Itoa(i), VolumeSource: *vol}
			pa.adapterVols = append(pa.adapterVols, v)
			pa.adapterMnts = append(pa.adapterMnts, corev1.VolumeMount{Name: v.Name, MountPath: adapterVolumeDir + "/" + name, ReadOnly: true})
			continue
		}
		// chat-proxy pulls the image itself (the kubelet's pull secrets do not reach it): each of
		// the adapter's secrets is mounted as a docker config file for it. Without one it signs in
		// to an Azure Container Registry with the pod's workload identity, and pulls anything else
		// anonymously.
		if len(a.PullSecrets) == 0 && isACR(a.Image) {
			pa.identity = true
		}
		for _, sec := range a.PullSecrets {
			// Volume names are DNS labels, Secret names need not be: the volume is numbered.
			if slices.ContainsFunc(pa.secretVols, func(v corev1.Volume) bool { return v.Secret.SecretName == sec }) {
				continue
			}
			v := corev1.Volume{Name: "pull-secret-" + strconv.Itoa(len(pa.secretVols)), VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: sec, Items: []corev1.KeyToPath{{Key: corev1.DockerConfigJsonKey, Path: "config.json"}}}}}
			pa.secretVols = append(pa.secretVols, v)
			pa.secretMounts = append(pa.secretMounts, corev1.VolumeMount{Name: v.Name, MountPath: pullSecretDir + "/" + v.Name, ReadOnly: true})
		}
	}
	return pa, nil
}

// podWeights is where the model server finds the weights and how long it may take to start.
type podWeights struct {
	cache          corev1.VolumeSource
	cacheMount     corev1.VolumeMount
	env            []corev1.EnvVar
	inits          []corev1.Container
	startupSeconds int32
}

func weightsFor(d serve.Deployment, rt Runtime, o Options) podWeights {
	w := podWeights{
		cache:          presets.WeightsCache(d.Workspace, o.WeightsCache),
		cacheMount:     corev1.VolumeMount{Name: "cache", MountPath: "/mnt/cache"},
		env:            []corev1.EnvVar{{Name: "HF_HOME", Value: "/mnt/cache/huggingface"}, {Name: "VLLM_ALLOW_RUNTIME_LORA_UPDATING", Value: "True"}},
		startupSeconds: rt.StartupSeconds,
	}
	if model, revision := modelOf(rt.Args); w.cache.PersistentVolumeClaim != nil && o.WeightsImage != "" && model != "" {
		// Weights once: the first pod of a model revision fills the claim (the trainer's fetch,
		// checksums verified, resumable); every later one finds it complete and fetches nothing.
		// The model server reads the claim read-only and offline, so its startup allowance is the
		// load alone; the download counts against the revision's progress deadline.
		w.inits = append(w.inits, corev1.Container{
			Name: "weights", Image: o.WeightsImage,
			Command: []string{"python", "-m", "kaitoflow_trainer.fetch", "--model", model, "--revision", revision},
			Env: append([]corev1.EnvVar{{Name: "HF_HOME", Value: "/mnt/cache/huggingface"}},
				presets.ModelAccessEnv(d.Ref.Namespace, d.Workspace.ModelAccessSecret())...),
			VolumeMounts: []corev1.VolumeMount{w.cacheMount},
		})
		w.cacheMount.ReadOnly = true
		w.env = append(w.env, corev1.EnvVar{Name: "HF_HUB_OFFLINE", Value: "1"})
		w.startupSeconds = loadSeconds(rt.WeightsGiB)
	}
	return w
}

// proxyContainer is chat-proxy, the pod's front: it answers once the model server does.
func proxyContainer(served string, startupSeconds int32, ad podAdapters, o Options) corev1.Container {
	proxy := []string{presets.ProxyEntrypoint, "--listen", ":" + strconv.Itoa(proxyPort), "--upstream",
		"http://127.0.0.1:" + strconv.Itoa(runtimePort),
		"--model", served, "--adapter-set", adapterSetDir + "/" + AdapterSetKey, "--adapter-dir", adapterDir, "--admin-listen", ":" + strconv.Itoa(AdminPort),
		"--admin-token-file", adapterSetDir + "/" + AdminTokenKey}
	for _, h := range o.AllowHosts {
		proxy = append(proxy, "--allow-host", h)
	}
	if o.InferencePool != nil {
		proxy = append(proxy, "--model-metrics")
	}
	return corev1.Container{
		Name: "chat-proxy", Image: o.ProxyImage,
		Command:        proxy,
		Ports:          []corev1.ContainerPort{{ContainerPort: proxyPort, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health"}}, PeriodSeconds: 10},
		StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health"}},
			PeriodSeconds: 10, FailureThreshold: max(startupSeconds/10, 1)},
		VolumeMounts: append([]corev1.VolumeMount{
			{Name: "adapters", MountPath: adapterDir},
			{Name: "adapter-set", MountPath: adapterSetDir, ReadOnly: true},
		}, ad.secretMounts...),
	}
}

// modelContainer is the model server (vLLM) with the pod's GPUs.
func modelContainer(d serve.Deployment, rt Runtime, args []string, w podWeights, ad podAdapters, o Options) corev1.Container {
	gpu := resource.MustParse(strconv.Itoa(max(rt.GPUs, 1)))
	return corev1.Container{
		Name: "model", Image: o.RuntimeImage, Args: args,
		// The weights go to the cache volume (a claim shared with the tuning Job when one is
		// configured), with the token of presetOptions.modelAccessSecret for gated models.
		// Adapters are loaded and unloaded at runtime by chat-proxy (the set changes without a
		// new revision).
		Env: append(w.env, presets.ModelAccessEnv(d.Ref.Namespace, d.Workspace.ModelAccessSecret())...),
		Resources: corev1.ResourceRequirements{
			Limits: corev1.ResourceList{"nvidia.com/gpu": gpu}, Requests: corev1.ResourceList{"nvidia.com/gpu": gpu},
		},
		VolumeMounts: append([]corev1.VolumeMount{
			{Name: "adapters", MountPath: adapterDir, ReadOnly: true},
			{Name: "shm", MountPath: "/dev/shm"},
			w.cacheMount,
		}, ad.adapterMnts...),
	}
}

// modelOf is the Hugging Face repository and revision vLLM's arguments name: the positional model
// and --revision.
// The model server's sequences sized by the plan (--max-num-seqs) are a replica's concurrency:
// a hard limit, so requests beyond it queue in Knative's activator and queue-proxy, where the
// autoscaler sees them, rather than inside vLLM, where it does not; and the autoscaler's target,
// of which Knative aims at TargetUtilizationPercent, so a replica is added before the limit is met.
const TargetUtilizationPercent = 70

// containerConcurrency is the replica's hard concurrency limit: the model server's --max-num-seqs,
// or nil (unlimited: Knative's default) when it has none.
func containerConcurrency(args []string) *int64 {
	if n := maxNumSeqsOf(args); n > 0 {
		return ptr(int64(n))
	}
	return nil
}

func maxNumSeqsOf(args []string) int {
	if i := slices.Index(args, "--max-num-seqs"); i >= 0 && i+1 < len(args) {
		n, _ := strconv.Atoi(args[i+1])
		return n
	}
	return 0
}

func modelOf(args []string) (model, revision string) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		model = args[0]
	}
	if i := slices.Index(args, "--revision"); i >= 0 && i+1 < len(args) {
		revision = args[i+1]
	}
	return model, revision
}

// InferenceServiceAccount is the identity of inference pods that pull an adapter from an Azure
// Container Registry with workload identity (deploy/knative/rbac.yaml has it per namespace).
const InferenceServiceAccount = "kaitoflow-inference"

// workloadIdentityLabel makes AKS's workload identity webhook give the pod its ServiceAccount's
// Entra ID federated token.
const workloadIdentityLabel = "azure.workload.identity/use"

// isACR reports whether an image is in an Azure Container Registry.
func isACR(image string) bool {
	host, _, _ := strings.Cut(image, "/")
	return strings.HasSuffix(host, ".azurecr.io")
}

// visibilityLabel makes Knative route the Service inside the cluster only, at
// http://<name>.<namespace>.svc.cluster.local, as Kaito's inference Service is a ClusterIP one.
const visibilityLabel = "networking.knative.dev/visibility"

// serviceLabels are the Knative Service's labels: the workspace's, and cluster-local visibility.
func serviceLabels(labels map[string]string) map[string]string {
	out := maps.Clone(labels)
	out[visibilityLabel] = "cluster-local"
	return out
}

// podLabels are the revision pods' labels: the Service's, and workload identity's when the pod
// runs as the inference identity.
func podLabels(labels map[string]string, spec corev1.PodSpec) map[string]string {
	if spec.ServiceAccountName != InferenceServiceAccount {
		return labels
	}
	out := maps.Clone(labels)
	out[workloadIdentityLabel] = "true"
	return out
}

// servableVolume is the adapter volume as a Knative Service may mount it, read-only. Knative
// Serving admits only these volume types (a persistentVolumeClaim behind its
// kubernetes.podspec-persistent-volume-claim feature flag, which deploy/knative enables); a
// hostPath, azureFile or CSI volume has to be reached through a PersistentVolume and its claim.
func servableVolume(v *corev1.VolumeSource) (*corev1.VolumeSource, error) {
	out := v.DeepCopy()
	switch {
	case out.PersistentVolumeClaim != nil:
		out.PersistentVolumeClaim.ReadOnly = true
	case out.ConfigMap != nil, out.Secret != nil:
	default:
		return nil, fmt.Errorf("Knative Serving cannot mount a %s volume; serve the adapter from a persistentVolumeClaim (a PersistentVolume can "+
			"wrap an Azure Files share, a CSI volume or a disk) or push it as an image", kaito.DescribeVolume(v))
	}
	return out, nil
}
