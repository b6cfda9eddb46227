package embedded

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// The seed workspace on your own nodes: nothing happens until the cluster has a Ready node with
// its GPU; the kubelet's status update reaches provision as a kaitoflow.node.changed event and
// the pipeline runs to Ready.
func TestSeedOnExistingNodesWaitsForTheGPU(t *testing.T) {
	if kube == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	p, err := Start(ctx, Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: log,
		Delivery:     runtime.JetStreamOptions{AckWait: 5 * time.Second, Backoff: []time.Duration{50 * time.Millisecond}},
		TickInterval: time.Hour, // only the node watch may wake provision up in this test
		Functions: assembly.Config{
			Drivers: assembly.Drivers{Provider: "byo"},
			Cluster: func(string) (*rest.Config, error) { return kubeCfg, nil },
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	kl := testenv.Kubelet{Client: kube}
	// The user's node, labelled as the seed's labelSelector asks and — so the watch sees it — as
	// kaitoflow's workspace; the GPU is not advertised yet.
	lbls := map[string]string{"app": "tuning-phi-3", provision.LabelWorkspace: "workspace-tuning-phi-3", provision.LabelNamespace: "default"}
	if err := kl.Node(ctx, "gpu-node-0", lbls, true, 0); err != nil {
		t.Fatal(err)
	}
	doc, _ := os.ReadFile(seedPath)
	if code, body := submit(t, p, doc); code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, body)
	}
	time.Sleep(500 * time.Millisecond)
	w, err := p.Store.Get(ctx, "default", "workspace-tuning-phi-3")
	if err != nil || w.Phase != status.Provisioning {
		t.Fatalf("before the GPU appears: %+v %v", w, err)
	}
	// The device plugin comes up: nvidia.com/gpu becomes allocatable.
	if err := kl.Node(ctx, "gpu-node-0", lbls, true, 1); err != nil {
		t.Fatal(err)
	}
	w = waitTerminal(t, p, "default", "workspace-tuning-phi-3", 30*time.Second)
	if w.Phase != status.Ready {
		t.Fatalf("phase %s failure %+v", w.Phase, w.Failure)
	}
	if len(w.Nodes) != 1 || w.Nodes[0] != "gpu-node-0" {
		t.Errorf("nodes %v", w.Nodes)
	}
	for _, e := range w.Events {
		if e.Type == events.NodeReady && !strings.Contains(e.Note, "via byo") {
			t.Errorf("node.ready note %q", e.Note)
		}
	}
}
