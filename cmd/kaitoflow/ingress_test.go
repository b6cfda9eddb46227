package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		{[]string{"webhook", "--template", "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"}, "no authentication configured"},
		{[]string{"webhook", "--template", inference, "--insecure-no-auth"}, "tuning: required"},
		{[]string{"webhook", "--template", "missing.yaml", "--insecure-no-auth"}, "--template"},
		{[]string{"webhook", "--template", "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml", "--entra-issuer", "https://login.microsoftonline.com/t/v2.0"}, "go together"},
		{[]string{"bridge", "servicebus", "--namespace", "ns.servicebus.windows.net"}, "--queue, or --topic with --subscription"},
		{[]string{"bridge", "servicebus", "--queue", "q", "--topic", "t"}, "--queue, or --topic with --subscription"},
		{[]string{"bridge", "servicebus", "--queue", "q"}, "KAITOFLOW_SERVICEBUS_CONNECTION_STRING"},
	} {
		_, _, err := cli(t, "http://127.0.0.1:1", tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
