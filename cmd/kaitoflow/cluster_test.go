package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/internal/compose/controller"
)

// get, watch, chat --url and delete with --kubeconfig read the cluster's Workspace resources
// (a real API server with the CRD) and the Events recorded on them, as the controller writes
// them: here the test writes the status and Events the controller would.
func TestCLIAgainstACluster(t *testing.T) {
	env := testenvAPI(t)
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(env.Config)
	kube := kubernetes.NewForConfigOrDie(env.Config)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig(), 0o600); err != nil {
		t.Fatal(err)
	}
	doc, _ := os.ReadFile("../../examples/v1beta1/inference_phi_4_mini.yaml")
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(doc, &u.Object); err != nil {
		t.Fatal(err)
	}
	u.SetNamespace("default")
	ws := dyn.Resource(controller.GVR("")).Namespace("default")
	created, err := ws.Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	created.Object["status"] = map[string]any{"phase": "Deploying", "state": "Running", "targetNodeCount": int64(1), "observedGeneration": int64(1),
		"conditions": []any{map[string]any{"type": "ResourceReady", "status": "True", "reason": "NodesReady", "message": "1 node", "lastTransitionTime": now.UTC().Format(time.RFC3339)}}}
	if _, err := ws.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	event := func(reason, msg string) {
		e := &corev1.Event{ObjectMeta: metav1.ObjectMeta{GenerateName: "workspace-phi-4-mini.", Namespace: "default"},
			InvolvedObject: corev1.ObjectReference{APIVersion: "kaito.sh/v1beta1", Kind: "Workspace", Name: created.GetName(), Namespace: "default", UID: created.GetUID()},
			Reason:         reason, Message: msg, Type: corev1.EventTypeNormal, Source: corev1.EventSource{Component: "kaitoflow-controller"},
			FirstTimestamp: metav1.Now(), LastTimestamp: metav1.Now()}
		if _, err := kube.CoreV1().Events("default").Create(ctx, e, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	event("WorkspaceRequested", "kaitoflow.workspace.requested from kaitoflow/controller")
	event("NodeReady", "kaitoflow.node.ready from kaitoflow/provision")

	out, _, err := cli(t, "http://unused", "get", "workspaces", "--kubeconfig", kubeconfig)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 2 || !strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "workspace-phi-4-mini Standard_NC24ads_A100_v4 True") ||
		!strings.Contains(lines[1], " Running ") {
		t.Fatalf("get: %v\n%s", err, out)
	}

	// Without -n, the kubeconfig context's namespace, as kubectl: a context in team-a lists
	// team-a's workspaces (none), and -n default still finds the one in default.
	cfg, err := clientcmd.Load(env.KubeConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Contexts[cfg.CurrentContext].Namespace = "team-a"
	teamA := filepath.Join(t.TempDir(), "kubeconfig-team-a")
	if err := clientcmd.WriteToFile(*cfg, teamA); err != nil {
		t.Fatal(err)
	}
	if out, _, err := cli(t, "http://unused", "get", "workspaces", "--kubeconfig", teamA); err != nil || strings.Contains(out, "workspace-phi-4-mini") {
		t.Errorf("get in the context's namespace (team-a): %v\n%s", err, out)
	}
	if out, _, err := cli(t, "http://unused", "get", "workspaces", "--kubeconfig", teamA, "-n", "default"); err != nil ||
		!strings.Contains(out, "workspace-phi-4-mini") {
		t.Errorf("get -n default with a team-a context: %v\n%s", err, out)
	}

	// watch follows the status and the Events until Ready.
	go func() {
		time.Sleep(1500 * time.Millisecond)
		cur, err := ws.Get(ctx, "workspace-phi-4-mini", metav1.GetOptions{})
		if err != nil {
			return
		}
		// The Event first: the controller records it as it writes the status.
		event("InferenceReady", "kaitoflow.inference.ready from kaitoflow/serve")
		_ = unstructured.SetNestedField(cur.Object, "Ready", "status", "phase")
		_ = unstructured.SetNestedField(cur.Object, "http://workspace-phi-4-mini.default.svc.cluster.local", "status", "endpoint")
		_, _ = ws.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
	}()
	out, _, err = cli(t, "http://unused", "watch", "workspace-phi-4-mini", "--kubeconfig", kubeconfig)
	if err != nil || !strings.Contains(out, "NodeReady") || !strings.Contains(out, "InferenceReady") || !strings.Contains(out, "Ready in") {
		t.Errorf("watch: %v\n%s", err, out)
	}
	out, _, err = cli(t, "http://unused", "chat", "workspace-phi-4-mini", "--url", "--kubeconfig", kubeconfig)
	if err != nil || !strings.HasPrefix(out, "http://workspace-phi-4-mini.default.svc.cluster.local\n") {
		t.Errorf("chat --url: %v\n%s", err, out)
	}
	if out, _, err = cli(t, "http://unused", "delete", "workspace-phi-4-mini", "--kubeconfig", kubeconfig); err != nil {
		t.Fatalf("delete: %v %s", err, out)
	}
	if _, err := ws.Get(ctx, "workspace-phi-4-mini", metav1.GetOptions{}); err == nil {
		t.Error("the resource is still there")
	}
}
