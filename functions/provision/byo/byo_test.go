package byo

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/provision/nodes"
	"github.com/kaitoflow/kaitoflow/internal/kubeclient"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/presets"
)

var (
	kube    kubernetes.Interface
	kubeErr error
	// reader is the narrow client provision reads Nodes with.
	reader *kubeclient.Client
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(cfg *rest.Config, err error) {
		if kubeErr = err; cfg != nil {
			kube = kubernetes.NewForConfigOrDie(cfg)
			if reader, err = kubeclient.New(cfg); err != nil {
				kubeErr, kube = err, nil
			}
		}
	}))
}

func setup(t *testing.T) *Provider {
	t.Helper()
	if kube == nil {
		t.Skipf("no API server: %v", kubeErr)
	}
	return &Provider{Nodes: &nodes.Checker{Client: reader}, Log: slog.New(slog.DiscardHandler)}
}

func request(app string, count int, preferred ...string) provision.Request {
	ws := kaito.Workspace{}
	ws.Name = "ws-" + app
	ws.Resource.Count = &count
	ws.Resource.LabelSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
	ws.Resource.PreferredNodes = preferred
	return provision.Request{Ref: events.Ref{Namespace: "default", Name: ws.Name, Generation: 1}, Workspace: ws, Purpose: provision.Tuning,
		Plan: events.Plan{InstanceType: "Standard_NC6s_v3", GPUs: 1, GPUMemoryGiB: 16}}
}

func TestBYO(t *testing.T) {
	p := setup(t)
	ctx := context.Background()
	kl := testenv.Kubelet{Client: kube}
	req := request("byo", 2)

	_, err := p.Check(ctx, req)
	if pe, ok := events.AsPermanent(err); !ok || !strings.Contains(pe.Err.Error(), "0 node(s) match") {
		t.Fatalf("no nodes at all must be a clear error: %v", err)
	}
	for i := range 2 {
		if err := kl.Node(ctx, fmt.Sprintf("byo-%d", i), map[string]string{"app": "byo"}, i == 0, 1); err != nil {
			t.Fatal(err)
		}
	}
	c, err := p.Check(ctx, req)
	if err != nil || c.Ready || !strings.Contains(c.Waiting, "byo-1: not Ready") {
		t.Fatalf("one node not Ready: %+v %v", c, err)
	}
	if err := kl.Node(ctx, "byo-1", map[string]string{"app": "byo"}, true, 1); err != nil {
		t.Fatal(err)
	}
	if c, err = p.Check(ctx, req); err != nil || !c.Ready || len(c.Nodes) != 2 {
		t.Fatalf("ready: %+v %v", c, err)
	}
	// preferredNodes narrows the choice.
	if _, err := p.Check(ctx, request("byo", 2, "byo-0")); err == nil {
		t.Fatal("two nodes wanted among one preferred node")
	}
	if c, err := p.Check(ctx, request("byo", 1, "byo-1")); err != nil || c.Nodes[0].Name != "byo-1" {
		t.Fatalf("preferred: %+v %v", c, err)
	}
}

// A workspace whose nodes never get their GPUs fails at the deadline, with that reason.
func TestNodesWithoutGPUsFailAtTheDeadline(t *testing.T) {
	p := setup(t)
	ctx := context.Background()
	if err := (testenv.Kubelet{Client: kube}).Node(ctx, "nogpu-0", map[string]string{"app": "nogpu"}, true, 0); err != nil {
		t.Fatal(err)
	}
	cat, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	f := provision.New(p, &presets.Planner{Catalog: cat}, &provision.MemoryPending{}, provision.Options{Deadline: 10 * time.Minute, Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler)})

	doc, err := os.ReadFile("../../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := kaito.DecodeWorkspace([]byte(strings.Replace(string(doc), "app: tuning-phi-3", "app: nogpu", 1)))
	if err != nil {
		t.Fatal(err)
	}
	ref := events.Ref{Namespace: "default", Name: ws.Name, Generation: 1}
	out, err := f.Handle(ctx, events.Must(events.New("test", events.WorkspaceRequested, events.WorkspaceRequested, ref, ws, nil)))
	if err != nil || len(out) != 0 {
		t.Fatalf("requested: %v %v", out, err)
	}
	tick := cloudevents.NewEvent()
	tick.SetID("t")
	tick.SetSource("test")
	tick.SetType(events.Tick)
	now = now.Add(11 * time.Minute)
	out, err = f.Handle(ctx, tick)
	if err != nil || len(out) != 1 {
		t.Fatalf("tick after the deadline: %v %v", out, err)
	}
	var d events.WorkspaceFailedData
	if err := events.Data(out[0], &d); err != nil {
		t.Fatal(err)
	}
	if d.Reason != provision.ReasonCapacityTimeout || !strings.Contains(d.Message, "nogpu-0: nvidia.com/gpu 0 of 1 allocatable") {
		t.Errorf("failure %+v", d)
	}
}
