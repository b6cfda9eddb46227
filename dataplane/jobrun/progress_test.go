package jobrun

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/events"
)

type reports struct{ got []events.TuningProgressData }

func (r *reports) Report(_ context.Context, p events.TuningProgressData) error {
	r.got = append(r.got, p)
	return nil
}

func TestProgressTee(t *testing.T) {
	out := strings.Join([]string{
		"loading model",
		ProgressPrefix + `{"step": 10, "max_steps": 100, "loss": 2.5}`,
		ProgressPrefix + `{"step": 20, "max_steps": 100, "loss": 2.1}`, // within the interval: not reported
		"some log line",
		ProgressPrefix + `{"step": 50, "max_steps": 100, "loss": 1.5, "tokens_per_second": 900}`,
		ProgressPrefix + `not json`,
		"done",
	}, "\n") + "\n"
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ticks := []time.Duration{0, 10 * time.Second, 20 * time.Second, 50 * time.Second, 60 * time.Second}
	i := 0
	now := func() time.Time {
		d := ticks[min(i, len(ticks)-1)]
		i++
		return clock.Add(d)
	}
	var w bytes.Buffer
	rep := &reports{}
	tee{rep: rep}.run(context.Background(), strings.NewReader(out), &w, 30*time.Second, now, slog.New(slog.DiscardHandler))
	if w.String() != out {
		t.Errorf("the trainer's output was changed:\n%s", w.String())
	}
	if len(rep.got) != 2 || rep.got[0].Step != 10 || rep.got[1].Step != 50 || rep.got[1].TokensPerSecond != 900 {
		t.Fatalf("reports %+v", rep.got)
	}
	// 50 steps in 50 s: 50 more take 50 s.
	if eta := rep.got[1].ETASeconds; eta < 49 || eta > 51 {
		t.Errorf("ETA %.1f s, want ~50", eta)
	}
}

// FuzzTrainerOutput: whatever the trainer prints reaches the pod's log unchanged, and the progress
// and checkpoint lines in it are read without a panic; a checkpoint announced for a run that keeps
// none in a registry (no output image) is only counted.
func FuzzTrainerOutput(f *testing.F) {
	f.Add(ProgressPrefix + `{"step": 10, "max_steps": 100, "loss": 2.5}` + "\n" + CheckpointPrefix + `{"step": 10, "path": "/tmp/x"}` + "\n")
	f.Add(CheckpointPrefix + `{"step": -1}` + "\n" + ProgressPrefix + "{}\nplain\n")
	f.Add(strings.Repeat("x", 70000) + "\n")
	f.Fuzz(func(t *testing.T, out string) {
		var w bytes.Buffer
		log := slog.New(slog.DiscardHandler)
		ckpts := newCheckpoints(context.Background(), Config{}, 0, log)
		tee{rep: &reports{}, ckpts: ckpts}.run(context.Background(), strings.NewReader(out), &w, time.Nanosecond, time.Now, log)
		ckpts.wait(false)
		// Lines are copied as lines: a final newline is added, and \r\n becomes \n.
		want := strings.ReplaceAll(out, "\r", "")
		if got := strings.ReplaceAll(w.String(), "\r", ""); !strings.HasPrefix(got, want) || len(got) > len(want)+1 {
			t.Errorf("output changed: %q → %q", out, w.String())
		}
	})
}
