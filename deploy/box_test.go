package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision/aks"
	"github.com/kaitoflow/kaitoflow/functions/provision/karpenter"
	"github.com/kaitoflow/kaitoflow/internal/assembly"
	"github.com/kaitoflow/kaitoflow/internal/controller"
	"github.com/kaitoflow/kaitoflow/internal/embedded"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
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
	serving, err := testenv.ModuleDir("knative.dev/serving", servingVersion)
	if err != nil {
		t.Fatal(err)
	}
	karp, err := testenv.ModuleDir("sigs.k8s.io/karpenter", karpenterVersion)
	if err != nil {
		t.Fatal(err)
	}
	return testenv.BoxFor(t, filepath.Join("knative", "crd"), filepath.Join(serving, "config", "core", "300-resources"), filepath.Join(karp, "pkg", "apis", "crds"))
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
func TestSeedInTheBox(t *testing.T) {
	for _, provider := range []string{"aks", "karpenter", "byo"} {
		t.Run(provider, func(t *testing.T) { seedInTheBox(t, provider) })
	}
}

func seedInTheBox(t *testing.T, provider string) {
	b := seedBox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	admin := b.Client
	objs := newObjects(b.Config)
	applyRBAC(t, objs)
	const ns = "tuning"
	if err := b.Namespace(ctx, ns, "baseline"); err != nil {
		t.Fatal(err)
	}
	installTrainerAccount(t, objs, ns)
	pushSecret(ctx, t, admin, ns)

	// The platform.
	fns := assembly.Config{
		Drivers:          assembly.Drivers{Provider: provider, Trainer: "job", Deployer: "knative"},
		Controller:       true,
		Cluster:          func(identity string) (*rest.Config, error) { return as(b.Config, "kaitoflow-"+identity), nil },
		PushKeychain:     registryauth.Secrets{Client: kubernetes.NewForConfigOrDie(as(b.Config, "kaitoflow-publish"))}.For,
		CapacityDeadline: 5 * time.Minute,
	}
	var arm *platform.AKS
	var karp *platform.Karpenter
	switch provider {
	case "aks":
		arm = platform.NewAKS(b)
		arm.ScaleDownAfter = time.Second
		go arm.Run(ctx)
		fns.Drivers.AKS = aks.Config{SubscriptionID: "00000000-0000-0000-0000-000000000000", ResourceGroup: "rg", Cluster: "aks"}
		fns.ARMClientOptions, fns.AzureCredential = arm.ClientOptions(), &azfake.TokenCredential{}
	case "karpenter":
		karp = platform.NewKarpenter(b)
		karp.ConsolidateAfter = time.Second
		go karp.Run(ctx)
		fns.Drivers.NodeClass = "karpenter.azure.com/AKSNodeClass/default"
	case "byo":
		// The user's GPU node, labelled as the seed's labelSelector asks, tainted as AKS taints GPU pools.
		if err := b.Node(ctx, testenv.NodeSpec{Name: "gpu-node-0", GPUs: 1, Labels: map[string]string{"app": "tuning-phi-3"}, Taints: testenv.GPUTaints()}); err != nil {
			t.Fatal(err)
		}
	}
	go platform.NewKnative(b).Run(ctx)

	p, err := embedded.Start(ctx, embedded.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: log, TickInterval: time.Second, Functions: fns})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// kubectl apply -f the seed, its placeholders filled in as the guide asks.
	name, wsClient := applySeed(ctx, t, b.Config, ns)

	// The Job controller makes the tuning pod, the scheduler places it on a GPU node, kwok runs it.
	var trainer corev1.Pod
	b.Await(ctx, t, ns, "the tuning pod running on a GPU node", func(ctx context.Context) (bool, string) {
		l, err := admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: events.LabelWorkspace + "=" + name})
		if err != nil || len(l.Items) == 0 {
			return false, fmt.Sprint("no tuning pod yet ", err)
		}
		trainer = l.Items[0]
		return trainer.Status.Phase == corev1.PodRunning, fmt.Sprintf("pod %s %s on %q: %+v", trainer.Name, trainer.Status.Phase, trainer.Spec.NodeName, trainer.Status.Conditions)
	})
	gpuNode(ctx, t, admin, trainer.Spec.NodeName)
	t.Logf("tuning pod %s placed on %s", trainer.Name, trainer.Spec.NodeName)

	// The trainer finishes; job-run uploads and reports; the Job controller completes the Job.
	finishAsJobRun(ctx, t, admin, ns, trainer.Name, p.Registry, "example.azurecr.io/adapters/phi-3:0.0.1")

	// publish pushes, serve creates the Knative Service, the stand-in makes its revision's
	// Deployment, and the scheduler has to find a GPU node for the inference pod.
	conds := []string{status.CondResourceReady, status.CondJobStarted, status.CondWorkspaceSucceeded, status.CondInferenceReady, status.CondWorkspaceReady}
	b.Await(ctx, t, ns, "WORKSPACEREADY True", func(ctx context.Context) (bool, string) {
		got, err := wsClient.Get(ctx, name, metav1.GetOptions{})
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
		return done, strings.Join(state, "; ") + "; pods: " + podStates(ctx, admin, ns)
	})
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

// applySeed is `kubectl apply -f` of the seed's manifest with its placeholders filled in: it
// returns the workspace's name and a client for Workspaces in ns.
func applySeed(ctx context.Context, t *testing.T, cfg *rest.Config, ns string) (string, dynamic.ResourceInterface) {
	t.Helper()
	seed, err := os.ReadFile(filepath.Join("..", "examples", "fine-tuning", "kaito_workspace_tuning_phi_3.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	manifest := strings.NewReplacer("ACR_REPO_HERE.azurecr.io/IMAGE_NAME_HERE:0.0.1", "example.azurecr.io/adapters/phi-3:0.0.1",
		"ACR_REGISTRY_SECRET_HERE", "acr-push").Replace(string(seed))
	cr := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest), &cr.Object); err != nil {
		t.Fatal(err)
	}
	cr.SetNamespace(ns)
	ws := dynamic.NewForConfigOrDie(cfg).Resource(controller.GVR("")).Namespace(ns)
	if _, err := ws.Create(ctx, cr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return cr.GetName(), ws
}

// inferencePod waits for the workspace's running inference pod (its Knative Service's revision's).
func inferencePod(ctx context.Context, t *testing.T, b *testenv.Box, ns, name string) corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	b.Await(ctx, t, ns, "the inference pod running", func(ctx context.Context) (bool, string) {
		l, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: platform.LabelService + "=" + name})
		if err != nil {
			return false, err.Error()
		}
		for _, p := range l.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
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
