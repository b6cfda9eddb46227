package main

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
)

// The ingress commands refuse a configuration that cannot work before they connect anywhere.
func TestIngressCommandsRefuseBadConfiguration(t *testing.T) {
	inference := filepath.Join(t.TempDir(), "inference.yaml")
	if err := os.WriteFile(inference, []byte("apiVersion: kaito.sh/v1alpha1\nkind: Workspace\nmetadata: {name: x}\nresource: {instanceType: Standard_NC6s_v3}\ninference: {preset: {name: phi-3-mini-4k-instruct}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KAITOFLOW_WEBHOOK_KEYS", "")
	t.Setenv("KAITOFLOW_SERVICEBUS_CONNECTION_STRING", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"webhook", "--workspace-namespace", "default", "--template", "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"}, "no authentication configured"},
		{[]string{"webhook", "--workspace-namespace", "*", "--template", inference, "--insecure-no-auth"}, "tuning: required"},
		{[]string{"webhook", "--workspace-namespace", "default", "--template", "missing.yaml", "--insecure-no-auth"}, "--template"},
		{[]string{"webhook", "--workspace-namespace", "default", "--template", "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml", "--entra-issuer", "https://login.microsoftonline.com/t/v2.0"}, "go together"},
		{[]string{"webhook", "--template", "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml", "--insecure-no-auth"}, "--workspace-namespace: say which"},
		{[]string{"webhook", "--workspace-namespace", "team-a", "--template", "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml", "--insecure-no-auth"}, "does not admit namespace default"},
		{[]string{"bridge", "servicebus", "--servicebus-namespace", "ns.servicebus.windows.net"}, "--queue, or --topic with --subscription"},
		{[]string{"bridge", "servicebus", "--queue", "q", "--topic", "t"}, "--queue, or --topic with --subscription"},
		{[]string{"bridge", "servicebus", "--queue", "q"}, "--workspace-namespace: say which"},
		{[]string{"bridge", "servicebus", "--queue", "q", "--workspace-namespace", "team-a"}, "KAITOFLOW_SERVICEBUS_CONNECTION_STRING"},
	} {
		_, _, err := cli(t, "http://127.0.0.1:1", tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestFlagsFromEnvironment(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	image := fs.String("trainer-image", "default", "")
	given := fs.String("provider", "sim", "")
	hosts := fs.StringSlice("allow-host", []string{"a"}, "")
	tick := fs.Duration("tick", time.Second, "")
	if err := fs.Parse([]string{"--provider", "byo"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KAITOFLOW_TRAINER_IMAGE", "registry/trainer:1")
	t.Setenv("KAITOFLOW_PROVIDER", "aks")
	t.Setenv("KAITOFLOW_ALLOW_HOST", "10.0.0.0/8,datasets.internal")
	t.Setenv("KAITOFLOW_TICK", "1m")
	if err := fnhost.FromEnv(fs); err != nil {
		t.Fatal(err)
	}
	if *image != "registry/trainer:1" || *given != "byo" || strings.Join(*hosts, " ") != "10.0.0.0/8 datasets.internal" || *tick != time.Minute {
		t.Errorf("image %q provider %q hosts %v tick %v", *image, *given, *hosts, *tick)
	}
	t.Setenv("KAITOFLOW_TICK", "soon")
	fs2 := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs2.Duration("tick", time.Second, "")
	if err := fnhost.FromEnv(fs2); err == nil || !strings.Contains(err.Error(), "KAITOFLOW_TICK") {
		t.Errorf("a bad value must name its variable: %v", err)
	}
	// An empty variable is unset: KAITOFLOW_SERVER= left in a shell keeps the default URL.
	t.Setenv("KAITOFLOW_SERVER", "")
	fs3 := pflag.NewFlagSet("t", pflag.ContinueOnError)
	server := fs3.String("server", defaultServer, "")
	if err := fnhost.FromEnv(fs3); err != nil || *server != defaultServer {
		t.Errorf("empty KAITOFLOW_SERVER: %v, server %q", err, *server)
	}
}

// With a token configured, the API refuses requests without it.
func TestAPIRequiresItsToken(t *testing.T) {
	p, err := embedded.Start(context.Background(), embedded.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", APIToken: "kf-api-token-0123",
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, args := range [][]string{{"get", "workspaces"}, {"--token", "wrong", "get", "workspaces"}} {
		_, _, err := cli(t, p.URL, args...)
		if err == nil || !strings.Contains(err.Error(), "bearer token") {
			t.Errorf("%v: %v", args, err)
		}
	}
	if _, _, err := cli(t, p.URL, "--token", "kf-api-token-0123", "submit", "-f", "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"); err != nil {
		t.Errorf("with the token: %v", err)
	}
	// Every route but /healthz wants it: the sim's adapter admin path once answered 200 to
	// anyone and unloaded the adapter a chat was using; /metrics names every workspace.
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/v1/workspaces/workspace-tuning-phi-3/events", http.StatusUnauthorized},
		{http.MethodPost, assembly.SimInferencePath + "/default/any/v1/unload_lora_adapter", http.StatusUnauthorized},
		{http.MethodPost, assembly.SimInferencePath + "/default/any/v1/chat/completions", http.StatusUnauthorized},
		{http.MethodGet, "/metrics", http.StatusUnauthorized},
		{http.MethodGet, "/healthz", http.StatusOK},
	} {
		req, _ := http.NewRequest(tc.method, p.URL+tc.path, strings.NewReader(`{"lora_name":"a"}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s without the token: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, p.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer kf-api-token-0123")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/metrics with the token: %v %v", resp, err)
	}
	// The token from a file, as a process list cannot show it.
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("kf-api-token-0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cli(t, p.URL, "--token-file", file, "get", "workspaces"); err != nil {
		t.Errorf("--token-file: %v", err)
	}
	if _, _, err := cli(t, p.URL, "--token-file", file, "--token", "x", "get", "workspaces"); err == nil {
		t.Error("--token and --token-file together were accepted")
	}
}
