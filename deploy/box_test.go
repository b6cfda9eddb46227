package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision/aks"
	"github.com/kaitoflow/kaitoflow/functions/provision/karpenter"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/serve/knative"
	"github.com/kaitoflow/kaitoflow/functions/tune/jobs"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/controller"
	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress/webhook"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/internal/testenv/platform"
)

// karpenterVersion is the module whose CRDs the box serves (go.mod pins the same).
const karpenterVersion = "v1.14.1"

// seedBox is a box serving the CRDs the seed meets on a cluster: kaitoflow's Workspace, Knative
// Serving's and Karpenter's.
func seedBox(t *testing.T) *testenv.Box {
	t.Helper()
	return testenv.BoxFor(t, filepath.Join("knative", "crd"), moduleDir(t, "knative.dev/serving", servingVersion, "config", "core", "300-resources"),
		moduleDir(t, "sigs.k8s.io/karpenter", karpenterVersion, "pkg", "apis", "crds"))
}

// The seed, `kubectl apply`-ed, on each provider in the box. Real here: the API server with its
// admission (PodSecurity baseline on the namespace), RBAC (every function as its own
// ServiceAccount of rbac.yaml), the scheduler that places every pod, the Job, ReplicaSet and
// garbage-collector controllers, and kaitoflow's controller and functions. Stand-ins, named:
// kwok is every node's kubelet; the AKS, Karpenter and Knative stand-ins of package platform
// create nodes and revisions as those platforms do; job-run's last act (the adapter layer
// uploaded, the termination message written) is done by the test; the in-process registry stands
// in for ACR. The inference pod must be placed by the scheduler on a GPU node: before serving
// capacity was handed over at tuning.completed, it stayed Unschedulable here on aks and karpenter.
// On aks and karpenter the service then scales to zero (the GPU node goes) and wakes (a node comes
// back); on aks the serving node is then lost under the replica, which gets a new one.
func TestSeedInTheBox(t *testing.T) {
	for _, provider := range []string{"aks", "karpenter", "byo"} {
		t.Run(provider, func(t *testing.T) { seedInTheBox(t, provider) })
	}
}

// boxed is kaitoflow running against a box on one provider: the pipeline with every function as
// its own ServiceAccount, the controller, and the platform's stand-ins.
type boxed struct {
	b    *testenv.Box
	p    *embedded.Pipeline
	objs objects
	arm  *platform.AKS
	karp *platform.Karpenter
	// pods runs the inference pods' containers (kwok runs none): a named stand-in.
	pods *platform.InferencePods
}

// boxNamespace is where the box tests' workspaces live: PodSecurity baseline, the trainer's
// ServiceAccount installed, the seed's push secret created.
const boxNamespace = "tuning"

// startBoxed starts a box, installs rbac.yaml, the workspace namespace and the platform of
// provider (its stand-ins run until ctx ends; byo gets the user's GPU node), then kaitoflow.
func startBoxed(ctx context.Context, t *testing.T, provider string) *boxed {
	t.Helper()
	bx := &boxed{b: seedBox(t)}
	b := bx.b
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	bx.objs = newObjects(b.Config)
	applyRBAC(t, bx.objs)
	if err := b.Namespace(ctx, boxNamespace, "baseline"); err != nil {
		t.Fatal(err)
	}
	installTrainerAccount(t, bx.objs, boxNamespace)
	pushSecret(ctx, t, b.Client, boxNamespace)

	fns := assembly.Config{
		Drivers:          testDrivers(provider),
		Controller:       true,
		Cluster:          func(identity string) (*rest.Config, error) { return as(b.Config, "kaitoflow-"+identity), nil },
		PushKeychain:     registryauth.Secrets{Read: secretsAs(t, b.Config, "kaitoflow-publish")}.For,
		CapacityDeadline: 5 * time.Minute,
		Policy:           loopback,
	}
	// Every AKS cluster has a system pool: without any node the scheduler rejects a pod before
	// any plugin looks at it ("no nodes available"), and such a pod is only retried after minutes,
	// which no real cluster shows.
	if err := b.Node(ctx, testenv.NodeSpec{Name: "aks-system-12345678-vmss000000", Labels: map[string]string{
		platform.LabelAgentPool: "system", "kubernetes.azure.com/mode": "system"}}); err != nil {
		t.Fatal(err)
	}
	switch provider {
	case "aks":
		bx.arm = platform.NewAKS(b)
		bx.arm.ScaleDownAfter = time.Second
		go bx.arm.Run(ctx)
		fns.Drivers.AKS = aks.Config{SubscriptionID: "00000000-0000-0000-0000-000000000000", ResourceGroup: "rg", Cluster: "aks"}
		fns.ARMClientOptions, fns.AzureCredential = bx.arm.ClientOptions(), &azfake.TokenCredential{}
	case "karpenter":
		bx.karp = platform.NewKarpenter(b)
		bx.karp.ConsolidateAfter = time.Second
		go bx.karp.Run(ctx)
		fns.Drivers.NodeClass = "karpenter.azure.com/AKSNodeClass/default"
	case "byo":
		// The user's GPU node, labelled as the seed's labelSelector asks, tainted as AKS taints GPU pools.
		if err := b.Node(ctx, testenv.NodeSpec{Name: "gpu-node-0", GPUs: 1, Labels: map[string]string{"app": "tuning-phi-3"}, Taints: testenv.GPUTaints()}); err != nil {
			t.Fatal(err)
		}
	}
	go platform.NewKnative(b).Run(ctx)
	bx.pods = &platform.InferencePods{Box: b, Dir: t.TempDir(), Log: log}
	go bx.pods.Run(ctx)
	fns.Drivers.ReplicaAddress = bx.pods.Address

	p, err := embedded.Start(ctx, embedded.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: log, TickInterval: time.Second, Functions: fns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	bx.p = p
	return bx
}

func seedInTheBox(t *testing.T, provider string) {
	// Five minutes: on aks the serving node is lost on purpose, and the pod garbage collector
	// takes its time (40 s or more) before the replica is replaced.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bx := startBoxed(ctx, t, provider)
	b, p, objs, arm, admin, ns := bx.b, bx.p, bx.objs, bx.arm, bx.b.Client, boxNamespace

	// kubectl apply -f the seed, its placeholders filled in as the guide asks.
	name, wsClient := applyWorkspace(ctx, t, b.Config, ns, seedManifest(t))

	// The Job controller makes the tuning pod, the scheduler places it on a GPU node, kwok runs it.
	trainer := tuningPod(ctx, t, b, ns, name)
	gpuNode(ctx, t, admin, trainer.Spec.NodeName)
	t.Logf("tuning pod %s placed on %s", trainer.Name, trainer.Spec.NodeName)

	// The trainer finishes; job-run uploads and reports; the Job controller completes the Job.
	finishAsJobRun(ctx, t, admin, ns, trainer.Name, p.Registry, "example.azurecr.io/adapters/phi-3:0.0.1")

	// publish pushes, serve creates the Knative Service, the stand-in makes its revision's
	// Deployment, and the scheduler has to find a GPU node for the inference pod.
	awaitReady(ctx, t, b, wsClient, ns, name, status.CondResourceReady, status.CondJobStarted, status.CondWorkspaceSucceeded, status.CondInferenceReady, status.CondWorkspaceReady)
	server := inferencePod(ctx, t, b, ns, name)
	gpuNode(ctx, t, admin, server.Spec.NodeName)
	t.Logf("inference pod %s placed on %s", server.Name, server.Spec.NodeName)

	switch provider {
	case "aks":
		pool, ok := arm.Pool(aks.PoolName(events.Ref{Namespace: ns, Name: name}))
		if !ok || pool.Properties.EnableAutoScaling == nil || !*pool.Properties.EnableAutoScaling || *pool.Properties.MinCount != 0 {
			t.Errorf("after tuning, the agent pool is not the serving pool (autoscaled from 0): %+v", pool.Properties)
		}
	case "karpenter":
		ref := events.Ref{Namespace: ns, Name: name}
		if _, err := objs.dyn.Resource(karpenter.NodePools).Get(ctx, karpenter.PoolName(ref), metav1.GetOptions{}); err != nil {
			t.Errorf("no serving NodePool: %v", err)
		}
		if _, err := objs.dyn.Resource(karpenter.NodeClaims).Get(ctx, karpenter.ClaimName(ref, 0), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the tuning NodeClaim is still there after the handover: %v", err)
		}
		node, _ := admin.CoreV1().Nodes().Get(ctx, server.Spec.NodeName, metav1.GetOptions{})
		if node.Labels[platform.LabelNodePool] != karpenter.PoolName(ref) {
			t.Errorf("the inference pod's node %s was not launched from the serving NodePool: %v", node.Name, node.Labels)
		}
	}

	if provider != "byo" {
		// Knative scales the service to zero; the platform takes the idle GPU node away. A request
		// wakes it: the pod is pending until the platform has a node for it again.
		scale(ctx, t, admin, ns, server, 0)
		b.Await(ctx, t, ns, "no GPU node left while scaled to zero", func(ctx context.Context) (bool, string) {
			n := gpuNodes(ctx, t, admin)
			return len(n) == 0, fmt.Sprint("GPU nodes ", n)
		})
		scale(ctx, t, admin, ns, server, 1)
		woken := inferencePod(ctx, t, b, ns, name)
		gpuNode(ctx, t, admin, woken.Spec.NodeName)
		t.Logf("woken inference pod %s placed on a new node %s", woken.Name, woken.Spec.NodeName)
		if provider == "aks" {
			// The serving node is lost under a running replica (a spot eviction): the pod garbage
			// collector removes the orphaned pod, the ReplicaSet makes another, and the pool's
			// autoscaler gives it a new node.
			if err := admin.CoreV1().Nodes().Delete(ctx, woken.Spec.NodeName, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			inferencePodOff(ctx, t, b, ns, name, woken.Spec.NodeName)
		}
	}

	// kubectl delete: everything kaitoflow created goes, and every GPU node it asked for with it.
	if err := wsClient.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	b.Await(ctx, t, ns, "the Workspace gone and its capacity released", func(ctx context.Context) (bool, string) {
		_, err := wsClient.Get(ctx, name, metav1.GetOptions{})
		n := gpuNodes(ctx, t, admin)
		want := 0
		if provider == "byo" {
			want = 1 // the user's node stays the user's
		}
		return apierrors.IsNotFound(err) && len(n) == want, fmt.Sprintf("workspace: %v; GPU nodes %v", err, n)
	})
	if arm != nil {
		t.Logf("ARM was asked: %v", arm.Ops())
	}
}

// pushSecret is the seed's imagePushSecret: the ACR credentials the guide has users create.
func pushSecret(ctx context.Context, t *testing.T, c kubernetes.Interface, ns string) {
	t.Helper()
	dockercfg, _ := json.Marshal(map[string]any{"auths": map[string]any{"example.azurecr.io": map[string]string{"username": "00000000-0000-0000-0000-000000000000", "password": "e2e-secret-value"}}})
	if _, err := c.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "acr-push"}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: dockercfg}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// seedManifest is the seed's manifest with its placeholders filled in as the guide asks.
func seedManifest(t *testing.T) string {
	t.Helper()
	seed, err := os.ReadFile(filepath.Join("..", "examples", "fine-tuning", "kaito_workspace_tuning_phi_3.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.NewReplacer("ACR_REPO_HERE.azurecr.io/IMAGE_NAME_HERE:0.0.1", "example.azurecr.io/adapters/phi-3:0.0.1",
		"ACR_REGISTRY_SECRET_HERE", "acr-push").Replace(string(seed))
}

// applyWorkspace is `kubectl apply -f` of a Workspace manifest into ns: it returns the
// workspace's name and a client for Workspaces in ns.
func applyWorkspace(ctx context.Context, t *testing.T, cfg *rest.Config, ns, manifest string) (string, dynamic.ResourceInterface) {
	t.Helper()
	cr := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest), &cr.Object); err != nil {
		t.Fatal(err)
	}
	cr.SetNamespace(ns)
	// At the manifest's own version, as kubectl applies it (the seed is v1alpha1; the controller
	// reads everything at v1beta1).
	gvr := controller.GVR("")
	gvr.Version = cr.GroupVersionKind().Version
	ws := dynamic.NewForConfigOrDie(cfg).Resource(gvr).Namespace(ns)
	if _, err := ws.Create(ctx, cr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return cr.GetName(), ws
}

// inferencePod waits for the workspace's running inference pod (its Knative Service's revision's).
func inferencePod(ctx context.Context, t *testing.T, b *testenv.Box, ns, name string) corev1.Pod {
	t.Helper()
	return inferencePodOff(ctx, t, b, ns, name, "")
}

// inferencePodOff waits for a running inference pod of the workspace on a node other than lost
// (a replacement for a replica lost with its node; "" takes any node).
func inferencePodOff(ctx context.Context, t *testing.T, b *testenv.Box, ns, name, lost string) corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	b.Await(ctx, t, ns, "an inference pod running off node "+lost, func(ctx context.Context) (bool, string) {
		l, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: platform.LabelService + "=" + name})
		if err != nil {
			return false, err.Error()
		}
		for _, p := range l.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && p.Spec.NodeName != lost {
				pod = p
				return true, ""
			}
		}
		return false, podStates(ctx, b.Client, ns)
	})
	return pod
}

// scale sets the replicas of the Deployment behind pod's revision, as Knative's autoscaler does.
func scale(ctx context.Context, t *testing.T, c kubernetes.Interface, ns string, pod corev1.Pod, n int32) {
	t.Helper()
	dep := pod.Labels[platform.LabelRevision] + "-deployment"
	s, err := c.AppsV1().Deployments(ns).GetScale(ctx, dep, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Spec.Replicas = n
	if _, err := c.AppsV1().Deployments(ns).UpdateScale(ctx, dep, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// gpuNode fails the test unless node advertises nvidia.com/gpu.
func gpuNode(ctx context.Context, t *testing.T, c kubernetes.Interface, node string) {
	t.Helper()
	n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("node %q: %v", node, err)
	}
	if q := n.Status.Allocatable["nvidia.com/gpu"]; q.Value() < 1 {
		t.Fatalf("node %s has no GPU: %v", node, n.Status.Allocatable)
	}
}

func gpuNodes(ctx context.Context, t *testing.T, c kubernetes.Interface) []string {
	t.Helper()
	l, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range l.Items {
		if q := n.Status.Capacity["nvidia.com/gpu"]; q.Value() > 0 {
			out = append(out, n.Name)
		}
	}
	slices.Sort(out)
	return out
}

// podStates is one line per pod of ns: phase, node, and why it is not scheduled.
func podStates(ctx context.Context, c kubernetes.Interface, ns string) string {
	l, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, p := range l.Items {
		s := fmt.Sprintf("%s %s node=%q", p.Name, p.Status.Phase, p.Spec.NodeName)
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
				s += " " + c.Reason + ": " + c.Message
			}
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}

// An inference workspace whose adapter lives in a private registry: the Service's chat-proxy gets
// the adapter source's imagePullSecrets mounted, its adapter set names them, and with them — as the
// kubelet would mount them — it pulls the adapter from a registry that refuses anonymous pulls. The
// registry is the in-process one behind basic auth (a stand-in for ACR); chat-proxy's pull code
// runs in the test, on the volumes a kubelet would have mounted for it (kwok runs no container).
func TestPrivateAdapterInTheBox(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bx := startBoxed(ctx, t, "byo")
	b, ns := bx.b, boxNamespace

	const user, password = "00000000-0000-0000-0000-000000000000", "acr-token"
	reg := httptest.NewServer(basicAuth(user, password, registry.New(registry.Logger(stdlog.New(io.Discard, "", 0)))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	image := host + "/adapters/phi-3-support:1"
	dir := t.TempDir()
	img, err := adapter.BuildImage(dir, testenv.Adapter(t, dir), time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(image)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: user, Password: password})); err != nil {
		t.Fatal(err)
	}
	dockercfg, _ := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{"username": user, "password": password}}})
	if _, err := b.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "adapter-pull"}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: dockercfg}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	name, ws := applyWorkspace(ctx, t, b.Config, ns, `apiVersion: kaito.sh/v1alpha1
kind: Workspace
metadata:
  name: workspace-phi-3-support
resource:
  instanceType: Standard_NC6s_v3
  labelSelector:
    matchLabels:
      app: tuning-phi-3
inference:
  preset:
    name: phi-3-mini-128k-instruct
  adapters:
  - source:
      name: support
      image: `+image+`
      imagePullSecrets: [adapter-pull]
    strength: "0.8"
`)
	awaitReady(ctx, t, b, ws, ns, name, status.CondResourceReady, status.CondInferenceReady, status.CondWorkspaceReady)
	pod := inferencePod(ctx, t, b, ns, name)
	gpuNode(ctx, t, b.Client, pod.Spec.NodeName)

	i := slices.IndexFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == "chat-proxy" })
	if i < 0 {
		t.Fatalf("no chat-proxy container: %+v", pod.Spec.Containers)
	}
	cm, err := b.Client.CoreV1().ConfigMaps(ns).Get(ctx, knative.AdapterSetName(name), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the adapter set's ConfigMap: %v", err)
	}
	set, err := chatproxy.DecodeAdapterSet([]byte(cm.Data[knative.AdapterSetKey]))
	if err != nil || len(set.Adapters) != 1 || set.Adapters[0].Image != image {
		t.Fatalf("adapter set %+v: %v", set, err)
	}
	root := t.TempDir()
	mountVolumes(ctx, t, b.Client, &pod, pod.Spec.Containers[i], root)
	if n, err := pullAsChatProxy(ctx, root, set.Adapters[0], false); err != nil || n != 2 {
		t.Fatalf("chat-proxy's pull with the mounted secret: %d file(s), %v", n, err)
	}
	// Without the secret the registry refuses: the credentials are what made the pull work.
	if _, err := pullAsChatProxy(ctx, root, set.Adapters[0], true); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("an anonymous pull was not refused: %v", err)
	}
}

// A LoRA workspace from volume to volume: the dataset on one PersistentVolumeClaim, the adapter
// written to another. The real PersistentVolume controller binds the claims and the scheduler
// places the tuning pod only once they are bound; publish announces kaitoflow.adapter.stored
// (nothing to push); serve mounts the adapter's claim read-only and points the model server at it.
func TestVolumeToVolumeInTheBox(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bx := startBoxed(ctx, t, "byo")
	b, ns := bx.b, boxNamespace

	// Two hostPath volumes (a stand-in for Azure Files or a disk: kwok mounts nothing), each
	// claimed by the workspace's namespace.
	dirs := map[string]string{"dataset": t.TempDir(), "adapters": t.TempDir()}
	for _, claim := range []string{"dataset", "adapters"} {
		size := resource.MustParse("10Gi")
		empty := ""
		pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + claim}, Spec: corev1.PersistentVolumeSpec{
			Capacity: corev1.ResourceList{corev1.ResourceStorage: size}, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
			PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dirs[claim]}},
			ClaimRef:               &corev1.ObjectReference{Namespace: ns, Name: claim}}}
		if _, err := b.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: claim}, Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: &empty, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}}}}
		if _, err := b.Client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	name, ws := applyWorkspace(ctx, t, b.Config, ns, `apiVersion: kaito.sh/v1alpha1
kind: Workspace
metadata:
  name: workspace-tuning-volumes
resource:
  instanceType: Standard_NC6s_v3
  labelSelector:
    matchLabels:
      app: tuning-phi-3
tuning:
  preset:
    name: phi-3-mini-128k-instruct
  method: qlora
  input:
    volumeSource:
      persistentVolumeClaim:
        claimName: dataset
  output:
    volumeSource:
      persistentVolumeClaim:
        claimName: adapters
`)
	trainer := tuningPod(ctx, t, b, ns, name)
	claims := map[string]bool{}
	for _, v := range trainer.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			claims[v.PersistentVolumeClaim.ClaimName] = true
		}
	}
	if !claims["dataset"] || !claims["adapters"] {
		t.Fatalf("the tuning pod does not mount both claims: %+v", trainer.Spec.Volumes)
	}
	// The trainer writes the adapter to the output volume; job-run reports it, uploading nothing.
	files := testenv.Adapter(t, dirs["adapters"])
	summary, _ := json.Marshal(jobrun.Summary{Location: "/mnt/results", Files: files, Metrics: map[string]float64{"train_loss": 1.1}})
	trainerSucceeded(ctx, t, b.Client, ns, trainer.Name, string(summary))

	awaitReady(ctx, t, b, ws, ns, name, status.CondResourceReady, status.CondJobStarted, status.CondWorkspaceSucceeded, status.CondInferenceReady, status.CondWorkspaceReady)
	pod := inferencePod(ctx, t, b, ns, name)
	var mount *corev1.VolumeMount
	var model corev1.Container
	for _, c := range pod.Spec.Containers {
		if c.Name == "model" {
			model = c
		}
	}
	for i, m := range model.VolumeMounts {
		for _, v := range pod.Spec.Volumes {
			if v.Name == m.Name && v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == "adapters" && v.PersistentVolumeClaim.ReadOnly {
				mount = &model.VolumeMounts[i]
			}
		}
	}
	if mount == nil || !mount.ReadOnly {
		t.Fatalf("the model server does not mount the adapters claim read-only: %+v / %+v", model.VolumeMounts, pod.Spec.Volumes)
	}
	// chat-proxy loads the adapter from where the model server mounts it.
	cm, err := b.Client.CoreV1().ConfigMaps(ns).Get(ctx, knative.AdapterSetName(name), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if set, err := chatproxy.DecodeAdapterSet([]byte(cm.Data[knative.AdapterSetKey])); err != nil || len(set.Adapters) != 1 || set.Adapters[0].Path != mount.MountPath {
		t.Errorf("the adapter set does not point at the adapter on the volume (%s): %+v %v", mount.MountPath, set, err)
	}
	rec, err := bx.p.Store.Get(ctx, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(rec.Events, func(e status.EventRecord) bool { return e.Type == events.AdapterStored }) {
		t.Errorf("no %s in the record: %+v", events.AdapterStored, rec.Events)
	}
}

// awaitReady waits until the workspace's conditions conds are all True on the custom resource.
func awaitReady(ctx context.Context, t *testing.T, b *testenv.Box, ws dynamic.ResourceInterface, ns, name string, conds ...string) {
	t.Helper()
	b.Await(ctx, t, ns, "every condition True: "+strings.Join(conds, ", "), func(ctx context.Context) (bool, string) {
		got, err := ws.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		var state []string
		done := true
		for _, c := range conds {
			cond := conditionOf(got, c)
			done = done && cond["status"] == "True"
			state = append(state, fmt.Sprintf("%s=%v (%v: %v)", c, cond["status"], cond["reason"], cond["message"]))
		}
		return done, strings.Join(state, "; ") + "; pods: " + podStates(ctx, b.Client, ns)
	})
}

// mountVolumes does the kubelet's part for container c of pod: every Secret volume it mounts is
// written under root at its mount path, with the volume's items.
func mountVolumes(ctx context.Context, t *testing.T, c kubernetes.Interface, pod *corev1.Pod, ctr corev1.Container, root string) {
	t.Helper()
	for _, m := range ctr.VolumeMounts {
		i := slices.IndexFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			t.Fatalf("mount %s has no volume", m.Name)
		}
		src := pod.Spec.Volumes[i].Secret
		if src == nil {
			continue
		}
		sec, err := c.CoreV1().Secrets(pod.Namespace).Get(ctx, src.SecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the kubelet cannot mount Secret %s: %v", src.SecretName, err)
		}
		for _, item := range src.Items {
			p := filepath.Join(root, m.MountPath, item.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, sec.Data[item.Key], 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// pullAsChatProxy pulls an adapter of the set with chat-proxy's code, the secret files' paths under
// root (where mountVolumes put them); anonymous drops the pull secrets. It returns the files pulled.
func pullAsChatProxy(ctx context.Context, root string, spec chatproxy.AdapterSpec, anonymous bool) (int, error) {
	var files []string
	if !anonymous {
		for _, f := range spec.PullSecrets {
			files = append(files, filepath.Join(root, f))
		}
	}
	pull := chatproxy.RegistryPuller(func(chatproxy.AdapterSpec) (authn.Keychain, error) {
		return registryauth.DockerConfigFiles(files...), nil
	})
	dir := filepath.Join(root, "adapters", spec.Name)
	if err := pull(ctx, spec, dir); err != nil {
		return 0, err
	}
	entries, err := os.ReadDir(dir)
	return len(entries), err
}

// basicAuth refuses requests without the user's credentials, as a private registry does.
func basicAuth(user, password string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// A spot eviction mid-tuning: the GPU node is deleted at 60% under the running trainer. The
// tuning pod runs kaitoflow's real job-run with the Job's own arguments — the test plays the
// kubelet: it starts the pod's command with the sim trainer in place of the Python one (stand-in),
// a data directory of its own and the push secret's volume not projected — so the checkpoints go
// to the pipeline's registry as the Job asks. The real pod garbage collector marks the orphaned
// pod DisruptionTarget, the Job controller fails the Job by its pod failure policy, and tune
// starts attempt 2 (kaitoflow.tuning.retrying, NodeLost): provision puts the agent pool again,
// the AKS stand-in brings its VM back, and attempt 2's Job fetches the newest
// checkpoint (the same plan, so the same checkpoint tag) and completes the planned 100 steps from
// there.
func TestTuningNodeLostResumesInTheBox(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bx := startBoxed(ctx, t, "aks")
	b, p, ns := bx.b, bx.p, boxNamespace
	name, wsClient := applyWorkspace(ctx, t, b.Config, ns, seedManifest(t))
	first := tuningPod(ctx, t, b, ns, name)

	run1, stop := context.WithCancel(ctx)
	cfg := jobRunOf(t, first, p.Registry, "10s")
	done := make(chan error, 1)
	go func() { done <- jobrun.Run(run1, cfg, slog.New(slog.DiscardHandler)) }()
	repo, err := adapter.Rewrite(p.Registry, "example.azurecr.io/adapters/phi-3:0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tag := cfg.CheckpointTag
	b.Await(ctx, t, ns, "attempt 1's checkpoint at step 60 in the registry", func(context.Context) (bool, string) {
		tags, err := remote.List(repo.Context())
		return slices.Contains(tags, tag+"-s60"), fmt.Sprint(tags, err)
	})
	if err := b.Client.CoreV1().Nodes().Delete(ctx, first.Spec.NodeName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	stop() // the trainer goes with its node
	<-done

	second := tuningPodAttempt(ctx, t, b, ns, name, 2)
	t.Logf("attempt 2: pod %s on %s (attempt 1 was on %s)", second.Name, second.Spec.NodeName, first.Spec.NodeName)
	if cfg = jobRunOf(t, second, p.Registry, "2s"); cfg.CheckpointTag != tag {
		t.Fatalf("attempt 2's checkpoints are %s, attempt 1's %s: it would not continue them", cfg.CheckpointTag, tag)
	}
	if err := jobrun.Run(ctx, cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	summary, err := os.ReadFile(cfg.TerminationLog)
	if err != nil {
		t.Fatal(err)
	}
	var sum jobrun.Summary
	if err := json.Unmarshal(summary, &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Metrics["steps"] != 100 || sum.Metrics["resumed_from_step"] < 60 {
		t.Fatalf("attempt 2 ran %v steps, resumed from %v; want 100 from 60 or later", sum.Metrics["steps"], sum.Metrics["resumed_from_step"])
	}
	trainerSucceeded(ctx, t, b.Client, ns, second.Name, string(summary))

	b.Await(ctx, t, ns, "the workspace past tuning, attempt 1 NodeLost and attempt 2 Succeeded", func(ctx context.Context) (bool, string) {
		rec, err := p.Store.Get(ctx, ns, name)
		if err != nil {
			return false, err.Error()
		}
		ok := len(rec.Attempts) == 2 && rec.Attempts[0].Outcome == jobs.ReasonNodeLost && rec.Attempts[1].Outcome == "Succeeded" &&
			rec.GPU != nil && rec.GPU.TuningSeconds > 0
		return ok, fmt.Sprintf("%s attempts %+v gpu %+v failure %+v", rec.Phase, rec.Attempts, rec.GPU, rec.Failure)
	})
	// job-run leaves the run's newest two for publish, which makes them servable adapters and
	// deletes them (functions/publish and up test that); nothing older stays.
	if tags, _ := remote.List(repo.Context()); len(slices.DeleteFunc(tags, func(s string) bool { return !strings.HasPrefix(s, tag) })) > jobrun.DefaultKeepCheckpoints {
		t.Errorf("checkpoints left after the adapter was stored: %v; want at most the newest %d", tags, jobrun.DefaultKeepCheckpoints)
	}
	// The controller writes the attempts and the GPU time to the resource's status, through the
	// CRD's schema (which prunes what it does not name).
	b.Await(ctx, t, ns, "the Workspace resource's status with both attempts and the GPU time", func(ctx context.Context) (bool, string) {
		u, err := wsClient.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		attempts, _, _ := unstructured.NestedSlice(u.Object, "status", "attempts")
		gpu, _, _ := unstructured.NestedFieldNoCopy(u.Object, "status", "gpu", "tuningSeconds")
		return len(attempts) == 2 && fmt.Sprint(gpu) != "0" && gpu != nil, fmt.Sprint(u.Object["status"])
	})
}

// jobRunOf is the pod's job-run, as its container would run it: the Job's own arguments, with the
// sim trainer (this test binary, stand-in for the Python one) for the trainer, the pod's
// directories in a temporary one, the output repository in the pipeline's registry, and no push
// secret (its volume is not projected here).
func jobRunOf(t *testing.T, pod corev1.Pod, registry, delay string) jobrun.Config {
	t.Helper()
	c, _ := testenv.JobRunOf(t, pod.Spec.Containers[0].Command)
	out, err := adapter.Rewrite(registry, c.OutputImage)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c.DataDir, c.ResultsDir, c.TerminationLog = filepath.Join(dir, "data"), filepath.Join(dir, "results"), filepath.Join(dir, "termination-log")
	// The seed's dataset is on the Hugging Face Hub, out of reach here, and the sim reads none.
	c.OutputImage, c.InsecureRegistry, c.PushSecret, c.FetchBestEffort, c.Attempts = out.String(), true, "", true, 1
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c.Env = []string{tunesim.TrainerEnv + "=1"}
	c.Command = []string{self, "--results", c.ResultsDir, "--delay", delay, "--ref", pod.Namespace + "/" + pod.Labels[events.LabelWorkspace] + "/" + pod.Labels[events.LabelGeneration],
		"--input-dir", c.DataDir}
	c.Stdout = io.Discard
	return c
}

// Two generations of the seed in the box with the whole pipeline: the second is tuned on a second
// GPU node (the first serves), pushed, and its adapter goes live in the inference pod that served
// the first — the same pod, the Knative Service's template unchanged (no new revision) — as that
// pod's chat-proxy (the stand-in running kaitoflow's real one) reports.
func TestNextGenerationGoesLiveInTheBox(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bx := startTwoGPUs(ctx, t)
	b, p, admin, ns := bx.b, bx.p, bx.b.Client, boxNamespace
	name, wsClient := applyWorkspace(ctx, t, b.Config, ns, seedManifest(t))
	finishAsJobRun(ctx, t, admin, ns, tuningPodOf(ctx, t, b, ns, name, 1).Name, p.Registry, "example.azurecr.io/adapters/phi-3:0.0.1")
	awaitReady(ctx, t, b, wsClient, ns, name, status.CondInferenceReady, status.CondWorkspaceReady)
	server := inferencePod(ctx, t, b, ns, name)
	served := func() chatproxy.ReplicaAdapters { return replicaAdapters(t, bx, server) }
	first := served().Routes[name]

	// kubectl edit: the next version of the adapter.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := wsClient.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		u.Object["tuning"].(map[string]any)["output"].(map[string]any)["image"] = "example.azurecr.io/adapters/phi-3:0.0.2"
		_, err = wsClient.Update(ctx, u, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	finishAsJobRun(ctx, t, admin, ns, tuningPodOf(ctx, t, b, ns, name, 2).Name, p.Registry, "example.azurecr.io/adapters/phi-3:0.0.2")
	b.Await(ctx, t, ns, "generation 2 Ready", func(ctx context.Context) (bool, string) {
		rec, err := p.Store.Get(ctx, ns, name)
		return err == nil && rec.Generation == 2 && rec.Phase == status.Ready, fmt.Sprintf("%+v %v", rec, err)
	})
	rec, err := p.Store.Get(ctx, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	st := served()
	if now := st.Routes[name]; now == first || now != serve.LoRAName(name, rec.Image) {
		t.Errorf("the pod routes %s to %s (generation 1: %s), want generation 2's %s", name, now, first, serve.LoRAName(name, rec.Image))
	}
	if still := inferencePod(ctx, t, b, ns, name); still.UID != server.UID {
		t.Errorf("generation 2 is served by another pod %s, not %s", still.Name, server.Name)
	}
	svc, err := bx.objs.dyn.Resource(knative.Services).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil || svc.GetGeneration() != 1 {
		t.Errorf("the Knative Service's template changed (metadata.generation %d, %v): a new revision", svc.GetGeneration(), err)
	}
}

// Continuous fine-tuning in the box with the Knative deployer: three uploads of a dataset through
// the upload webhook (in-process against the pipeline), each tuned by a pod running the Job's own
// job-run with the sim trainer (stand-in for the Python one), which pulls the adapter serving
// (--compare-image) and scores both on the new data by the sim's rule (tunesim.EvalLoss: more
// distinct rows score better). v1 is served; v2 scores worse and is held — the inference pod's
// chat-proxy (the stand-in running kaitoflow's real one) still routes to v1; v3 scores better and
// is promoted, loaded live into the same pod, the Knative Service's template unchanged.
func TestUploadHoldPromoteInTheBox(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bx := startTwoGPUs(ctx, t)
	b, p, admin, ns := bx.b, bx.p, bx.b.Client, boxNamespace
	tmpl, err := kaito.DecodeWorkspace([]byte(seedManifest(t)))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.Namespace, tmpl.Annotations = ns, map[string]string{kaito.AnnotationPromotion: "if-better"}
	key := []byte("upload-signing-key")
	hook := httptest.NewServer((&webhook.Handler{Template: tmpl, SigningKey: key, Log: slog.New(slog.DiscardHandler),
		Submitter: &ingress.Submitter{Store: p.Store, Publisher: runtime.JetStreamPublisher{JS: p.JS}, Policy: loopback, Source: "kaitoflow/webhook"}}).Routes())
	defer hook.Close()
	blob := testenv.NewBlob(t)
	const path = "/datasets/dolly.jsonl"
	name := webhook.Name(tmpl.Name, strings.TrimPrefix(blob.URL, "http://")+path)

	generation := func(gen int64, rows int) *status.Workspace {
		t.Helper()
		blob.Upload(t, hook.URL, key, path, testenv.Rows(rows))
		pod := tuningPodOf(ctx, t, b, ns, name, gen)
		cfg := jobRunOf(t, pod, p.Registry, "1s")
		cfg.Policy = loopback
		if err := jobrun.Run(ctx, cfg, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		summary, err := os.ReadFile(cfg.TerminationLog)
		if err != nil {
			t.Fatal(err)
		}
		trainerSucceeded(ctx, t, admin, ns, pod.Name, string(summary))
		var rec *status.Workspace
		b.Await(ctx, t, ns, fmt.Sprintf("generation %d Ready, promoted or held", gen), func(ctx context.Context) (bool, string) {
			rec, err = p.Store.Get(ctx, ns, name)
			return err == nil && rec.Generation == gen && rec.Phase == status.Ready && decided(rec), fmt.Sprintf("%+v %v", rec, err)
		})
		return rec
	}

	v1 := generation(1, 3)
	server := inferencePod(ctx, t, b, ns, name)
	routed := func() string { return replicaAdapters(t, bx, server).Routes[name] }
	if got := routed(); got != serve.LoRAName(name, v1.Image) {
		t.Fatalf("v1: the pod routes %s to %s", name, got)
	}

	v2 := generation(2, 1)
	h2, _ := v2.Pushed(2)
	if v2.Live != 1 || v2.AdapterState(h2) != status.AdapterHeld || !strings.Contains(v2.Held, "held: eval_loss") {
		t.Fatalf("v2: serving %d, state %s, held %q", v2.Live, v2.AdapterState(h2), v2.Held)
	}
	if got := routed(); got != serve.LoRAName(name, v1.Image) {
		t.Fatalf("with v2 held the pod routes %s to %s, want v1's adapter", name, got)
	}

	v3 := generation(3, 9)
	b.Await(ctx, t, ns, "the pod routing to v3's adapter", func(context.Context) (bool, string) {
		got := routed()
		return got == serve.LoRAName(name, v3.Image), got
	})
	if v3.Live != 3 || v3.Held != "" {
		t.Errorf("v3: serving %d, held %q", v3.Live, v3.Held)
	}
	if still := inferencePod(ctx, t, b, ns, name); still.UID != server.UID {
		t.Errorf("v3 is served by another pod %s, not %s", still.Name, server.Name)
	}
	svc, err := bx.objs.dyn.Resource(knative.Services).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil || svc.GetGeneration() != 1 {
		t.Errorf("the Knative Service's template changed (metadata.generation %d, %v): a new revision", svc.GetGeneration(), err)
	}
}

// startTwoGPUs starts the box on byo with the user's second GPU node: the next generation tunes
// while the first one serves.
func startTwoGPUs(ctx context.Context, t *testing.T) *boxed {
	t.Helper()
	bx := startBoxed(ctx, t, "byo")
	if err := bx.b.Node(ctx, testenv.NodeSpec{Name: "gpu-node-1", GPUs: 1, Labels: map[string]string{"app": "tuning-phi-3"}, Taints: testenv.GPUTaints()}); err != nil {
		t.Fatal(err)
	}
	return bx
}

// tuningPod waits for the workspace's tuning pod to run and returns it.
func tuningPod(ctx context.Context, t *testing.T, b *testenv.Box, ns, name string) corev1.Pod {
	t.Helper()
	return runningTuningPod(ctx, t, b, ns, "the tuning pod", events.LabelWorkspace+"="+name)
}

// tuningPodOf waits for the running tuning pod of the workspace's generation gen.
func tuningPodOf(ctx context.Context, t *testing.T, b *testenv.Box, ns, name string, gen int64) corev1.Pod {
	t.Helper()
	return runningTuningPod(ctx, t, b, ns, fmt.Sprintf("generation %d's tuning pod", gen),
		fmt.Sprintf("%s=%s,%s=%d,%s", events.LabelWorkspace, name, events.LabelGeneration, gen, jobs.LabelJob))
}

// tuningPodAttempt waits for the running tuning pod of the workspace's attempt n.
func tuningPodAttempt(ctx context.Context, t *testing.T, b *testenv.Box, ns, name string, n int) corev1.Pod {
	t.Helper()
	return runningTuningPod(ctx, t, b, ns, fmt.Sprintf("attempt %d's tuning pod", n), fmt.Sprintf("%s=%s,%s=%d", events.LabelWorkspace, name, jobs.LabelAttempt, n))
}

// runningTuningPod waits for the first pod selector finds in ns to run and returns it.
func runningTuningPod(ctx context.Context, t *testing.T, b *testenv.Box, ns, what, selector string) corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	b.Await(ctx, t, ns, what+" running", func(ctx context.Context) (bool, string) {
		l, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil || len(l.Items) == 0 {
			return false, fmt.Sprint("no tuning pod yet ", err, podStates(ctx, b.Client, ns))
		}
		pod = l.Items[0]
		return pod.Status.Phase == corev1.PodRunning, podStates(ctx, b.Client, ns)
	})
	return pod
}

// replicaAdapters is what the inference pod's chat-proxy (the stand-in running kaitoflow's real
// one) says it serves: its admin GET /adapters, asked as serve asks, with the token in the
// service's adapter set.
func replicaAdapters(t *testing.T, bx *boxed, pod corev1.Pod) chatproxy.ReplicaAdapters {
	t.Helper()
	ctx := context.Background()
	set, err := bx.b.Client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, knative.AdapterSetName(pod.Labels[knative.LabelService]), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, bx.pods.Address(pod)+"/adapters", nil)
	req.Header.Set("Authorization", "Bearer "+set.Data[knative.AdminTokenKey])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st chatproxy.ReplicaAdapters
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// decided says the promotion policy's decision on w's generation is in the record: it serves, or
// it is held.
func decided(w *status.Workspace) bool {
	h, ok := w.Pushed(w.Generation)
	return ok && (w.Live == w.Generation || h.Held != "")
}

// loopback admits the dataset stand-ins the box's tests serve on 127.0.0.1.
var loopback = netguard.AddressPolicy{Allow: []string{"127.0.0.1"}}
