//go:build faults

package faults

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision/karpenter"
	"github.com/kaitoflow/kaitoflow/functions/serve/knative"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/functions/tune/jobs"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

var (
	count    = flag.Int("faults.workspaces", 200, "workspaces to run through the faults")
	maxKills = flag.Int("faults.kills", 10, "how many times the pipeline is killed")
	env      *testenv.Env
	binary   string
	envErr   error
	workDir  string
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		dir, err := os.MkdirTemp("", "kaitoflow-faults-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		workDir = dir
		binary = filepath.Join(dir, "kaitoflow")
		build := exec.Command("go", "build", "-o", binary, "../cmd/kaitoflow")
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build kaitoflow:", err)
			return 1
		}
		kp, err := testenv.ModuleDir("sigs.k8s.io/karpenter", "v1.14.1")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		kn, err := testenv.ModuleDir("knative.dev/serving", "v0.50.0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		env, envErr = testenv.Start(filepath.Join(kp, "pkg", "apis", "crds"), filepath.Join(kn, "config", "core", "300-resources"))
		if envErr != nil {
			if testenv.Required() {
				fmt.Fprintln(os.Stderr, envErr)
				return 1
			}
			return m.Run()
		}
		defer func() { _ = env.Stop() }()
		return m.Run()
	}()
	os.Exit(code)
}

// natsServer is the bus, on a fixed port and store so it can be stopped and started again.
type natsServer struct {
	t     *testing.T
	port  int
	store string
	mu    sync.Mutex
	ns    *server.Server
}

func (n *natsServer) start() {
	n.t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: n.port, JetStream: true, StoreDir: n.store, NoSigs: true, NoLog: true})
	if err != nil {
		n.t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(20 * time.Second) {
		n.t.Fatal("nats not ready")
	}
	n.mu.Lock()
	n.ns, n.port = ns, ns.Addr().(*net.TCPAddr).Port
	n.mu.Unlock()
}

func (n *natsServer) stop() {
	n.mu.Lock()
	ns := n.ns
	n.mu.Unlock()
	ns.Shutdown()
	ns.WaitForShutdown()
}

// counter counts side effects per workspace.
type counter struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counter) add(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[key]++
}

func (c *counter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

// manifests counts manifest pushes at the registry: every PUT, and the distinct digests per
// repository.
type manifests struct {
	mu      sync.Mutex
	puts    map[string]int
	digests map[string]map[string]bool
}

func (m *manifests) wrap(h http.Handler) http.Handler {
	m.puts, m.digests = map[string]int{}, map[string]map[string]bool{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			repo := strings.TrimPrefix(r.URL.Path[:strings.Index(r.URL.Path, "/manifests/")], "/v2/")
			// The adapter image is pushed by its tag; the provenance record and the referrers
			// index go by digest and by a sha256-… tag.
			if ref := r.URL.Path[strings.Index(r.URL.Path, "/manifests/")+len("/manifests/"):]; ref == "0.0.1" {
				sum := sha256.Sum256(body)
				m.mu.Lock()
				m.puts[repo]++
				if m.digests[repo] == nil {
					m.digests[repo] = map[string]bool{}
				}
				m.digests[repo]["sha256:"+hex.EncodeToString(sum[:])] = true
				m.mu.Unlock()
			}
		}
		h.ServeHTTP(w, r)
	})
}

// One NATS server, one pipeline process: it is SIGKILLed and NATS restarted under it.
func TestFaults(t *testing.T) {
	runFaults(t, false)
}

// A three-server JetStream cluster with an R3 stream and buckets, and two competing pipeline
// processes: the stream's leader is stopped and started again, and a pipeline replica SIGKILLed,
// again and again.
func TestFaultsCluster(t *testing.T) {
	runFaults(t, true)
}

func runFaults(t *testing.T, cluster bool) {
	if env == nil {
		t.Skipf("no API server: %v", envErr)
	}
	n := *count
	started := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	admin := kubernetes.NewForConfigOrDie(env.Config)
	dyn := dynamic.NewForConfigOrDie(env.Config)
	// Each run has its own namespace, names and files: the API server outlives the first.
	ns, prefix, workDir := "faults", "ws", filepath.Join(workDir, "single")
	if cluster {
		ns, prefix, workDir = "faults-cluster", "wc", filepath.Join(filepath.Dir(workDir), "cluster")
	}
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The bus, with file storage: one server, or a cluster of three.
	var natsURL string
	var restartNATS func() string
	replicas := 1
	if cluster {
		c := testenv.StartNATSCluster(t)
		natsURL, replicas = c.URL(), 3
		restartNATS = func() string {
			leader := c.StreamLeader(runtime.StreamName)
			if leader < 0 {
				leader = 0
			}
			c.Stop(leader)
			time.Sleep(2 * time.Second)
			c.Start(leader)
			return fmt.Sprintf("stream leader (server %d) stopped and started again", leader)
		}
	} else {
		bus := &natsServer{t: t, port: -1, store: filepath.Join(workDir, "jetstream")}
		bus.start()
		defer bus.stop()
		natsURL = fmt.Sprintf("nats://127.0.0.1:%d", bus.port)
		restartNATS = func() string {
			bus.stop()
			time.Sleep(2 * time.Second)
			bus.start()
			return "NATS stopped and started again"
		}
	}

	// The registry standing in for ACR, counting manifest pushes.
	var pushed manifests
	reg := httptest.NewServer(pushed.wrap(registry.New(registry.Logger(log.New(io.Discard, "", 0)))))
	defer reg.Close()
	regHost := strings.TrimPrefix(reg.URL, "http://")

	// The cluster's controllers, played by the test: Karpenter launches a node for each NodeClaim,
	// the Job controller and kubelet run each Job (job-run's layer upload included), Knative marks
	// each Service revision Ready. They also count what kaitoflow created.
	var claims, jobsCreated, services counter
	playCluster(ctx, t, admin, dyn, ns, regHost, &claims, &jobsCreated, &services)

	kubeconfig := filepath.Join(workDir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig(), 0o600); err != nil {
		t.Fatal(err)
	}
	// The pipeline: one process, or two competing replicas of every function.
	procs := 1
	if cluster {
		procs = 2
	}
	var apiAddrs []string
	for range procs {
		apiAddrs = append(apiAddrs, testenv.FreeAddr(t))
	}
	logFile, err := os.Create(filepath.Join(workDir, "kaitoflow.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// On any failure, t.Fatal included, the pipeline's own account of it.
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			var warn []string
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
					warn = append(warn, l)
				}
			}
			t.Logf("the pipeline's last warnings:\n%s", strings.Join(warn[max(0, len(warn)-40):], "\n"))
		}
	}()
	var kills, starts atomic.Int64
	var childMu sync.Mutex
	children := make([]*exec.Cmd, procs)
	startChild := func(i int) {
		c := exec.Command(binary, "up", "--nats", natsURL, "--replicas", strconv.Itoa(replicas), "--registry", regHost, "--listen", apiAddrs[i],
			"--data-dir", filepath.Join(workDir, "data-"+strconv.Itoa(i)),
			"--provider", "karpenter", "--trainer", "job", "--deployer", "knative", "--kubeconfig", kubeconfig,
			// Stand-in image names: the box's kubelet is kwok, which pulls nothing.
			"--trainer-image", "example.azurecr.io/kaitoflow/trainer:test", "--wrapper-image", "example.azurecr.io/kaitoflow/kaitoflow:test",
			"--proxy-image", "example.azurecr.io/kaitoflow/kaitoflow:test",
			"--delay", "0", "--tick", "3s", "--ack-wait", "2s", "--max-deliver", "50", "--retry-backoff", "200ms,1s,3s", "--preflight", "off", "--log-format", "json")
		c.Stdout, c.Stderr = logFile, logFile
		if err := c.Start(); err != nil {
			t.Error(err)
			return
		}
		starts.Add(1)
		childMu.Lock()
		children[i] = c
		childMu.Unlock()
	}
	for i := range procs {
		startChild(i)
	}
	defer func() {
		childMu.Lock()
		defer childMu.Unlock()
		for _, c := range children {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()

	// Every event a second time: a copy of each is stored under another id, so each function gets
	// it twice.
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var duplicated atomic.Int64
	dup, err := nc.Subscribe(events.SubjectPrefix+">", func(m *nats.Msg) {
		if strings.HasPrefix(m.Subject, events.DeadLetterPrefix) || m.Header.Get("Kaitoflow-Fault") != "" || m.Header.Get("ce-id") == "" {
			return
		}
		cp := nats.NewMsg(m.Subject)
		cp.Data = m.Data
		for k, v := range m.Header {
			cp.Header[k] = v
		}
		cp.Header.Set("Nats-Msg-Id", m.Header.Get("Nats-Msg-Id")+"#again")
		cp.Header.Set("Kaitoflow-Fault", "again")
		if _, err := js.PublishMsgAsync(cp); err == nil {
			duplicated.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dup.Unsubscribe()

	// Submit every workspace twice, through whichever child is alive.
	seed, err := os.ReadFile("../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	if err != nil {
		t.Fatal(err)
	}
	name := func(i int) string { return fmt.Sprintf("%s-%03d", prefix, i) }
	submitted := make(chan struct{})
	go func() {
		defer close(submitted)
		for i := range n {
			doc := strings.NewReplacer("workspace-tuning-phi-3", name(i), "ACR_REPO_HERE.azurecr.io/IMAGE_NAME_HERE:0.0.1", "example.azurecr.io/adapters/"+name(i)+":0.0.1",
				"ACR_REGISTRY_SECRET_HERE", "acr-push").Replace(string(seed))
			for k := range 2 {
				for try := 0; ctx.Err() == nil; try++ {
					// Through whichever pipeline process answers.
					resp, err := http.Post("http://"+apiAddrs[(i+k+try)%procs]+"/v1/workspaces?namespace="+ns, "application/yaml", strings.NewReader(doc))
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode < 300 {
							break
						}
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}
	}()

	// The status store, read from here.
	store, err := status.Open(ctx, js, runtime.Storage{Replicas: replicas})
	if err != nil {
		t.Fatal(err)
	}
	// progress reads every record, on a context of its own: the report after the deadline still
	// names what each stuck workspace waits in.
	progress := func() (ready, failed int, stuck []string) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for i := range n {
			w, err := store.Get(rctx, ns, name(i))
			switch {
			case err == nil && w.Phase == status.Ready && w.Endpoint != "":
				ready++
			case err == nil && w.Phase == status.Failed:
				failed++
			default:
				if err == nil {
					last := ""
					if len(w.Events) > 0 {
						last = " after " + strings.TrimPrefix(w.Events[len(w.Events)-1].Type, events.SubjectPrefix)
					}
					stuck = append(stuck, name(i)+"="+string(w.Phase)+last)
				} else {
					stuck = append(stuck, name(i)+"=missing")
				}
			}
		}
		return
	}

	// The faults: SIGKILL the pipeline at random moments (*kills times, 4 to 9 s apart, so it
	// makes progress between them) and start it again; stop NATS once and start it again on the
	// same store.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	restartedNATS := ""
	for {
		time.Sleep(time.Duration(4000+rng.IntN(5000)) * time.Millisecond)
		ready, failed, stuck := progress()
		t.Logf("%d ready, %d failed, %d in flight; %d kills, NATS restarted %q", ready, failed, len(stuck), kills.Load(), restartedNATS)
		if len(stuck) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("not finished: %v", stuck[:min(len(stuck), 20)])
		}
		if restartedNATS == "" && ready+failed >= n/3 {
			restartedNATS = restartNATS()
			continue
		}
		if kills.Load() < int64(*maxKills) && ready+failed < n*9/10 { // let the last workspaces finish without faults
			i := int(kills.Load()) % procs
			childMu.Lock()
			_ = children[i].Process.Signal(syscall.SIGKILL)
			_ = children[i].Wait()
			childMu.Unlock()
			kills.Add(1)
			startChild(i)
		}
	}
	<-submitted

	// Exactly once per workspace generation, counted where it happened.
	ready, failed, _ := progress()
	var reasons []string
	for i := range n {
		if w, err := store.Get(ctx, ns, name(i)); err == nil && w.Phase == status.Failed {
			reasons = append(reasons, name(i)+": "+w.Failure.Reason+": "+w.Failure.Message)
			if w.Failure.Reason == "" {
				t.Errorf("%s failed without a reason", name(i))
			}
		}
	}
	check := func(what string, got map[string]int) (once, more, none int) {
		for i := range n {
			switch c := got[name(i)]; {
			case c == 1:
				once++
			case c > 1:
				more++
				t.Errorf("%s: %s %d times", name(i), what, c)
			default:
				none++
			}
		}
		return
	}
	cOnce, cMore, cNone := check("NodeClaim created", claims.snapshot())
	jOnce, jMore, jNone := check("Job created", jobsCreated.snapshot())
	sOnce, sMore, sNone := check("Knative Service created", services.snapshot())
	pushed.mu.Lock()
	pushes := map[string]int{}
	mOnce, mMore, puts := 0, 0, 0
	for i := range n {
		repo := "adapters/" + name(i)
		puts += pushed.puts[repo]
		switch d := len(pushed.digests[repo]); {
		case d == 1:
			mOnce++
		case d > 1:
			mMore++
			t.Errorf("%s: %d different manifests pushed", name(i), d)
		}
		pushes[name(i)] = pushed.puts[repo]
	}
	pushed.mu.Unlock()
	elapsed := time.Since(started)
	t.Logf("\n%d workspaces, each submitted twice; %d events delivered a second time; %d pipeline process(es), SIGKILLed %d times (%d starts); NATS: %d server(s), R%d, %s\n"+
		"outcome: %d Ready, %d Failed, %d missing\n"+
		"side effect                 once   more than once   never\n"+
		"NodeClaims (API server)     %4d   %14d   %5d\n"+
		"Jobs (API server)           %4d   %14d   %5d\n"+
		"Knative Services            %4d   %14d   %5d\n"+
		"adapter manifests (digest)  %4d   %14d   %5d   (%d PUTs in all)",
		n, duplicated.Load(), procs, kills.Load(), starts.Load(), map[bool]int{false: 1, true: 3}[cluster], replicas, restartedNATS, ready, failed, n-ready-failed,
		cOnce, cMore, cNone, jOnce, jMore, jNone, sOnce, sMore, sNone, mOnce, mMore, n-mOnce-mMore, puts)
	t.Logf("throughput under faults: %d workspaces in %s, %.2f workspaces/s", n, elapsed.Round(time.Second), float64(n)/elapsed.Seconds())
	if cluster {
		// The processes started with --replicas 3 against what they created: still R3.
		st, err := js.Stream(ctx, runtime.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream replicas %d after the run, want 3", r)
		}
	}
	for _, r := range reasons {
		t.Log("failed: " + r)
	}
	if ready+failed != n {
		t.Errorf("%d workspaces neither Ready nor Failed", n-ready-failed)
	}
	if ready != n {
		t.Errorf("%d workspaces failed; with sim-free drivers and a cluster that always succeeds, every one should be Ready", failed)
	}
	if cNone+jNone+sNone > 0 || mOnce != ready {
		t.Errorf("Ready workspaces without their side effects: claims %d, jobs %d, services %d, manifests %d of %d", cOnce, jOnce, sOnce, mOnce, ready)
	}
}

// playCluster runs Karpenter, the Job controller with the kubelet, and Knative, as far as
// kaitoflow can tell, and counts what kaitoflow creates.
func playCluster(ctx context.Context, t *testing.T, admin kubernetes.Interface, dyn dynamic.Interface, ns, regHost string, claims, jobsCreated, services *counter) {
	t.Helper()
	factory := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	work := make(chan func(), 4096)
	for range 4 {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case f := <-work:
					f()
				}
			}
		}()
	}
	retry := func(f func() error) {
		for ctx.Err() == nil {
			if err := f(); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Karpenter: a Ready GPU node with the NodeClaim's labels.
	_, _ = factory.ForResource(karpenter.NodeClaims).Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
		u := obj.(*unstructured.Unstructured)
		// Only this run's: an earlier run's objects stay in the API server, and playing them
		// again would keep the workers from this run's.
		if u.GetLabels()[events.LabelNamespace] != ns {
			return
		}
		claims.add(u.GetLabels()[events.LabelWorkspace])
		work <- func() {
			retry(func() error {
				return (testenv.Kubelet{Client: admin}).Node(ctx, u.GetName(), u.GetLabels(), true, 1)
			})
		}
	}})
	// The Job controller and the kubelet: job-run uploads the layer, the pod succeeds with the
	// summary, the Job completes.
	dir := t.TempDir()
	files := testenv.Adapter(t, dir)
	layer, err := adapter.Layer(dir, files)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := adapter.Describe(layer)
	if err != nil {
		t.Fatal(err)
	}
	jobInformer := cache.NewSharedInformer(cache.NewListWatchFromClient(admin.BatchV1().RESTClient(), "jobs", metav1.NamespaceAll, fields.Everything()), &batchv1.Job{}, 0)
	_, _ = jobInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
		j := obj.(*batchv1.Job)
		if j.Namespace != ns {
			return
		}
		jobsCreated.add(j.Labels[events.LabelWorkspace])
		work <- func() { runJob(ctx, t, admin, j.DeepCopy(), regHost, layer, blob, files, retry) }
	}})
	// Knative: every new spec of a Service becomes a Ready revision.
	markReady := func(u *unstructured.Unstructured) {
		if og, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration"); og == u.GetGeneration() || u.GetNamespace() != ns {
			return
		}
		work <- func() {
			retry(func() error {
				cur, err := dyn.Resource(knative.Services).Namespace(u.GetNamespace()).Get(ctx, u.GetName(), metav1.GetOptions{})
				if err != nil {
					return err
				}
				rev := fmt.Sprintf("%s-%05d", cur.GetName(), cur.GetGeneration())
				cur.Object["status"] = map[string]any{"observedGeneration": cur.GetGeneration(), "url": "http://" + cur.GetName() + "." + cur.GetNamespace() + ".example.com",
					"latestCreatedRevisionName": rev, "latestReadyRevisionName": rev,
					"conditions": []any{map[string]any{"type": "Ready", "status": "True", "lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}}}
				_, err = dyn.Resource(knative.Services).Namespace(cur.GetNamespace()).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
				return err
			})
		}
	}
	_, _ = factory.ForResource(knative.Services).Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			u := obj.(*unstructured.Unstructured)
			if u.GetNamespace() != ns {
				return
			}
			services.add(u.GetLabels()[events.LabelWorkspace])
			markReady(u)
		},
		UpdateFunc: func(_, obj any) { markReady(obj.(*unstructured.Unstructured)) },
	})
	factory.Start(ctx.Done())
	go jobInformer.Run(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), jobInformer.HasSynced)
}

func runJob(ctx context.Context, t *testing.T, admin kubernetes.Interface, j *batchv1.Job, regHost string, layer v1.Layer, blob events.Blob, files []events.AdapterFile, retry func(func() error)) {
	var run tune.Job
	if err := json.Unmarshal([]byte(j.Annotations[jobs.AnnotationRun]), &run); err != nil {
		t.Errorf("Job %s: %v", j.Name, err)
		return
	}
	target, err := adapter.Rewrite(regHost, run.Workspace.Tuning.Output.Image)
	if err != nil {
		t.Errorf("Job %s: %v", j.Name, err)
		return
	}
	retry(func() error { return remote.WriteLayer(target.Context(), layer) })
	summary, _ := json.Marshal(jobrun.Summary{Location: target.Context().String(), Files: files, Layer: &blob})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: j.Name + "-pod", Namespace: j.Namespace, Labels: j.Spec.Template.Labels},
		Spec: corev1.PodSpec{NodeName: "node", RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "trainer", Image: "trainer"}}}}
	retry(func() error {
		p, err := admin.CoreV1().Pods(j.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			if p, err = admin.CoreV1().Pods(j.Namespace).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil {
				return err
			}
		}
		now := metav1.Now()
		p.Status = corev1.PodStatus{Phase: corev1.PodSucceeded, StartTime: &now, ContainerStatuses: []corev1.ContainerStatus{{Name: "trainer",
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", Message: string(summary)}}}}}
		_, err = admin.CoreV1().Pods(j.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	retry(func() error {
		cur, err := admin.BatchV1().Jobs(j.Namespace).Get(ctx, j.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		cur.Status = batchv1.JobStatus{StartTime: &now, CompletionTime: &now, Succeeded: 1, Conditions: []batchv1.JobCondition{
			{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
		_, err = admin.BatchV1().Jobs(j.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}
