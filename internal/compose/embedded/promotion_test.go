package embedded

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/internal/compose/api"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress/webhook"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// Continuous fine-tuning in `up`, through the upload webhook (its /upload notifications, run
// in-process against the pipeline): each upload of the dataset is the workspace's next generation,
// and its promotion policy (kaitoflow.io/promotion: if-better) decides what serves. The sim
// trainer scores an adapter by the dataset it was trained on (tunesim.EvalLoss: more distinct rows
// score better; simulated), beside the adapter serving, on the new data:
// v1 (3 rows) is served; v2 (1 row) scores worse and is held — v1 still answers; v3 (9 rows)
// scores better and is promoted, live in the same replica and revision — v3 answers.
// uploadLoop is a workspace fed by the upload webhook (its /upload notifications, in-process
// against p) from a template with the seed's spec and policy: upload(rows) uploads a dataset of
// that many distinct rows, send(rows) only notifies, and settled(gen) waits for generation gen to
// be Ready with the policy's decision in the record.
type uploadLoop struct {
	t    *testing.T
	p    *Pipeline
	name string
	send func(rows int)
}

func newUploadLoop(t *testing.T, p *Pipeline, policy string) *uploadLoop {
	t.Helper()
	blob := testenv.NewBlob(t)
	doc, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := kaito.DecodeWorkspace(doc)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.Annotations = map[string]string{kaito.AnnotationPromotion: policy}
	key := []byte("upload-signing-key")
	hook := &webhook.Handler{Template: tmpl, SigningKey: key, Log: slog.New(slog.DiscardHandler),
		Submitter: &ingress.Submitter{Store: p.Store, Publisher: runtime.JetStreamPublisher{JS: p.JS}, Policy: netguard.AddressPolicy{Allow: []string{"127.0.0.1"}}, Source: "kaitoflow/webhook"}}
	srv := httptest.NewServer(hook.Routes())
	t.Cleanup(srv.Close)
	const path = "/datasets/dolly.jsonl"
	return &uploadLoop{t: t, p: p, name: webhook.Name(tmpl.Name, strings.TrimPrefix(blob.URL, "http://")+path),
		send: func(rows int) { blob.Upload(t, srv.URL, key, path, testenv.Rows(rows)) }}
}

// generation is the workspace's newest generation.
func (l *uploadLoop) generation() int64 {
	l.t.Helper()
	w, err := l.p.Store.Get(context.Background(), "default", l.name)
	if err != nil {
		l.t.Fatal(err)
	}
	return w.Generation
}

// settled waits for generation gen Ready with the policy's decision applied (the projector
// applies events in any order).
func (l *uploadLoop) settled(gen int64) *status.Workspace {
	l.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		w := waitGeneration(l.t, l.p, "default", l.name, gen, 30*time.Second)
		if h, ok := w.Pushed(gen); ok && (w.Live == gen || h.Held != "") {
			return w
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("generation %d: no promotion decision in the record: %+v", gen, w)
		}
	}
}

// upload uploads rows and waits for the generation it makes to settle.
func (l *uploadLoop) upload(rows int) *status.Workspace {
	l.t.Helper()
	l.send(rows)
	return l.settled(l.generation())
}

func TestUploadHoldPromote(t *testing.T) {
	p := start(t)
	ctx := context.Background()
	loop := newUploadLoop(t, p, "if-better")
	name, upload := loop.name, loop.upload

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
		!strings.Contains(v2.Held, fmt.Sprintf("held: eval_loss %.4g vs %.4g serving (generation 1)", tunesim.EvalLoss(1), tunesim.EvalLoss(3))) {
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
	if h3.Scores[events.MetricServingEvalLoss] != tunesim.EvalLoss(3) || h3.Scores[events.MetricEvalLoss] != tunesim.EvalLoss(9) {
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
	if _, err := (&api.Client{BaseURL: p.URL}).Promote(ctx, name, 2, 0); err != nil {
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

// Two uploads in quick succession: v3 arrives while v2 still tunes. The newer generation replaces
// the run of the older (or v2 finishes first and, better, is promoted: the two race); either way
// v3 is scored against what serves when it starts and, worse than v1 and v2, is held — the later
// upload wins only if it is better.
func TestUploadsInQuickSuccession(t *testing.T) {
	p := start(t, func(c *assembly.Config) { c.Sim.Delay = 2 * time.Second })
	loop := newUploadLoop(t, p, "if-better")
	if v1 := loop.upload(3); v1.Live != 1 {
		t.Fatalf("v1: serving %d", v1.Live)
	}
	loop.send(20) // v2, better than v1
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		w, err := p.Store.Get(context.Background(), "default", loop.name)
		if err == nil && w.Generation == 2 && w.Phase == status.Tuning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("v2 is not tuning: %+v %v", w, err)
		}
	}
	loop.send(1) // v3, worse than both
	v3 := loop.settled(3)
	h3, _ := v3.Pushed(3)
	compared := h3.Scores[events.MetricServingEvalLoss]
	if v3.Live == 3 || v3.AdapterState(h3) != status.AdapterHeld || (compared != tunesim.EvalLoss(3) && compared != tunesim.EvalLoss(20)) {
		t.Fatalf("v3: serving %d, state %s, scores %v", v3.Live, v3.AdapterState(h3), h3.Scores)
	}
	if h2, pushed := v3.Pushed(2); pushed && v3.Live != 2 {
		t.Errorf("v2 pushed an adapter (%s), better than v1, and does not serve: serving %d", v3.AdapterState(h2), v3.Live)
	}
}

// The gate on task scores (kaitoflow.io/promotion: if-better:rougeL): the generated answers'
// ROUGE-L, not eval_loss, decides, and the decision and the history carry it. The sim trainer
// scores answers by its rule (tunesim.TaskScore: more distinct rows answer better; simulated).
func TestTaskScoresGatePromotion(t *testing.T) {
	p := start(t)
	loop := newUploadLoop(t, p, "if-better:rougeL")
	if v1 := loop.upload(3); v1.Live != 1 {
		t.Fatalf("v1: serving %d, %+v", v1.Live, v1.Failure)
	}
	v2 := loop.upload(1)
	want := fmt.Sprintf("held: rougeL %.4g vs %.4g serving (generation 1)", tunesim.TaskScore(1), tunesim.TaskScore(3))
	if v2.Live != 1 || !strings.Contains(v2.Held, want) {
		t.Fatalf("v2: serving %d, held %q; want %q", v2.Live, v2.Held, want)
	}
	v3 := loop.upload(9)
	h3, _ := v3.Pushed(3)
	if v3.Live != 3 || v3.Held != "" || h3.Scores[events.MetricTaskRougeL] != tunesim.TaskScore(9) ||
		h3.Scores[events.ServingPrefix+events.MetricTaskRougeL] != tunesim.TaskScore(3) || h3.Scores[events.BasePrefix+events.MetricTaskRougeL] != 0 {
		t.Fatalf("v3: serving %d, held %q, scores %v", v3.Live, v3.Held, h3.Scores)
	}
}

// Canary promotion in `up` (kaitoflow.io/promotion: canary:50%:3s), with the real chat-proxy in
// front of each simulated replica. v2 passes the offline gate and answers about half the
// requests next to v1; users see nothing wrong, and at the window's end it is promoted by itself
// with the live numbers. v3's canary gets thumbs down on its answers (chat-proxy's POST /feedback)
// and is rolled back by itself: v2 goes on answering. v4's canary is ended at once by a rollback.
func TestCanaryPromotesAndRollsBackOnLiveNumbers(t *testing.T) {
	p := startWith(t, startOptions{tick: 200 * time.Millisecond})
	ctx := context.Background()
	loop := newUploadLoop(t, p, "canary:50%:3s")
	v1 := loop.upload(3)
	if v1.Live != 1 {
		t.Fatalf("v1: serving %d, %+v", v1.Live, v1.Failure)
	}

	// canaryRuns uploads rows and waits for the generation's canary to answer.
	canaryRuns := func(rows int) (*status.Workspace, int64) {
		t.Helper()
		loop.send(rows)
		gen := loop.generation()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			w := waitGeneration(t, p, "default", loop.name, gen, 30*time.Second)
			if c, ok := w.Canary(); ok && c.Generation == gen && w.Phase == status.Ready {
				return w, gen
			}
			if time.Now().After(deadline) {
				t.Fatalf("generation %d: no canary running: %+v", gen, w)
			}
		}
	}
	// traffic sends n chats and returns how many each adapter answered, judging each answer with
	// judge (by the adapter that gave it) when judge is set.
	traffic := func(endpoint string, n int, judge func(answeredBy string) string) map[string]int {
		t.Helper()
		count := map[string]int{}
		for range n {
			resp, err := http.Post(endpoint+"/chat", "application/json", strings.NewReader(`{"prompt":"hi"}`))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("chat: %d %s", resp.StatusCode, b)
			}
			by := string(b)
			count[by]++
			if judge == nil {
				continue
			}
			id := resp.Header.Get(chatproxy.HeaderResponseID)
			fb, err := http.Post(endpoint+"/feedback", "application/json", strings.NewReader(`{"id":"`+id+`","rating":"`+judge(by)+`"}`))
			if err != nil {
				t.Fatal(err)
			}
			fb.Body.Close()
			if fb.StatusCode != http.StatusNoContent {
				t.Fatalf("feedback on %q: %d", id, fb.StatusCode)
			}
		}
		return count
	}
	answeredBy := func(counts map[string]int, image string) int {
		n := 0
		for answer, c := range counts {
			if strings.Contains(answer, serve.LoRAName(loop.name, image)) {
				n += c
			}
		}
		return n
	}
	decided := func(gen int64) *status.Workspace {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			w, err := p.Store.Get(ctx, "default", loop.name)
			if err == nil {
				if h, ok := w.Pushed(gen); ok && h.Live != nil && (w.Live == gen || h.Held != "") && w.Phase == status.Ready {
					return w
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("generation %d's canary was not judged: %+v", gen, w)
			}
		}
	}

	// v2: about half the requests (50% ± 15 points over 100), then promoted on its numbers.
	w, _ := canaryRuns(9)
	h2, _ := w.Pushed(2)
	if w.Live != 1 || !strings.Contains(w.History[len(w.History)-1].Canary, "50% of requests for 3s") {
		t.Fatalf("v2's canary: serving %d, %+v", w.Live, w.History)
	}
	counts := traffic(w.Endpoint, 100, nil)
	if n := answeredBy(counts, h2.Image); n < 35 || n > 65 || answeredBy(counts, v1.Image)+n != 100 {
		t.Fatalf("v2's canary answered %d of 100 (want 50±15): %v", n, counts)
	}
	w = decided(2)
	h2, _ = w.Pushed(2)
	if w.Live != 2 || h2.Held != "" || h2.Live.Canary.Requests < serve.MinCanaryRequests || h2.Live.Canary.Errors != 0 {
		t.Fatalf("v2 after its window: serving %d, held %q, live %+v", w.Live, h2.Held, h2.Live)
	}
	if n := answeredBy(traffic(w.Endpoint, 10, nil), h2.Image); n != 10 {
		t.Fatalf("after promotion v2 answered %d of 10", n)
	}
	// Judged once: one decision, whatever the ticks since.
	time.Sleep(time.Second)
	w, _ = p.Store.Get(ctx, "default", loop.name)
	decisions := 0
	for _, e := range w.Events {
		if e.Type == events.AdapterPromoted || e.Type == events.AdapterHeld {
			decisions++
		}
	}
	if decisions != 1 {
		t.Errorf("generation 2's canary decided %d times: %+v", decisions, w.Events)
	}

	// v3: users give its answers thumbs down and v2's thumbs up; it is rolled back by itself.
	w, _ = canaryRuns(27)
	h3, _ := w.Pushed(3)
	traffic(w.Endpoint, 100, func(answer string) string {
		if strings.Contains(answer, serve.LoRAName(loop.name, h3.Image)) {
			return "down"
		}
		return "up"
	})
	w = decided(3)
	h3, _ = w.Pushed(3)
	if w.Live != 2 || w.AdapterState(h3) != status.AdapterHeld || !strings.Contains(h3.Held, "thumbs up 0%") || h3.Live.Canary.Down == 0 {
		t.Fatalf("v3 after its window: serving %d, state %s, held %q, live %+v", w.Live, w.AdapterState(h3), h3.Held, h3.Live)
	}
	if n := answeredBy(traffic(w.Endpoint, 10, nil), h2.Image); n != 10 {
		t.Fatalf("after v3's rollback v2 answered %d of 10", n)
	}

	// v4: a rollback during the canary ends it at once.
	w, _ = canaryRuns(81)
	if _, err := (&api.Client{BaseURL: p.URL}).Rollback(ctx, loop.name, 0); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if n := answeredBy(traffic(w.Endpoint, 20, nil), h2.Image); n == 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("after the rollback v4's canary still answers")
		}
	}
	w, _ = p.Store.Get(ctx, "default", loop.name)
	if h4, _ := w.Pushed(4); w.AdapterState(h4) != status.AdapterHeld || !strings.Contains(h4.Held, "canary was ended by rollback to generation 2") {
		t.Errorf("v4 after the rollback: %s, %q", w.AdapterState(h4), h4.Held)
	}
}

// A checkpoint serves (kaitoflow promote NAME --generation 1 --checkpoint 60): the run's kept
// checkpoints are published as adapter images of their own with their eval loss (the sim trainer's
// by its rule, tunesim.CheckpointEvalLoss), the endpoint answers with the checkpoint live in the
// same replica, and promoting the generation's final adapter again serves it.
func TestACheckpointServes(t *testing.T) {
	// Steps long enough for each checkpoint's upload to finish before the run does (a run that
	// succeeds abandons an upload still in flight).
	p := start(t, func(c *assembly.Config) { c.Sim.Delay = 2 * time.Second })
	ctx := context.Background()
	loop := newUploadLoop(t, p, "always")
	v1 := loop.upload(3)
	h1, _ := v1.Pushed(1)
	var steps []string
	for _, c := range h1.Checkpoints {
		loss := -1.0
		if c.EvalLoss != nil {
			loss = *c.EvalLoss
		}
		if loss != tunesim.CheckpointEvalLoss(3, c.Step) {
			t.Errorf("checkpoint %d: eval loss %v, want %v", c.Step, loss, tunesim.CheckpointEvalLoss(3, c.Step))
		}
		steps = append(steps, fmt.Sprint(c.Step))
	}
	if strings.Join(steps, ",") != "60,80" {
		t.Fatalf("generation 1's checkpoints: %v", h1.Checkpoints)
	}
	_, pod := chatAt(t, v1.Endpoint)
	client := &api.Client{BaseURL: p.URL}
	if _, err := client.Promote(ctx, loop.name, 1, 70); err == nil || !strings.Contains(err.Error(), "no checkpoint at step 70 (its checkpoints: steps 60, 80)") {
		t.Errorf("a step with no checkpoint: %v", err)
	}
	serves := func(image string, step int) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			w, err := p.Store.Get(ctx, "default", loop.name)
			if err == nil && w.Live == 1 && w.LiveCheckpoint == step && w.Phase == status.Ready {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the record never served step %d: %+v %v", step, w, err)
			}
		}
		answer, by := chatAt(t, v1.Endpoint)
		if !strings.Contains(answer, serve.LoRAName(loop.name, image)) || by != pod {
			t.Fatalf("step %d: answered %q from %s; want %s from %s", step, answer, by, serve.LoRAName(loop.name, image), pod)
		}
	}
	if _, err := client.Promote(ctx, loop.name, 1, 60); err != nil {
		t.Fatal(err)
	}
	serves(h1.Checkpoints[0].Image, 60)
	if _, err := client.Promote(ctx, loop.name, 1, 0); err != nil {
		t.Fatal(err)
	}
	serves(v1.Image, 0)
}
