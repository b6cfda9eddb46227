package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/coreos/go-oidc/v3/oidc/oidctest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/signature"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// env is a webhook in front of a real embedded NATS JetStream and status store.
type env struct {
	t     *testing.T
	srv   *httptest.Server
	h     *Handler
	js    jetstream.JetStream
	store *status.Store
	ns    *server.Server
	port  int
	dir   string
}

func (e *env) startNATS() {
	e.t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: e.port, JetStream: true, StoreDir: e.dir, NoSigs: true, NoLog: true})
	if err != nil {
		e.t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		e.t.Fatal("nats not ready")
	}
	e.ns, e.port = ns, ns.Addr().(*net.TCPAddr).Port
}

func newEnv(t *testing.T, configure func(*Handler)) *env {
	t.Helper()
	e := &env{t: t, port: -1, dir: t.TempDir()}
	e.startNATS()
	t.Cleanup(func() { e.ns.Shutdown() })
	nc, err := nats.Connect(e.ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e.js, _ = jetstream.New(nc)
	ctx := context.Background()
	if _, err := (runtime.Storage{Replicas: 1}).EnsureStream(ctx, e.js); err != nil {
		t.Fatal(err)
	}
	if e.store, err = status.Open(ctx, e.js, runtime.Storage{Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := kaito.DecodeWorkspace(doc)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.Name = "dolly"
	e.h = &Handler{Template: tmpl, Container: "datasets", Suffixes: []string{".parquet", ".jsonl"}, Keys: []string{"s3cret-key"},
		SigningKey: []byte("signing-key"), Log: slog.New(slog.DiscardHandler),
		Submitter: &ingress.Submitter{Store: e.store, Publisher: runtime.JetStreamPublisher{JS: e.js}, Source: "kaitoflow/webhook"}}
	if configure != nil {
		configure(e.h)
	}
	e.srv = httptest.NewServer(e.h.Routes())
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) post(path, contentType, body string, header map[string]string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// requested counts the workspace.requested events on the stream, by workspace.
func (e *env) requested() map[string]int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.js.OrderedConsumer(ctx, runtime.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.WorkspaceRequested}})
	if err != nil {
		e.t.Fatal(err)
	}
	seen := map[string]int{}
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			e.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			ev, err := events.DecodeNATS(m.Headers(), m.Data())
			if err != nil {
				e.t.Fatal(err)
			}
			seen[ev.Subject()+"@"+ev.Extensions()[events.ExtGeneration].(string)]++
			n++
		}
		if n == 0 {
			return seen
		}
	}
}

// Recorded shapes of Event Grid's deliveries (Azure's documented samples).
const validationEvent = `[{
  "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
  "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/kfdata",
  "subject": "",
  "data": {
    "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
    "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/myeventsub/validate?id=0000000000-0000-0000-0000-00000000000000&t=2022-10-28T04:23:35.1981776Z&apiVersion=2018-05-01-preview&token=1A1A1A1A"
  },
  "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
  "eventTime": "2022-10-28T04:23:35.1981776Z",
  "metadataVersion": "1",
  "dataVersion": "1"
}]`

func blobCreated(id, api, blob, etag, sequencer string) string {
	return `{
  "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/kfdata",
  "subject": "/blobServices/default/containers/` + blob + `",
  "eventType": "Microsoft.Storage.BlobCreated",
  "eventTime": "2017-06-26T18:41:00.9584103Z",
  "id": "` + id + `",
  "data": {
    "api": "` + api + `",
    "clientRequestId": "6d79dbfb-0e37-4fc4-981f-442c9ca65760",
    "requestId": "831e1650-001e-001b-66ab-eeb76e000000",
    "eTag": "` + etag + `",
    "contentType": "application/octet-stream",
    "contentLength": 8787871,
    "blobType": "BlockBlob",
    "url": "https://kfdata.blob.core.windows.net/` + strings.Replace(blob, "/blobs/", "/", 1) + `",
    "sequencer": "` + sequencer + `",
    "storageDiagnostics": { "batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0" }
  },
  "dataVersion": "",
  "metadataVersion": "1"
}`
}

func cloudEvent(id, blob, sequencer string) string {
	return `{
  "specversion": "1.0",
  "type": "Microsoft.Storage.BlobCreated",
  "source": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/kfdata",
  "id": "` + id + `",
  "time": "2019-11-18T15:13:39.4589254Z",
  "subject": "blobServices/default/containers/` + blob + `",
  "dataschema": "#",
  "data": {
    "api": "PutBlob",
    "clientRequestId": "4c5dd7fb-2c48-4a27-bb30-5361b5de920a",
    "requestId": "9aeb0fdf-c01e-0131-0922-9eb549000000",
    "eTag": "0x8D76C39E4407333",
    "contentType": "application/octet-stream",
    "contentLength": 30699,
    "blobType": "BlockBlob",
    "url": "https://kfdata.blob.core.windows.net/` + strings.Replace(blob, "/blobs/", "/", 1) + `",
    "sequencer": "` + sequencer + `",
    "storageDiagnostics": { "batchId": "681fe319-3006-00a8-0022-9e7cde000000" }
  }
}`
}

var key = map[string]string{HeaderKey: "s3cret-key", "aeg-event-type": "Notification"}

func TestEventGridHandshakes(t *testing.T) {
	e := newEnv(t, nil)
	code, body := e.post("/eventgrid?code=s3cret-key", "application/json", validationEvent, map[string]string{"aeg-event-type": "SubscriptionValidation"})
	if code != 200 || !strings.Contains(body, `"validationResponse":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"`) {
		t.Errorf("Event Grid schema validation: %d %s", code, body)
	}
	req, _ := http.NewRequest(http.MethodOptions, e.srv.URL+"/eventgrid", nil)
	req.Header.Set("WebHook-Request-Origin", "eventgrid.azure.net")
	req.Header.Set(HeaderKey, "s3cret-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("WebHook-Allowed-Origin") != "eventgrid.azure.net" || resp.Header.Get("WebHook-Allowed-Rate") != "*" {
		t.Errorf("CloudEvents abuse protection: %d %v", resp.StatusCode, resp.Header)
	}
	req.Header.Del(HeaderKey)
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("handshake without the key: %d", resp.StatusCode)
	}
}

// Event Grid delivers at least once: the same BlobCreated five times (and in both schemas) is one
// workspace; a re-upload of the same path is the next generation of the same workspace.
func TestDuplicateDeliveriesAreOneWorkspace(t *testing.T) {
	e := newEnv(t, nil)
	blob := "datasets/blobs/dolly/train.parquet"
	ev := blobCreated("831e1650-001e-001b-66ab-eeb76e069631", "PutBlockList", blob, "0x8D4BCC2E4835CD0", "00000000000004420000000000028963")
	for range 5 {
		if code, body := e.post("/eventgrid", "application/json", "["+ev+"]", key); code != 200 {
			t.Fatalf("delivery: %d %s", code, body)
		}
	}
	name := Name("dolly", "datasets/dolly/train.parquet")
	if got := e.requested(); len(got) != 1 || got["default/"+name+"@1"] != 1 {
		t.Fatalf("after 5 deliveries: %v", got)
	}
	rec, err := e.store.Get(context.Background(), "default", name)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Manifest.Tuning.Input.URLs[0] != "https://kfdata.blob.core.windows.net/datasets/dolly/train.parquet" || rec.Manifest.Labels[LabelSourceVersion] != "00000000000004420000000000028963" {
		t.Errorf("workspace %+v", rec.Manifest)
	}

	// The same upload in the CloudEvents schema, batched with a re-upload (a new sequencer), an
	// incomplete Data Lake file, another container and another suffix.
	batch := "[" + strings.Join([]string{
		cloudEvent("ce-1", blob, "00000000000004420000000000028963"),
		cloudEvent("ce-2", blob, "00000000000004420000000000030000"),
		strings.Replace(cloudEvent("ce-3", "datasets/blobs/other.parquet", "1"), `"api": "PutBlob"`, `"api": "CreateFile"`, 1),
		cloudEvent("ce-4", "logs/blobs/x.parquet", "1"),
		cloudEvent("ce-5", "datasets/blobs/readme.md", "1"),
	}, ",") + "]"
	if code, body := e.post("/eventgrid", "application/cloudevents-batch+json; charset=utf-8", batch, key); code != 200 {
		t.Fatalf("batch: %d %s", code, body)
	}
	got := e.requested()
	if len(got) != 2 || got["default/"+name+"@2"] != 1 {
		t.Errorf("after the batch: %v", got)
	}
	// Data Lake's FlushWithClose is the complete file.
	flush := blobCreated("f-1", "FlushWithClose", "datasets/blobs/other.parquet", "0x1", "0000000000000001")
	if code, _ := e.post("/eventgrid", "application/json", "["+flush+"]", key); code != 200 || len(e.requested()) != 3 {
		t.Errorf("FlushWithClose: %d %v", code, e.requested())
	}
}

func TestRefusals(t *testing.T) {
	e := newEnv(t, nil)
	ev := "[" + blobCreated("x", "PutBlob", "datasets/blobs/a.parquet", "0x1", "1") + "]"
	for _, tc := range []struct {
		name   string
		header map[string]string
		body   string
		code   int
	}{
		{"no key", map[string]string{}, ev, 401},
		{"wrong key", map[string]string{HeaderKey: "s3cret-kez"}, ev, 401},
		{"not JSON", key, "{", 400},
		{"validation without a code", key, `[{"id":"1","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{}}]`, 400},
		{"a private URL", key, "[" + strings.Replace(blobCreated("y", "PutBlob", "datasets/blobs/b.parquet", "0x1", "2"), "https://kfdata.blob.core.windows.net", "http://169.254.169.254", 1) + "]", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, body := e.post("/eventgrid", "application/json", tc.body, tc.header); code != tc.code {
				t.Errorf("%d %s, want %d", code, body, tc.code)
			}
		})
	}
	if got := e.requested(); len(got) != 0 {
		t.Errorf("refused deliveries published %v", got)
	}
}

func sign(key []byte, body string) string { return signature.Sign(key, time.Now(), []byte(body)) }

// A captured notification cannot be replayed outside the window, and the old unsigned-timestamp
// form (an HMAC of the body alone, replayable forever) is refused.
func TestUploadSignatureReplayWindow(t *testing.T) {
	e := newEnv(t, nil)
	body := `{"url":"https://minio.example.com/datasets/dolly.parquet","sha256":"` + strings.Repeat("cd", 32) + `"}`
	key := []byte("signing-key")
	bodyOnly := hmac.New(sha256.New, key)
	bodyOnly.Write([]byte(body))
	for _, tc := range []struct {
		name, sig string
		code      int
	}{
		{"body-only HMAC", "sha256=" + hex.EncodeToString(bodyOnly.Sum(nil)), 401},
		{"an hour old", signature.Sign(key, time.Now().Add(-time.Hour), []byte(body)), 401},
		{"an hour ahead", signature.Sign(key, time.Now().Add(time.Hour), []byte(body)), 401},
		{"timestamp changed after signing", strings.Replace(signature.Sign(key, time.Now().Add(-time.Hour), []byte(body)), "t=", "t=1", 1), 401},
		{"fresh", signature.Sign(key, time.Now().Add(-time.Minute), []byte(body)), 200},
	} {
		code, b := e.post("/upload", "application/json", body, map[string]string{HeaderSignature: tc.sig})
		if code != tc.code {
			t.Errorf("%s: %d %s, want %d", tc.name, code, b, tc.code)
		}
		if tc.code == 401 && len(e.requested()) != 0 {
			t.Fatalf("%s: published", tc.name)
		}
	}
}

// data.url must be the subject's blob at the topic's account: a delivery pairing a trusted-looking
// subject with another URL is refused whole, nothing submitted.
func TestEventGridURLBoundToSubject(t *testing.T) {
	e := newEnv(t, nil)
	good := blobCreated("b-1", "PutBlob", "datasets/blobs/dolly.parquet", "0x1", "1")
	for _, tc := range []struct{ name, from, to string }{
		{"another host", "https://kfdata.blob.core.windows.net/datasets/dolly.parquet", "https://evil.example.net/datasets/dolly.parquet"},
		{"another account", "https://kfdata.blob.core.windows.net/", "https://otherteam.blob.core.windows.net/"},
		{"another container", "kfdata.blob.core.windows.net/datasets/", "kfdata.blob.core.windows.net/private/"},
		{"another blob", "datasets/dolly.parquet\"", "datasets/other.parquet\""},
		{"plain http", "https://kfdata", "http://kfdata"},
		{"a port", "kfdata.blob.core.windows.net/", "kfdata.blob.core.windows.net:8443/"},
		{"a look-alike domain", "kfdata.blob.core.windows.net/", "kfdata.blob.attacker.example/"},
		{"another version", "datasets/dolly.parquet\"", "datasets/dolly.parquet?versionid=2019-01-01\""},
	} {
		if !strings.Contains(good, tc.from) {
			t.Fatalf("%s: test bug: %q not in the event", tc.name, tc.from)
		}
		bad := strings.Replace(good, tc.from, tc.to, 1)
		if code, b := e.post("/eventgrid", "application/json", "["+bad+"]", key); code != 400 {
			t.Errorf("%s: %d %s", tc.name, code, b)
		}
	}
	if got := e.requested(); len(got) != 0 {
		t.Fatalf("refused deliveries published %v", got)
	}
	if code, b := e.post("/eventgrid", "application/json", "["+good+"]", key); code != 200 {
		t.Fatalf("the bound event: %d %s", code, b)
	}
}

func TestSignedUploadNotification(t *testing.T) {
	e := newEnv(t, nil)
	sum := strings.Repeat("ab", 32)
	body := `{"url":"https://minio.example.com/datasets/dolly.parquet","sha256":"` + sum + `"}`
	if code, _ := e.post("/upload", "application/json", body, map[string]string{HeaderSignature: sign([]byte("wrong"), body)}); code != 401 {
		t.Errorf("bad signature: %d", code)
	}
	if code, _ := e.post("/upload", "application/json", body, nil); code != 401 {
		t.Errorf("no signature: %d", code)
	}
	if len(e.requested()) != 0 {
		t.Fatal("an unsigned notification was published")
	}
	if code, b := e.post("/upload", "application/json", `{"url":"x"}`, map[string]string{HeaderSignature: sign([]byte("signing-key"), `{"url":"x"}`)}); code != 400 || !strings.Contains(b, "url") {
		t.Errorf("bad notification: %d %s", code, b)
	}
	if code, b := e.post("/upload", "application/json", body, map[string]string{HeaderSignature: sign([]byte("signing-key"), body)}); code != 200 {
		t.Fatalf("signed: %d %s", code, b)
	}
	rec, err := e.store.Get(context.Background(), "default", Name("dolly", "minio.example.com/datasets/dolly.parquet"))
	if err != nil || rec.Manifest.Annotations[AnnotationSHA256] != sum {
		t.Fatalf("workspace: %v %+v", err, rec)
	}
}

// NATS down: 503, so Event Grid retries; the retry, once NATS is back, is accepted.
func TestNATSDownAnswers503ThenTheRetrySucceeds(t *testing.T) {
	e := newEnv(t, func(h *Handler) {})
	ev := "[" + blobCreated("r-1", "PutBlob", "datasets/blobs/retry.jsonl", "0x1", "7") + "]"
	e.ns.Shutdown()
	e.ns.WaitForShutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.srv.URL+"/eventgrid", strings.NewReader(ev))
	req.Header.Set(HeaderKey, "s3cret-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("with NATS down: %d", resp.StatusCode)
	}
	e.startNATS()
	var code int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if code, _ = e.post("/eventgrid", "application/json", ev, key); code == 200 {
			break
		}
	}
	if code != 200 || len(e.requested()) != 1 {
		t.Fatalf("retry: %d %v", code, e.requested())
	}
}

// With Entra ID configured, a delivery needs a valid token for the audience.
func TestEntraBearerToken(t *testing.T) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	issuer := &oidctest.Server{PublicKeys: []oidctest.PublicKey{{PublicKey: priv.Public(), KeyID: "k1", Algorithm: oidc.RS256}}}
	idp := httptest.NewServer(issuer)
	defer idp.Close()
	issuer.SetIssuer(idp.URL)
	v, err := NewEntraVerifier(context.Background(), idp.URL, "api://kaitoflow-webhook", []string{EventGridAppID})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(h *Handler) { h.Keys, h.Verifier = nil, v })
	token := func(aud string, exp time.Time, client ...string) string {
		claims := fmt.Sprintf(`"iss":%q,"aud":%q,"sub":"eventgrid","exp":%s`, idp.URL, aud, strconv.FormatInt(exp.Unix(), 10))
		if len(client) == 2 {
			claims += fmt.Sprintf(",%q:%q", client[0], client[1])
		}
		return oidctest.SignIDToken(priv, "k1", oidc.RS256, "{"+claims+"}")
	}
	hour := time.Now().Add(time.Hour)
	ev := "[" + blobCreated("t-1", "PutBlob", "datasets/blobs/t.parquet", "0x1", "9") + "]"
	for _, tc := range []struct {
		name, auth string
		code       int
	}{
		{"no token", "", 401},
		{"another audience", "Bearer " + token("api://other", hour, "azp", EventGridAppID), 401},
		{"expired", "Bearer " + token("api://kaitoflow-webhook", time.Now().Add(-time.Hour), "azp", EventGridAppID), 401},
		// The right audience, asked for by another application of the tenant.
		{"no client", "Bearer " + token("api://kaitoflow-webhook", hour), 401},
		{"another client (v2 azp)", "Bearer " + token("api://kaitoflow-webhook", hour, "azp", "11111111-2222-3333-4444-555555555555"), 401},
		{"another client (v1 appid)", "Bearer " + token("api://kaitoflow-webhook", hour, "appid", "11111111-2222-3333-4444-555555555555"), 401},
		{"Event Grid (v1 appid)", "Bearer " + token("api://kaitoflow-webhook", hour, "appid", EventGridAppID), 200},
		{"Event Grid (v2 azp)", "Bearer " + token("api://kaitoflow-webhook", hour, "azp", EventGridAppID), 200},
	} {
		if code, body := e.post("/eventgrid", "application/json", ev, map[string]string{"Authorization": tc.auth}); code != tc.code {
			t.Errorf("%s: %d %s", tc.name, code, body)
		}
	}
}

func TestName(t *testing.T) {
	for _, tc := range []struct{ prefix, key string }{
		{"dolly", "datasets/dolly/train.parquet"},
		{"Workspace-Tuning-PHI-3-with-a-long-name", "c/" + strings.Repeat("very-long-path-segment/", 10) + "Train Data (v2).parquet"},
		{"", "c/.parquet"},
	} {
		n := Name(tc.prefix, tc.key)
		if len(n) > 63 || n != strings.ToLower(n) || strings.HasPrefix(n, "-") || strings.Contains(n, "--") {
			t.Errorf("Name(%q, %q) = %q", tc.prefix, tc.key, n)
		}
		// 128 bits of the path's hash end it (26 base32 characters).
		if i := strings.LastIndexByte(n, '-'); len(n)-i-1 != 26 {
			t.Errorf("Name(%q, %q) = %q: want a 26-character hash", tc.prefix, tc.key, n)
		}
		if n == Name(tc.prefix, tc.key+"x") {
			t.Errorf("distinct paths share %q", n)
		}
	}
}

func FuzzParseDelivery(f *testing.F) {
	f.Add("application/json", validationEvent)
	f.Add("application/json", "["+blobCreated("1", "PutBlob", "datasets/blobs/a.parquet", "0x1", "1")+"]")
	f.Add("application/cloudevents+json", cloudEvent("1", "datasets/blobs/a.parquet", "1"))
	f.Add("application/cloudevents-batch+json", "["+cloudEvent("1", "datasets/blobs/a.parquet", "1")+"]")
	f.Fuzz(func(t *testing.T, contentType, body string) {
		h := http.Header{}
		h.Set("Content-Type", contentType)
		d, err := ParseDelivery(h, []byte(body))
		if err == nil && d == nil {
			t.Fatal("no error and no delivery")
		}
		if err == nil {
			for _, e := range d.Events {
				_, _, _ = e.Blob()
			}
		}
	})
}
