package embedded

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tunelocal "github.com/kaitoflow/kaitoflow/functions/tune/local"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// `up` that really fine-tunes: the seed's shape (phi-3-mini-128k-instruct, a dolly-style parquet,
// an output image) with the local trainer — kaitoflow's Python trainer run by job-run on this
// machine (CPU), on a tiny Phi-3-shaped model the test makes and maps the preset to
// (--local-model), with a tuning.config of what a tiny CPU run needs. The workspace goes to Ready;
// the adapter image in the embedded registry holds a real adapter (peft loads it and it changes
// the model), and the status carries the run's real metrics and progress.
func TestUpFineTunesWithTheLocalTrainer(t *testing.T) {
	py := testenv.MLPython(t)
	tiny := testenv.TinyModel(t, py)
	dataURL := tiny.Serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fns := assembly.Config{
		Policy: netguard.AddressPolicy{Allow: []string{"127.0.0.1"}},
		Drivers: assembly.Drivers{Trainer: "local", Local: tunelocal.Python{Interpreter: py, TrainerDir: testenv.TrainerDir(t),
			Models: map[string]string{"phi-3-mini-128k-instruct": tiny.Model}, CPU: true}},
	}
	p, err := Start(ctx, Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
		Delivery:  runtime.JetStreamOptions{AckWait: 5 * time.Second, Backoff: []time.Duration{50 * time.Millisecond}},
		Functions: fns,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// What a tiny run on a CPU needs.
	cm := tiny.ConfigMap("tiny-cpu", 16)
	resp, err := http.Post(p.URL+"/v1/configmaps", "application/yaml", strings.NewReader(cm))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		t.Fatalf("ConfigMap: %d %s", resp.StatusCode, body)
	}
	doc := testenv.SeedManifest(t, "tiny-cpu", dataURL)
	if code, body := submit(t, p, []byte(doc)); code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, body)
	}
	w := waitTerminal(t, p, "default", "workspace-tuning-phi-3", 5*time.Minute)
	if w.Phase != status.Ready {
		t.Fatalf("phase %s, failure %+v", w.Phase, w.Failure)
	}
	if len(w.History) != 1 {
		t.Fatalf("history %+v", w.History)
	}
	for _, m := range []string{events.MetricEvalLoss, events.MetricBaseEvalLoss} {
		if v, ok := w.History[0].Scores[m]; !ok || math.IsNaN(v) || v <= 0 {
			t.Errorf("score %s = %v (present %v): %v", m, v, ok, w.History[0].Scores)
		}
	}
	if w.History[0].Scores[events.MetricEvalLoss] >= w.History[0].Scores[events.MetricBaseEvalLoss] {
		t.Errorf("the tuned adapter scores no better than the base model: %v", w.History[0].Scores)
	}
	progressed := false
	for _, e := range w.Events {
		progressed = progressed || e.Type == events.TuningProgress && strings.Contains(e.Note, "/16")
	}
	if !progressed {
		t.Errorf("no progress of the 16 steps in the timeline: %+v", w.Events)
	}
	ref, err := name.ParseReference(w.Image, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := adapter.Pull(ref, dir, adapter.AdapterLimits); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "adapter_config.json")); bytes.Contains(b, []byte("sim")) {
		t.Errorf("the adapter is the sim's: %s", b)
	}
	testenv.AssertAdapterChangesModel(t, py, tiny.Model, dir)
}
