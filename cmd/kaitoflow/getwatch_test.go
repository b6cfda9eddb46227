package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/controller"
	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// getWatch runs `get workspaces -w` with args until the returned stop is called, its output in
// the buffer.
func getWatch(t *testing.T, server string, args ...string) (*testenv.SyncBuffer, func()) {
	t.Helper()
	var out testenv.SyncBuffer
	root := newRoot(&out, &out)
	root.SetArgs(append([]string{"--server", server, "get", "workspaces", "-w", "-o", "custom-columns=NAME:.metadata.name,PHASE:.status.phase"}, args...))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	return &out, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("get -w: %v\n%s", err, out.String())
		}
	}
}

// rows is out with each line's fields joined by one space, whatever the columns' widths.
func rows(out *testenv.SyncBuffer) string {
	var b strings.Builder
	for _, l := range strings.Split(out.String(), "\n") {
		b.WriteString(strings.Join(strings.Fields(l), " ") + "\n")
	}
	return b.String()
}

// get -w on a list follows the API's stream of the namespace: a workspace submitted after the
// watch began appears, and each phase it goes through is printed as it comes, with no polling.
func TestGetWatchListFollowsTheAPI(t *testing.T) {
	p, err := embedded.Start(context.Background(), embedded.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0",
		Functions: assembly.Config{Sim: assembly.Sim{Delay: 50 * time.Millisecond}}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// A workspace deleted before the watch began: the store keeps its record, which a list does
	// not show.
	seed := "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"
	doc, _ := os.ReadFile(seed)
	gone := filepath.Join(t.TempDir(), "gone.yaml")
	if err := os.WriteFile(gone, []byte(strings.Replace(string(doc), "workspace-tuning-phi-3", "gone", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := cli(t, p.URL, "submit", "-f", gone); err != nil {
		t.Fatalf("submit: %v %s", err, stderr)
	}
	if _, stderr, err := cli(t, p.URL, "wait", "gone", "--for=condition=WorkspaceReady", "--timeout=20s"); err != nil {
		t.Fatalf("wait: %v %s", err, stderr)
	}
	if _, stderr, err := cli(t, p.URL, "delete", "gone"); err != nil {
		t.Fatalf("delete: %v %s", err, stderr)
	}
	testenv.Eventually(t, 20*time.Second, "the deleted workspace to leave the list", func() bool {
		out, _, err := cli(t, p.URL, "get", "workspaces")
		return err == nil && !strings.Contains(out, "gone")
	})
	out, stop := getWatch(t, p.URL)
	defer stop()
	testenv.Eventually(t, 10*time.Second, "get -w to say the namespace is empty", func() bool {
		return strings.Contains(out.String(), "No resources found")
	})
	if _, stderr, err := cli(t, p.URL, "submit", "-f", seed); err != nil {
		t.Fatalf("submit: %v %s", err, stderr)
	}
	testenv.Eventually(t, 30*time.Second, "get -w to print the workspace Ready", func() bool {
		return strings.Contains(rows(out), "workspace-tuning-phi-3 Ready\n")
	})
	for _, want := range []string{"NAME PHASE\n", "workspace-tuning-phi-3 Pending\n"} {
		if !strings.Contains(rows(out), want) {
			t.Errorf("get -w printed no %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "gone") {
		t.Errorf("get -w printed the deleted workspace:\n%s", out.String())
	}
}

// get -w --kubeconfig on a list follows the API server's watch of the Workspace resources: a
// status change and a new resource are printed as they happen.
func TestGetWatchListFollowsTheCluster(t *testing.T) {
	env := testenvAPI(t)
	ctx := context.Background()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig(), 0o600); err != nil {
		t.Fatal(err)
	}
	ws := dynamic.NewForConfigOrDie(env.Config).Resource(controller.GVR("")).Namespace("default")
	doc, _ := os.ReadFile("../../examples/v1beta1/inference_phi_4_mini.yaml")
	create := func(name string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatal(err)
		}
		u.SetNamespace("default")
		u.SetName(name)
		c, err := ws.Create(ctx, u, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := create("first")
	out, stop := getWatch(t, "http://unused", "--kubeconfig", kubeconfig)
	defer stop()
	testenv.Eventually(t, 10*time.Second, "get -w to list the first workspace", func() bool { return strings.Contains(out.String(), "first") })

	first.Object["status"] = map[string]any{"phase": "Ready", "observedGeneration": int64(1)}
	if _, err := ws.UpdateStatus(ctx, first, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	create("second")
	testenv.Eventually(t, 10*time.Second, "get -w to print the status change and the new workspace", func() bool {
		s := rows(out)
		return strings.Contains(s, "first Ready\n") && strings.Contains(s, "second")
	})
}
