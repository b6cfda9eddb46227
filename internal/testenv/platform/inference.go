package platform

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/dataplane/vllmsim"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// InferencePods stands in for the containers of the inference pods a box runs (kwok runs none).
// For each running pod of a Knative revision whose chat-proxy has an adapter set, it runs
// kaitoflow's real chat-proxy — its adapter reconciler pulling with the pod's own pull secrets —
// in front of the sim model server, and plays the kubelet's part for the pod's volumes: ConfigMap
// and Secret volumes are written under Dir as the pod mounts them (again whenever they change, as
// the kubelet refreshes them), emptyDirs are directories there, and a claim is read through its
// PersistentVolume's hostPath. Address is the URL of a pod's chat-proxy admin port, which the
// knative deployer asks what the pod serves.
type InferencePods struct {
	Box *testenv.Box
	// Dir holds each pod's volumes.
	Dir string
	Log *slog.Logger

	mu   sync.Mutex
	pods map[types.UID]*inferencePod
}

type inferencePod struct {
	pod          corev1.Pod
	root         string
	proxy, admin *httptest.Server
	runtime      *httptest.Server
	stop         context.CancelFunc
	// claims maps a claim to its PersistentVolume's hostPath.
	claims map[string]string
}

// Run keeps a stand-in running for every such pod until ctx ends.
func (p *InferencePods) Run(ctx context.Context) {
	loop(ctx, p.sync)
	p.mu.Lock()
	defer p.mu.Unlock()
	for uid, ip := range p.pods {
		ip.close()
		delete(p.pods, uid)
	}
}

// Address implements the knative deployer's replica address: the pod's chat-proxy admin URL, or
// one that refuses connections while the pod's stand-in has not started.
func (p *InferencePods) Address(pod corev1.Pod) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ip, ok := p.pods[pod.UID]; ok {
		return ip.admin.URL
	}
	return "http://127.0.0.1:1"
}

func (p *InferencePods) sync(ctx context.Context) error {
	pods, err := p.Box.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: LabelRevision})
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pods == nil {
		p.pods = map[types.UID]*inferencePod{}
	}
	running := map[types.UID]bool{}
	for _, pod := range pods.Items {
		if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning || argAfter(container(pod, "chat-proxy"), "--adapter-set") == "" {
			continue
		}
		running[pod.UID] = true
		ip, ok := p.pods[pod.UID]
		if !ok {
			if ip, err = p.start(pod); err != nil {
				logctx.Or(p.Log).Warn("stand-in inference pod not started", "pod", pod.Name, "err", err)
				continue
			}
			p.pods[pod.UID] = ip
		}
		if err := p.project(ctx, ip); err != nil {
			logctx.Or(p.Log).Warn("stand-in kubelet: volumes not projected", "pod", pod.Name, "err", err)
		}
	}
	for uid, ip := range p.pods {
		if !running[uid] {
			ip.close()
			delete(p.pods, uid)
		}
	}
	return nil
}

func (p *InferencePods) start(pod corev1.Pod) (*inferencePod, error) {
	chat, model := container(pod, "chat-proxy"), container(pod, "model")
	if chat == nil || model == nil {
		return nil, fmt.Errorf("pod %s has no chat-proxy and model containers", pod.Name)
	}
	ip := &inferencePod{pod: pod, root: filepath.Join(p.Dir, string(pod.UID))}
	base := argAfter(model, "--served-model-name")
	rt := &vllmsim.Server{Base: base, Describe: base, Files: func(path string) string { return ip.local(model, path) }}
	ip.runtime = httptest.NewServer(rt.Handler())
	upstream, _ := url.Parse(ip.runtime.URL)
	pull := chatproxy.RegistryPuller(func(spec chatproxy.AdapterSpec) (authn.Keychain, error) {
		var files []string
		for _, f := range spec.PullSecrets {
			files = append(files, ip.local(chat, f))
		}
		return registryauth.DockerConfigFiles(files...), nil
	})
	log := logctx.Or(p.Log).With("stand-in", "inference pod", "pod", pod.Name)
	dir := argAfter(chat, "--adapter-dir")
	m := &chatproxy.AdapterManager{Runtime: upstream, Dir: ip.local(chat, dir), ServerDir: dir, Pull: pull, Replica: pod.Name, Log: log}
	proxy := &chatproxy.Proxy{Upstream: upstream, Model: argAfter(chat, "--model"), Adapters: m, Log: log}
	if f := argAfter(chat, "--admin-token-file"); f != "" {
		proxy.AdminTokenFile = ip.local(chat, f) // serve must send the adapter set's token, as to a real pod
	}
	ip.proxy, ip.admin = httptest.NewServer(proxy.Handler()), httptest.NewServer(proxy.AdminHandler())
	ctx, stop := context.WithCancel(context.Background())
	ip.stop = stop
	go m.Run(ctx, chatproxy.FileSource(ip.local(chat, argAfter(chat, "--adapter-set"))), every)
	return ip, nil
}

func (ip *inferencePod) close() {
	ip.stop()
	ip.proxy.Close()
	ip.admin.Close()
	ip.runtime.Close()
}

// local is where a path of container c is in the test: under its volume's directory, or the
// claim's PersistentVolume's hostPath.
func (ip *inferencePod) local(c *corev1.Container, path string) string {
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(path, m.MountPath)
		if !ok || (rel != "" && !strings.HasPrefix(rel, "/")) {
			continue
		}
		return filepath.Join(ip.volumeDir(m.Name), rel)
	}
	return filepath.Join(ip.root, "rootfs", path)
}

func (ip *inferencePod) volumeDir(name string) string {
	i := slices.IndexFunc(ip.pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == name })
	if i >= 0 {
		if pv := ip.pod.Spec.Volumes[i].PersistentVolumeClaim; pv != nil {
			if dir, ok := ip.claims[pv.ClaimName]; ok {
				return dir
			}
		}
	}
	return filepath.Join(ip.root, "volumes", name)
}

// project writes the pod's ConfigMap and Secret volumes as the kubelet mounts them, and finds
// where its claims' PersistentVolumes keep their files.
func (p *InferencePods) project(ctx context.Context, ip *inferencePod) error {
	core := p.Box.Client.CoreV1()
	ns := ip.pod.Namespace
	for _, v := range ip.pod.Spec.Volumes {
		data := map[string][]byte{}
		var items []corev1.KeyToPath
		switch {
		case v.ConfigMap != nil:
			cm, err := core.ConfigMaps(ns).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("ConfigMap %s: %w", v.ConfigMap.Name, err)
			}
			for k, s := range cm.Data {
				data[k] = []byte(s)
			}
			items = v.ConfigMap.Items
		case v.Secret != nil:
			sec, err := core.Secrets(ns).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("Secret %s: %w", v.Secret.SecretName, err)
			}
			data, items = sec.Data, v.Secret.Items
		case v.PersistentVolumeClaim != nil:
			if err := p.claim(ctx, ip, v.PersistentVolumeClaim.ClaimName); err != nil {
				return err
			}
			continue
		default:
			continue
		}
		if len(items) == 0 {
			for k := range data {
				items = append(items, corev1.KeyToPath{Key: k, Path: k})
			}
		}
		dir := ip.volumeDir(v.Name)
		for _, it := range items {
			if err := writeAtomically(filepath.Join(dir, it.Path), data[it.Key]); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *InferencePods) claim(ctx context.Context, ip *inferencePod, name string) error {
	if _, ok := ip.claims[name]; ok {
		return nil
	}
	pvc, err := p.Box.Client.CoreV1().PersistentVolumeClaims(ip.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("claim %s: %w", name, err)
	}
	if pvc.Spec.VolumeName == "" {
		return fmt.Errorf("claim %s not bound", name)
	}
	pv, err := p.Box.Client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if pv.Spec.HostPath == nil {
		return fmt.Errorf("PersistentVolume %s: the stand-in reads hostPath volumes only", pv.Name)
	}
	if ip.claims == nil {
		ip.claims = map[string]string{}
	}
	ip.claims[name] = pv.Spec.HostPath.Path
	return nil
}

// writeAtomically replaces a file as the kubelet swaps a projected volume's files: a reader sees
// the old content or the new, never half of it.
func writeAtomically(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func container(pod corev1.Pod, name string) *corev1.Container {
	i := slices.IndexFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == name })
	if i < 0 {
		return nil
	}
	return &pod.Spec.Containers[i]
}

// argAfter is the value following flag in a container's command and arguments.
func argAfter(c *corev1.Container, flag string) string {
	if c == nil {
		return ""
	}
	args := append(slices.Clone(c.Command), c.Args...)
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}
