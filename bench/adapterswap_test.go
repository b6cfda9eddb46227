package bench

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/serve/sim"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// BenchmarkAdapterSwap times a new generation's adapter from image.pushed (the serve function's
// Apply) to the adapter answering a chat request, two ways in the same run on the sim deployer:
// loaded live into the warm replica (the adapter set changes; pull, runtime load, probe, route
// swap) and, as the baseline, a new revision (what a pod-template change costs: a new replica
// that loads the base model, then the adapter). Both use the same simulated model load (modelLoad)
// and LoRA load, so the ratio is what avoiding the model load buys at that load time; the real
// model load (phi-3-mini from a warm cache, minutes from Hugging Face) is longer still.
func BenchmarkAdapterSwap(b *testing.B) {
	const modelLoad, loraLoad = 2 * time.Second, 20 * time.Millisecond
	host := testenv.Registry(b)
	simd := &sim.Deployer{Delay: modelLoad, LoRALoadDelay: loraLoad, Dir: b.TempDir(), Log: slog.New(slog.DiscardHandler)}
	srv := httptest.NewServer(simd.Handler())
	defer srv.Close()
	simd.BaseURL = srv.URL
	ws := kaito.Workspace{Tuning: &kaito.TuningSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-128k-instruct"}}}}
	ctx := context.Background()
	gen := int64(0)
	plan := &events.Plan{RuntimeArgs: []string{"--seed", "0"}}
	// swap applies the next generation with a new adapter image (and, for a new revision, other
	// runtime arguments) and returns how long until the new adapter answers.
	swap := func(newRevision bool) time.Duration {
		gen++
		image := testenv.PushAdapter(b, host, "ws", "g"+time.Now().Format("150405.000000000"))
		if newRevision {
			plan = &events.Plan{RuntimeArgs: []string{"--seed", strconv.FormatInt(gen, 10)}}
		}
		d := serve.Deployment{Ref: events.Ref{Namespace: "default", Name: "ws", Generation: gen}, Service: "ws", Workspace: ws, Plan: plan,
			Adapters: []serve.Adapter{{Name: "ws", Image: image}}}
		want := serve.LoRAName("ws", image)
		start := time.Now()
		if err := simd.Apply(ctx, d); err != nil {
			b.Fatal(err)
		}
		for {
			resp, err := http.Post(simd.BaseURL+"/default/ws/chat", "application/json", strings.NewReader(`{"prompt":"hi"}`))
			if err != nil {
				b.Fatal(err)
			}
			var out struct{ Result string }
			_ = json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			if strings.Contains(out.Result, want) {
				return time.Since(start)
			}
			time.Sleep(time.Millisecond)
		}
	}
	swap(false) // the first revision: the model loads once
	for b.Loop() {
		var live, revision []time.Duration
		for range 5 {
			live = append(live, swap(false))
			revision = append(revision, swap(true))
		}
		slices.Sort(live)
		slices.Sort(revision)
		l, r := live[len(live)/2], revision[len(revision)/2]
		b.ReportMetric(float64(l.Milliseconds()), "live-ms")
		b.ReportMetric(float64(r.Milliseconds()), "new-revision-ms")
		b.ReportMetric(float64(r)/float64(l), "revision/live")
		b.Logf("\nimage.pushed → new adapter answering (median of 5; sim model load %s, LoRA load %s)\nlive into the warm replica\t%s\nnew revision (baseline)\t%s\nratio\t%.1f×",
			modelLoad, loraLoad, l.Round(time.Millisecond), r.Round(time.Millisecond), float64(r)/float64(l))
	}
}
