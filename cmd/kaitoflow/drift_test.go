package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/internal/api"
	"github.com/kaitoflow/kaitoflow/internal/assembly"
	"github.com/kaitoflow/kaitoflow/internal/embedded"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// `up` and `fn provision` used to assemble provision twice, and `up --provider byo|aks|karpenter`
// refused a workspace with tuning.config that `fn provision` accepted. Both now go through the
// same flags and the same assembly: against one cluster holding the ConfigMap, each plans the
// workspace, and the two plans are the same.
func TestUpAndFnProvisionPlanTuningConfigAlike(t *testing.T) {
	env := testenv.API(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig(), 0o600); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../examples/fine-tuning/kaito_workspace_tuning_phi_3_config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := events.SplitYAML(doc)
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
	ws, err := events.DecodeWorkspace(docs[1])
	if err != nil {
		t.Fatal(err)
	}
	ws.Namespace = "default"
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// Each command's own flags: up defaults --preflight to warn, fn to enforce; preflight is off
	// here (the dataset URL is not reachable from a test).
	configFor := func(preflightDefault string) assembly.Config {
		var d driverFlags
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		d.register(fs, preflightDefault)
		if err := fs.Parse([]string{"--provider", "byo", "--kubeconfig", kubeconfig, "--preflight", "off", "--data-dir", t.TempDir()}); err != nil {
			t.Fatal(err)
		}
		cfg, err := d.config(false)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Logger = quiet
		return cfg
	}

	// up: the embedded pipeline, the workspace submitted through its API.
	p, err := embedded.Start(ctx, embedded.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: quiet, Functions: configFor("warn")})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := (&api.Client{BaseURL: p.URL}).Submit(ctx, docs[1], false); err != nil {
		t.Fatal(err)
	}
	var up *status.Workspace
	for up == nil || (up.Plan == nil && up.Phase != status.Failed) {
		if ctx.Err() != nil {
			t.Fatalf("up never planned the workspace: %+v", up)
		}
		time.Sleep(20 * time.Millisecond)
		up, _ = p.Store.Get(ctx, "default", ws.Name)
	}
	if up.Phase == status.Failed {
		t.Fatalf("up refused the workspace: %+v", up.Failure)
	}

	// fn provision: the one function, handed the same workspace.requested.
	cfg := configFor("enforce")
	cfg.Functions, cfg.JetStream = []string{provision.Name}, testenv.JetStream(t)
	a, err := assembly.Build(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := events.New("kaitoflow/test", events.WorkspaceRequested, events.WorkspaceRequested, ws.Ref(), ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Functions[0].Handler.Handle(ctx, ev); err != nil {
		t.Fatalf("fn provision refused the workspace: %v", err)
	}
	pending, err := provision.OpenKVPending(ctx, cfg.JetStream)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := pending.Get(ctx, "default", ws.Name)
	if err != nil || rec == nil {
		t.Fatalf("fn provision recorded nothing: %v", err)
	}
	if rec.Plan.TrainingConfig != up.Plan.TrainingConfig || rec.Plan.LoRARank != up.Plan.LoRARank || rec.Plan.BatchSize != up.Plan.BatchSize {
		t.Fatalf("the plans differ:\nup:\n%s\nfn provision:\n%s", up.Plan.TrainingConfig, rec.Plan.TrainingConfig)
	}
	if !strings.Contains(rec.Plan.TrainingConfig, "r: 16") {
		t.Fatalf("the plan ignores the cluster's ConfigMap:\n%s", rec.Plan.TrainingConfig)
	}
}
