package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// Kaito's docs ship a ConfigMap and the Workspace naming it in one file: `submit -f` stores the
// ConfigMap, tuning.config resolves in `up` as it would against an API server, and the plan
// carries the ConfigMap's settings; a workspace naming a ConfigMap that does not exist is refused
// at submit with the field and the name; a bad ConfigMap starts nothing.
func TestSubmitConfigMapWithWorkspace(t *testing.T) {
	ctx := context.Background()
	p, err := embedded.Start(ctx, embedded.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
		Functions: assembly.Config{Sim: assembly.Sim{Delay: 20 * time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	file := "../../examples/fine-tuning/kaito_workspace_tuning_phi_3_config.yaml"
	const name = "workspace-tuning-phi-3-config"

	out, stderr, err := cli(t, p.URL, "submit", "-f", file)
	if err != nil || !strings.Contains(out, "configmap/phi-3-qlora-params configured") || !strings.Contains(out, "workspace.kaito.sh/"+name+" submitted") {
		t.Fatalf("submit: %v\n%s%s", err, out, stderr)
	}
	if out, _, err := cli(t, p.URL, "watch", name); err != nil {
		t.Fatalf("watch: %v\n%s", err, out)
	}
	rec, err := p.Store.Get(ctx, "default", name)
	if err != nil || rec.Phase != status.Ready {
		t.Fatalf("%+v %v", rec, err)
	}
	for _, want := range []string{"r: 16", "lora_alpha: 32", "learning_rate: 0.00015", "num_train_epochs: 2"} {
		if !strings.Contains(rec.Plan.TrainingConfig, want) {
			t.Errorf("the plan's training config lacks the ConfigMap's %q:\n%s", want, rec.Plan.TrainingConfig)
		}
	}
	if rec.Plan.LoRARank != 16 {
		t.Errorf("plan LoRA rank %d, want the ConfigMap's 16", rec.Plan.LoRARank)
	}

	// Submitting the same file again changes nothing.
	out, _, err = cli(t, p.URL, "submit", "-f", file)
	if err != nil || !strings.Contains(out, "configmap/phi-3-qlora-params unchanged") || !strings.Contains(out, name+" unchanged") {
		t.Fatalf("resubmit: %v\n%s", err, out)
	}

	out, _, err = cli(t, p.URL, "get", "configmaps")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME DATA AGE" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "phi-3-qlora-params 1 ") {
		t.Fatalf("get configmaps: %v\n%s", err, out)
	}
	out, _, err = cli(t, p.URL, "get", "cm", "phi-3-qlora-params", "-o", "yaml")
	if err != nil || !strings.Contains(out, "training_config.yaml: |") {
		t.Fatalf("get cm -o yaml: %v\n%s", err, out)
	}

	// A workspace naming a ConfigMap that does not exist: failed, with the field and the name.
	doc, _ := os.ReadFile(file)
	ws := strings.SplitN(string(doc), "---\n", 2)[1]
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	ws = strings.NewReplacer("config: phi-3-qlora-params", "config: no-such-params", name, "ws-missing-config").Replace(ws)
	if err := os.WriteFile(missing, []byte(ws), 0o644); err != nil {
		t.Fatal(err)
	}
	// Refused at submit by the fit check, which reads it, not accepted to fail later.
	_, stderr, err = cli(t, p.URL, "submit", "-f", missing)
	if err == nil || !strings.Contains(stderr, "tuning.config") || !strings.Contains(stderr, "default/no-such-params") {
		t.Fatalf("a missing ConfigMap: submit %v %q", err, stderr)
	}
	if _, err := p.Store.Get(ctx, "default", "ws-missing-config"); !errors.Is(err, status.ErrNotFound) {
		t.Fatalf("a workspace refused at submit got a status record: %v", err)
	}

	// A ConfigMap with a key the API server would refuse: the file starts nothing.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	badDoc := strings.NewReplacer("training_config.yaml: |", "training config?: |", "phi-3-qlora-params", "bad-params", name, "ws-bad-config").Replace(string(doc))
	if err := os.WriteFile(bad, []byte(badDoc), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, err = cli(t, p.URL, "submit", "-f", bad)
	var ex exitError
	if !errors.As(err, &ex) || !strings.Contains(stderr, "document 1") || !strings.Contains(stderr, "data[training config?]") {
		t.Fatalf("bad ConfigMap: %v %q", err, stderr)
	}
	if _, err := p.Store.Get(ctx, "default", "ws-bad-config"); !errors.Is(err, status.ErrNotFound) {
		t.Fatalf("a file with a bad ConfigMap started its workspace: %v", err)
	}
}
