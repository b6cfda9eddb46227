// Package testenv starts a real kube-apiserver and etcd (controller-runtime's envtest) for the
// tests that need the Kubernetes API, once per test package. The binaries come from
// hack/envtest.sh, which builds them from the Go module proxy and caches them outside the
// repository; CRDs are loaded from the Go module cache, not copied into the repository.
package testenv

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// ErrUnavailable means the API server binaries have not been built (run hack/envtest.sh).
var ErrUnavailable = errors.New("envtest binaries not found: run hack/envtest.sh (KUBEBUILDER_ASSETS)")

// Required reports whether missing binaries must fail the tests rather than skip them (CI).
func Required() bool { return os.Getenv("KAITOFLOW_REQUIRE_ENVTEST") != "" }

// Env is a running API server.
type Env struct {
	Config *rest.Config
	env    *envtest.Environment
}

// KubeConfig is a kubeconfig for the API server, for a process the test starts.
func (e *Env) KubeConfig() []byte { return e.env.KubeConfig }

// Stop stops the API server and etcd.
func (e *Env) Stop() error { return e.env.Stop() }

// startAttempts bounds how often Start tries a fresh control plane. envtest retries a failed
// start itself, but with the ports it picked the first time: when another test package's
// process takes one of them between the pick and etcd's bind, every retry fails the same way.
// A fresh Environment picks fresh ports.
const startAttempts = 3

// Start starts an API server with the CRDs of crdDirs installed.
func Start(crdDirs ...string) (*Env, error) {
	assets, err := Assets()
	if err != nil {
		return nil, err
	}
	var errs []error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		env, err := start(assets, crdDirs)
		if err == nil {
			return env, nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
	}
	return nil, fmt.Errorf("start envtest: %w", errors.Join(errs...))
}

func start(assets string, crdDirs []string) (*Env, error) {
	etcdOut, apiOut := &tail{max: 4 << 10}, &tail{max: 4 << 10}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     crdDirs,
		ErrorIfCRDPathMissing: true,
		ControlPlane: envtest.ControlPlane{
			Etcd:      &envtest.Etcd{Out: etcdOut, Err: etcdOut},
			APIServer: &envtest.APIServer{Out: apiOut, Err: apiOut},
		},
	}
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("%w\n--- etcd\n%s\n--- kube-apiserver\n%s", err, etcdOut, apiOut)
	}
	return &Env{Config: cfg, env: env}, nil
}

// tail keeps the last max bytes written to it: a control-plane process's output, kept for the
// message of a failed start without growing for the life of a test package.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// Assets finds the directory with kube-apiserver and etcd: $KUBEBUILDER_ASSETS, or the cache
// directory hack/envtest.sh fills (keyed the same way, by the tools modules' go.mod and go.sum).
func Assets() (string, error) {
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		return d, check(d)
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range []string{
		"tools/kube-apiserver/go.mod", "tools/kube-apiserver/go.sum",
		"tools/etcd/go.mod", "tools/etcd/go.sum",
		"tools/kwok/go.mod", "tools/kwok/go.sum",
	} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	cache := os.Getenv("KAITOFLOW_TOOLS_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", err
			}
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "kaitoflow", "envtest")
	}
	d := filepath.Join(cache, hex.EncodeToString(h.Sum(nil))[:16])
	return d, check(d)
}

func check(dir string) error { return checkBins(dir, "kube-apiserver", "etcd") }

func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("testenv: cannot locate the repository")
	}
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
}

// ModuleDir returns the directory of module@version in the Go module cache, downloading it if
// needed: CRDs shipped in Go modules (Karpenter's, Knative's) are loaded from there.
func ModuleDir(module, version string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command("go", "mod", "download", "-json", module+"@"+version)
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w", module, version, err)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out.Bytes(), &info); err != nil {
		return "", err
	}
	if info.Error != "" {
		return "", errors.New(info.Error)
	}
	return info.Dir, nil
}

// Main is a test package's TestMain around an API server: it starts one with the CRDs of crdDirs,
// calls setup with its config (or, when the binaries are missing, with nil and the reason, so the
// tests that need it can skip), runs the tests and stops it. Missing binaries fail the run when
// Required.
func Main(m interface{ Run() int }, setup func(*rest.Config, error), crdDirs ...string) int {
	env, err := Start(crdDirs...)
	if err != nil {
		if Required() {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		skipBanner(err)
		setup(nil, err)
		return m.Run()
	}
	setup(env.Config, nil)
	defer func() { _ = env.Stop() }()
	return m.Run()
}

// API starts an API server for one test and stops it when the test ends. Without the binaries
// the test skips, loudly, or fails when Required.
func API(t testing.TB, crdDirs ...string) *Env {
	t.Helper()
	env, err := Start(crdDirs...)
	if err != nil {
		if Required() {
			t.Fatal(err)
		}
		skipBanner(err)
		t.Skipf("SKIPPED, no API server: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	return env
}

// skipBanner says that API-server tests are being skipped and how to run them: a green run
// without them is not the whole suite. `go test ./...` keeps a passing package's output to itself,
// so the banner goes to the terminal as well as to stderr (shown with -v, or for one package).
func skipBanner(err error) {
	msg := fmt.Sprintf("\n*** %s: the tests that need a Kubernetes API server are SKIPPED: %v\n*** run everything with hack/test.sh (it builds the "+
		"binaries once)\n\n",
		strings.TrimSuffix(filepath.Base(os.Args[0]), ".test"), err)
	fmt.Fprint(os.Stderr, msg)
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		fmt.Fprint(tty, msg)
		_ = tty.Close()
	}
}

// Eventually fails the test unless cond holds within the time given, checking it every 20 ms;
// what names the wait in the failure. The one way tests wait for something to happen.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
	}
}
