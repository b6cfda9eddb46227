package testenv

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// Box is a cluster in a box: the envtest API server and etcd (with their default admission
// plugins, PodSecurity included), plus the real kube-controller-manager (the Job, Deployment,
// ReplicaSet, garbage-collector, pod-GC and node-lifecycle controllers), the real kube-scheduler,
// and kwok standing in for every node's kubelet. kwok runs no container: it marks the nodes the box
// creates Ready and moves the pods the scheduler binds to them to Running; what a container would
// do (a trainer finishing) a test does itself, by writing the pod's status as the kubelet would.
type Box struct {
	*Env
	// Client is an admin client.
	Client kubernetes.Interface
	// KubeConfigFile is the admin kubeconfig on disk, for processes a test starts.
	KubeConfigFile string

	dir   string
	procs []*exec.Cmd
	logs  []string
}

// kwokStages is the kwok configuration the box runs with: how a simulated kubelet moves nodes and
// pods along. Written for the box (kwok has no built-in stages).
//
//go:embed kwok-stages.yaml
var kwokStages []byte

// KwokAnnotation marks the nodes kwok acts as the kubelet of.
const KwokAnnotation = "kwok.x-k8s.io/node"

// StartBox starts a box with the CRDs of crdDirs installed and waits until a probe pod has been
// scheduled onto a probe node and runs there, so every part is known to work when it returns.
func StartBox(crdDirs ...string) (*Box, error) {
	assets, err := Assets()
	if err != nil {
		return nil, err
	}
	if err := checkBins(assets, "kube-controller-manager", "kube-scheduler", "kwok"); err != nil {
		return nil, err
	}
	env, err := Start(crdDirs...)
	if err != nil {
		return nil, err
	}
	b := &Box{Env: env, Client: kubernetes.NewForConfigOrDie(env.Config)}
	if err := b.start(assets); err != nil {
		_ = b.Stop()
		return nil, err
	}
	return b, nil
}

func (b *Box) start(assets string) error {
	dir, err := os.MkdirTemp("", "kaitoflow-box-")
	if err != nil {
		return err
	}
	b.dir = dir
	b.KubeConfigFile = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(b.KubeConfigFile, b.KubeConfig(), 0o600); err != nil {
		return err
	}
	stages := filepath.Join(dir, "kwok-stages.yaml")
	if err := os.WriteFile(stages, kwokStages, 0o600); err != nil {
		return err
	}
	kc := "--kubeconfig=" + b.KubeConfigFile
	for _, p := range []struct {
		bin  string
		args []string
	}{
		{"kube-controller-manager", []string{kc, "--leader-elect=false", "--secure-port=0", "--controllers=*",
			// kwok sends no heartbeats: a node stays Ready until a test says otherwise.
			"--node-monitor-grace-period=1h",
			// Pods of a deleted node are collected at once (a spot eviction), not after the default.
			"--terminated-pod-gc-threshold=100"}},
		{"kube-scheduler", []string{kc, "--leader-elect=false", "--secure-port=0"}},
		{"kwok", []string{kc, "--config=" + stages,
			"--manage-nodes-with-annotation-selector=" + KwokAnnotation + "=fake", "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1"}},
	} {
		if err := b.run(filepath.Join(assets, p.bin), p.args...); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := b.probe(ctx); err != nil {
		return fmt.Errorf("box not working: %w\n%s", err, b.tails())
	}
	return nil
}

func (b *Box) run(bin string, args ...string) error {
	name := filepath.Base(bin)
	logPath := filepath.Join(b.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// kwok keeps its state under $HOME; give it the box's directory.
	cmd.Env = append(os.Environ(), "HOME="+b.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	_ = f.Close()
	b.procs = append(b.procs, cmd)
	b.logs = append(b.logs, logPath)
	return nil
}

// probe schedules a pod onto a fresh node and waits for it to run: the scheduler, the node
// lifecycle controller (which lifts the not-ready taint) and kwok all took part.
func (b *Box) probe(ctx context.Context) error {
	const name = "box-probe"
	if err := b.Node(ctx, NodeSpec{Name: name}); err != nil {
		return err
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "probe", Image: "probe"}}}}
	if _, err := b.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("probe pod: %w", err)
	}
	var last corev1.PodStatus
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		p, err := b.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p.Status
		return p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		return fmt.Errorf("probe pod not running (%+v): %w", last, err)
	}
	zero := int64(0)
	_ = b.Client.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	return b.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
}

// Stop stops the box's processes, the API server and etcd.
func (b *Box) Stop() error {
	for _, p := range b.procs {
		_ = p.Process.Kill()
		_, _ = p.Process.Wait()
	}
	err := b.Env.Stop()
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
	}
	return err
}

// tails is the end of every process's log, for a failure message.
func (b *Box) tails() string {
	var out strings.Builder
	for _, l := range b.logs {
		data, _ := os.ReadFile(l)
		if len(data) > 3000 {
			data = data[len(data)-3000:]
		}
		fmt.Fprintf(&out, "--- %s\n%s\n", filepath.Base(l), data)
	}
	return out.String()
}

// NodeSpec is a node to create: its labels and taints as the platform sets them, and what it
// advertises (the NVIDIA device plugin's nvidia.com/gpu, the GPU product label).
type NodeSpec struct {
	Name   string
	Labels map[string]string
	Taints []corev1.Taint
	GPUs   int64
	// Owners are the node's owner references (Karpenter makes a node its NodeClaim's).
	Owners []metav1.OwnerReference
}

// Node registers a kwok node; kwok marks it Ready with the capacity given here.
func (b *Box) Node(ctx context.Context, n NodeSpec) error {
	labels := map[string]string{corev1.LabelHostname: n.Name, corev1.LabelOSStable: "linux", corev1.LabelArchStable: "amd64", "type": "kwok"}
	for k, v := range n.Labels {
		labels[k] = v
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("32"), corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceEphemeralStorage: resource.MustParse("512Gi"),
	}
	if n.GPUs > 0 {
		capacity["nvidia.com/gpu"] = *resource.NewQuantity(n.GPUs, resource.DecimalSI)
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels, Annotations: map[string]string{KwokAnnotation: "fake"}, OwnerReferences: n.Owners},
		Spec:       corev1.NodeSpec{Taints: n.Taints},
		Status:     corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
	}
	created, err := b.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create node %s: %w", n.Name, err)
	}
	// Status is not taken on create: write the capacity the device plugin would advertise. kwok
	// and the node lifecycle controller write the node too, hence the retry on conflict.
	err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		created.Status.Capacity, created.Status.Allocatable = capacity, capacity
		_, err := b.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			if got, gerr := b.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); gerr == nil {
				created = got
			}
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("node %s capacity: %w", n.Name, err)
	}
	return nil
}

// Namespace creates a namespace whose pods PodSecurity admission holds to level (baseline,
// restricted).
func (b *Box) Namespace(ctx context.Context, name, level string) error {
	_, err := b.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": level}}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	return nil
}

// GPUTaints are the taints AKS puts on a kaitoflow GPU pool's nodes.
func GPUTaints() []corev1.Taint {
	return []corev1.Taint{{Key: "sku", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}}
}

// Await polls cond until it is done or ctx ends; then the test fails with what it waited for,
// cond's last description of the state, and the events of namespace ns (an admission refusal or
// a scheduler's reason shows there).
func (b *Box) Await(ctx context.Context, t testing.TB, ns, what string, cond func(ctx context.Context) (done bool, state string)) {
	t.Helper()
	var last string
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		done, state := cond(ctx)
		last = state
		return done, nil
	})
	if err == nil {
		return
	}
	evs, _ := b.Client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	for _, e := range evs.Items {
		t.Logf("event %s/%s: %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
	}
	t.Fatalf("waiting for %s: %v; last seen: %s", what, err, last)
}

func checkBins(dir string, bins ...string) error {
	for _, bin := range bins {
		if st, err := os.Stat(filepath.Join(dir, bin)); err != nil || st.IsDir() {
			return fmt.Errorf("%w: no %s (looked in %s)", ErrUnavailable, bin, dir)
		}
	}
	return nil
}

// BoxFor starts a box for one test and stops it when the test ends. Without the binaries the
// test skips, loudly, or fails when Required; a box that does not come up always fails.
func BoxFor(t testing.TB, crdDirs ...string) *Box {
	t.Helper()
	b, err := StartBox(crdDirs...)
	if err != nil {
		if Required() || !errors.Is(err, ErrUnavailable) {
			t.Fatal(err)
		}
		skipBanner(err)
		t.Skipf("SKIPPED, no box: %v", err)
	}
	t.Cleanup(func() { _ = b.Stop() })
	return b
}
