package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/api"
	"github.com/kaitoflow/kaitoflow/internal/ingress"
	"github.com/kaitoflow/kaitoflow/internal/ingress/webhook"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// Continuous fine-tuning in `up`, through the upload webhook (its /upload notifications, run
// in-process against the pipeline): each upload of the dataset is the workspace's next generation,
// and its promotion policy (kaitoflow.io/promotion: if-better) decides what serves. The sim
// trainer scores an adapter by the dataset it was trained on (tune.SimEvalLoss: more distinct rows
// score better; simulated), beside the adapter serving, on the new data:
// v1 (3 rows) is served; v2 (1 row) scores worse and is held — v1 still answers; v3 (9 rows)
// scores better and is promoted, live in the same replica and revision — v3 answers.
func TestUploadHoldPromote(t *testing.T) {
	p := start(t)
	ctx := context.Background()

	blob := testenv.NewBlob(t)
	doc, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := events.DecodeWorkspace(doc)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.Annotations = map[string]string{events.AnnotationPromotion: "if-better"}
	key := []byte("upload-signing-key")
	hook := &webhook.Handler{Template: tmpl, SigningKey: key, Log: slog.New(slog.DiscardHandler),
		Submitter: &ingress.Submitter{Store: p.Store, Publisher: runtime.JetStreamPublisher{JS: p.JS}, Policy: events.AddressPolicy{Allow: []string{"127.0.0.1"}}, Source: "kaitoflow/webhook"}}
	srv := httptest.NewServer(hook.Routes())
	defer srv.Close()

	const path = "/datasets/dolly.jsonl"
	name := webhook.Name(tmpl.Name, strings.TrimPrefix(blob.URL, "http://")+path)
	upload := func(rows int) *status.Workspace {
		t.Helper()
		blob.Upload(t, srv.URL, key, path, testenv.Rows(rows))
		w, err := p.Store.Get(ctx, "default", name)
		if err != nil {
			t.Fatal(err)
		}
		gen := w.Generation
		// Ready, and the policy's decision applied (the projector applies events in any order).
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			w = waitGeneration(t, p, "default", name, gen, 30*time.Second)
			if h, ok := w.Pushed(gen); ok && (w.Live == gen || h.Held != "") {
				return w
			}
			if time.Now().After(deadline) {
				t.Fatalf("generation %d: no promotion decision in the record: %+v", gen, w)
			}
		}
	}

	v1 := upload(3)
	if v1.Phase != status.Ready || v1.Live != 1 {
		t.Fatalf("v1: %s, serving %d, %+v", v1.Phase, v1.Live, v1.Failure)
	}
	answer, pod := chatAt(t, v1.Endpoint)
	if !strings.Contains(answer, serve.LoRAName(name, v1.Image)) {
		t.Fatalf("v1 answered %q", answer)
	}

	v2 := upload(1)
	h2, _ := v2.Pushed(2)
	if v2.Phase != status.Ready || v2.Live != 1 || v2.AdapterState(h2) != status.AdapterHeld ||
		!strings.Contains(v2.Held, fmt.Sprintf("held: eval_loss %.4g vs %.4g serving (generation 1)", tune.SimEvalLoss(1), tune.SimEvalLoss(3))) {
		t.Fatalf("v2: %s, serving %d, state %s, held %q", v2.Phase, v2.Live, v2.AdapterState(h2), v2.Held)
	}
	if answer, _ := chatAt(t, v2.Endpoint); !strings.Contains(answer, serve.LoRAName(name, v1.Image)) {
		t.Fatalf("with v2 held, the endpoint answered %q; want v1's adapter", answer)
	}

	v3 := upload(9)
	if v3.Phase != status.Ready || v3.Live != 3 || v3.Held != "" {
		t.Fatalf("v3: %s, serving %d, held %q", v3.Phase, v3.Live, v3.Held)
	}
	answer, pod3 := chatAt(t, v3.Endpoint)
	if !strings.Contains(answer, serve.LoRAName(name, v3.Image)) || pod3 != pod || v3.Revision != v1.Revision {
		t.Fatalf("v3 answered %q from %s (revision %s); want its adapter from %s (revision %s)", answer, pod3, v3.Revision, pod, v1.Revision)
	}
	h3, _ := v3.Pushed(3)
	if h3.Scores[events.MetricServingEvalLoss] != tune.SimEvalLoss(3) || h3.Scores[events.MetricEvalLoss] != tune.SimEvalLoss(9) {
		t.Errorf("v3's scores %v", h3.Scores)
	}
	states := map[int64]string{}
	for _, h := range v3.History {
		states[h.Generation] = v3.AdapterState(h)
	}
	if states[1] != status.AdapterSuperseded || states[2] != status.AdapterHeld || states[3] != status.AdapterServing {
		t.Errorf("states %v", states)
	}

	// The held v2 is served after all by `kaitoflow promote --generation 2`, the live path.
	if _, err := (&api.Client{BaseURL: p.URL}).Promote(ctx, name, 2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		w, err := p.Store.Get(ctx, "default", name)
		if err == nil && w.Live == 2 && w.Phase == status.Ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("promote 2: the record serves %d (%v)", w.Live, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if answer, _ := chatAt(t, v3.Endpoint); !strings.Contains(answer, serve.LoRAName(name, h2.Image)) {
		t.Errorf("after promoting v2 the endpoint answered %q", answer)
	}
}
