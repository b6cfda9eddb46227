package main

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/internal/compose/api"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// `up` and `fn provision` used to assemble provision twice, and `up --provider byo|aks|karpenter`
// refused a workspace with tuning.config that `fn provision` accepted. Both commands now build it
// through the same flags and the same assembly: run as the CLI runs them, against one cluster
// holding the ConfigMap, each plans the workspace, and the two plans are the same.
func TestUpAndFnProvisionPlanTuningConfigAlike(t *testing.T) {
	env := testenv.API(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig(), 0o600); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../examples/fine-tuning/kaito_workspace_tuning_phi_3_config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := kaito.SplitYAML(doc)
	if err != nil || len(docs) != 2 {
		t.Fatalf("example: %d documents, %v", len(docs), err)
	}
	cm, errs, err := api.DecodeConfigMap(docs[0], "default")
	if err != nil || len(errs) > 0 {
		t.Fatal(err, errs)
	}
	kube := kubernetes.NewForConfigOrDie(env.Config)
	if _, err := kube.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The user's own GPU node, as --provider byo expects one.
	if err := (testenv.Kubelet{Client: kube}).Node(ctx, "gpu-0", map[string]string{"app": "tuning-phi-3"}, true, 1); err != nil {
		t.Fatal(err)
	}
	wsFile := filepath.Join(t.TempDir(), "workspace.yaml")
	if err := os.WriteFile(wsFile, docs[1], 0o644); err != nil {
		t.Fatal(err)
	}
	ws, err := kaito.DecodeWorkspace(docs[1])
	if err != nil {
		t.Fatal(err)
	}
	ws.Namespace = "default"
	// The same driver flags for both; each command keeps its own defaults for the rest.
	drivers := []string{"--provider", "byo", "--kubeconfig", kubeconfig, "--preflight", "off", "--data-dir", t.TempDir(), "--log-level", "error"}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	run := func(args ...string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out, errb bytes.Buffer
			root := newRoot(&out, &errb)
			root.SetArgs(args)
			if err := root.ExecuteContext(runCtx); err != nil && runCtx.Err() == nil {
				t.Errorf("kaitoflow %s: %v\n%s", strings.Join(args[:2], " "), err, errb.String())
			}
		}()
	}

	// kaitoflow up, the workspace submitted through its API.
	upAddr := testenv.FreeAddr(t)
	run(append([]string{"up", "--listen", upAddr, "--nats-listen", "127.0.0.1:-1"}, drivers...)...)
	upURL := "http://" + upAddr
	waitHealthy(t, ctx, upURL)
	if out, stderr, err := cli(t, upURL, "submit", "-f", wsFile); err != nil {
		t.Fatalf("submit: %v\n%s%s", err, out, stderr)
	}
	client := &api.Client{BaseURL: upURL, HTTP: http.DefaultClient}
	var upPlan *events.Plan
	for upPlan == nil {
		w, err := client.Get(ctx, ws.Name)
		switch {
		case ctx.Err() != nil:
			t.Fatalf("up never planned the workspace: %+v %v", w, err)
		case err == nil && w.Failure != nil:
			t.Fatalf("up refused the workspace: %+v", w.Failure)
		case err == nil && w.Plan != nil:
			upPlan = w.Plan
		}
		time.Sleep(20 * time.Millisecond)
	}

	// kaitoflow fn provision on its own JetStream, handed the same workspace.requested.
	nats := testenv.NATSServer(t).ClientURL()
	fnAddr := testenv.FreeAddr(t)
	run(append([]string{"fn", "provision", "--transport", "jetstream", "--nats", nats, "--listen", fnAddr}, drivers...)...)
	waitHealthy(t, ctx, "http://"+fnAddr)
	js := testenv.JetStreamOn(t, nats)
	ev, err := events.New("kaitoflow/test", events.WorkspaceRequested, events.WorkspaceRequested, events.WorkspaceRef(ws), ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := (runtime.JetStreamPublisher{JS: js}).Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	pending, err := provision.OpenKVPending(ctx, js, runtime.Storage{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	var rec *provision.Record
	for rec == nil {
		if ctx.Err() != nil {
			t.Fatal("fn provision never recorded the workspace")
		}
		time.Sleep(20 * time.Millisecond)
		rec, _ = pending.Get(ctx, "default", ws.Name)
	}
	if rec.Plan.TrainingConfig != upPlan.TrainingConfig || rec.Plan.LoRARank != upPlan.LoRARank || rec.Plan.BatchSize != upPlan.BatchSize {
		t.Fatalf("the plans differ:\nup:\n%s\nfn provision:\n%s", upPlan.TrainingConfig, rec.Plan.TrainingConfig)
	}
	if !strings.Contains(rec.Plan.TrainingConfig, "r: 16") {
		t.Fatalf("the plan ignores the cluster's ConfigMap:\n%s", rec.Plan.TrainingConfig)
	}
}

func waitHealthy(t *testing.T, ctx context.Context, base string) {
	t.Helper()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/healthz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("%s never became healthy", base)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
