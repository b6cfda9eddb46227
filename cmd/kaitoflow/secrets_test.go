package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress/webhook"
	"github.com/kaitoflow/kaitoflow/internal/natsconn"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/presets"
)

// A full workspace with recognisable secrets — the registry push password, the API token, the
// webhook key and signing key, a Service Bus connection string — and none of them may appear in
// a log line, an event, a status record or an error message.
func TestSecretsStayOutOfLogsEventsStatusAndErrors(t *testing.T) {
	secrets := map[string]string{
		"push password":          "kf-secret-push-7f3a91",
		"API token":              "kf-secret-api-c02d4e",
		"webhook key":            "kf-secret-webhook-5d2e88",
		"webhook signing key":    "kf-secret-signing-a1b2c3",
		"Service Bus key":        "kf-secret-sb-9c1f77",
		"NATS password (in URL)": "kf-secret-nats-41aa0b",
		"model access token":     "hf_kf-secret-model-d4e5f6",
	}
	// A gated model read from the stand-in Hub with the token of its modelAccessSecret.
	hub := testenv.NewHub(t)
	hub.Token = secrets["model access token"]
	logs := &testenv.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx := context.Background()
	// The push secret, as registryauth reads it from an imagePushSecret.
	cfg, _ := json.Marshal(map[string]any{"auths": map[string]any{"acr_repo_here.azurecr.io": map[string]string{"username": "robot", "password": secrets["push password"]}}})
	keychain, err := registryauth.DockerConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := embedded.Start(ctx, embedded.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: log,
		APIToken: secrets["API token"],
		Functions: assembly.Config{Sim: assembly.Sim{Delay: 20 * time.Millisecond},
			PushKeychain: func(context.Context, *kaito.Workspace) (authn.Keychain, error) { return keychain, nil },
			HubURL:       hub.URL, Policy: netguard.AddressPolicy{Allow: []string{"127.0.0.1"}},
			Secrets: func(_ context.Context, _, name string) (map[string][]byte, error) {
				if name != "hf-token" {
					return nil, presets.ErrSecretNotFound
				}
				return map[string][]byte{presets.ModelAccessSecretKey: []byte(secrets["model access token"])}, nil
			}}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var outputs []string
	run := func(args ...string) {
		out, errOut, err := cli(t, p.URL, args...)
		outputs = append(outputs, out, errOut)
		if err != nil {
			outputs = append(outputs, err.Error())
		}
	}
	run("--token", "wrong-token", "get", "workspaces")
	run("--token", secrets["API token"], "submit", "-f", "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	run("--token", secrets["API token"], "watch", "workspace-tuning-phi-3")
	run("--token", secrets["API token"], "get", "workspace", "workspace-tuning-phi-3", "-o", "yaml")
	gated := filepath.Join(t.TempDir(), "llama.yaml")
	llama, _ := os.ReadFile("../../examples/v1beta1/inference_llama_3.1_8b_instruct.yaml")
	_ = os.WriteFile(gated, []byte(strings.Replace(string(llama), "llama-3.1-8b-instruct\n", "llama-3.3-70b-instruct\n", 1)), 0o644)
	run("--token", secrets["API token"], "submit", "-f", gated)
	run("--token", secrets["API token"], "watch", "workspace-llama-3-1-8b-instruct")
	run("--token", secrets["API token"], "plan", "-f", gated, "--hub-url", hub.URL)

	// The webhook, with wrong and right keys and signatures.
	h := &webhook.Handler{Keys: []string{secrets["webhook key"]}, SigningKey: []byte(secrets["webhook signing key"]), Log: log,
		Submitter: &ingress.Submitter{Store: p.Store, Publisher: runtime.JetStreamPublisher{JS: p.JS}, Source: "kaitoflow/webhook"}}
	doc, _ := os.ReadFile("../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	h.Template, _ = kaito.DecodeWorkspace(doc)
	srv := httptest.NewServer(h.Routes())
	defer srv.Close()
	for _, key := range []string{"wrong-key", secrets["webhook key"]} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/eventgrid?code="+key, strings.NewReader(`[{"id":"1","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"abc"}}]`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		outputs = append(outputs, b.String())
	}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/upload", strings.NewReader(`{"url":"https://x.example.com/a.parquet","sha256":"`+strings.Repeat("0", 64)+`"}`))
	req.Header.Set(webhook.HeaderSignature, "sha256=00")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		outputs = append(outputs, b.String())
	}

	// The bridge with an unusable connection string, and a NATS URL with a password that fails.
	t.Setenv("KAITOFLOW_SERVICEBUS_CONNECTION_STRING", "SharedAccessKeyName=listen;SharedAccessKey="+secrets["Service Bus key"])
	run("bridge", "servicebus", "--queue", "workspaces", "--workspace-namespace", "default")
	os.Unsetenv("KAITOFLOW_SERVICEBUS_CONNECTION_STRING")
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := embedded.Start(short, embedded.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: log,
		NATS: natsconn.Options{URL: "nats://kaitoflow:" + secrets["NATS password (in URL)"] + "@127.0.0.1:1"}}); err != nil {
		outputs = append(outputs, err.Error())
	}

	for _, name := range []string{"workspace-tuning-phi-3", "workspace-llama-3-1-8b-instruct"} {
		rec, err := p.Store.Get(ctx, "default", name)
		if err != nil || rec.Phase != status.Ready {
			t.Fatalf("%s did not get through: %+v %v", name, rec, err)
		}
	}
	records, _ := p.Store.List(ctx, "")
	statusJSON, _ := json.Marshal(records)

	// Every stored message: events, dead letters, the status bucket.
	var stored strings.Builder
	for _, stream := range []string{runtime.StreamName, "KV_" + status.Bucket} {
		c, err := p.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		for {
			batch, err := c.FetchNoWait(500)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for m := range batch.Messages() {
				fmt.Fprintf(&stored, "%s %v %s\n", m.Subject(), m.Headers(), m.Data())
				n++
			}
			if n == 0 {
				break
			}
		}
	}
	if stored.Len() == 0 || !strings.Contains(stored.String(), "kaitoflow.inference.ready") {
		t.Fatal("read nothing back from the streams")
	}
	everything := map[string]string{"logs": logs.String(), "events and status bucket": stored.String(), "status records": string(statusJSON),
		"CLI output and errors, HTTP answers": strings.Join(outputs, "\n")}
	for where, text := range everything {
		for what, secret := range secrets {
			if strings.Contains(text, secret) {
				i := strings.Index(text, secret)
				t.Errorf("the %s appears in %s: …%s…", what, where, text[max(0, i-120):min(len(text), i+40)])
			}
		}
	}
}
