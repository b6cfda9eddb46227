package jobrun

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kaitoflow/kaitoflow/internal/kubeclient"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/presets"
)

// ProgressPrefix starts the lines the trainer prints for progress (presets/trainer).
var ProgressPrefix = presets.Contract().Prefixes.Progress

// ReportInterval bounds how often progress is reported: each report becomes an event.
const ReportInterval = 30 * time.Second

// Reporter makes training progress visible outside the pod.
type Reporter interface {
	Report(ctx context.Context, p events.TuningProgressData) error
}

type trainerLine struct {
	Step            int     `json:"step"`
	MaxSteps        int     `json:"max_steps"`
	Loss            float64 `json:"loss"`
	TokensPerSecond float64 `json:"tokens_per_second"`
}

// tee reads the trainer's output: progress lines go to rep, checkpoint lines to ckpts.
type tee struct {
	rep   Reporter
	ckpts *checkpoints
	// from is the step the run resumed at: the rate counts the steps done since.
	from int
}

// run copies the trainer's output to w unchanged and reports its progress lines, at most once
// per every (and always the first), with an ETA from the step rate and the newest checkpoint
// stored; checkpoint lines start their upload.
func (t tee) run(ctx context.Context, r io.Reader, w io.Writer, every time.Duration, now func() time.Time, log *slog.Logger) {
	rep := t.rep
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	start := now()
	var last time.Time
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(w, line)
		if rest, ok := strings.CutPrefix(line, CheckpointPrefix); ok && t.ckpts != nil {
			var cl checkpointLine
			if json.Unmarshal([]byte(rest), &cl) == nil && cl.Step > 0 && cl.Path != "" {
				t.ckpts.saved(cl)
			}
			continue
		}
		rest, ok := strings.CutPrefix(line, ProgressPrefix)
		if !ok || rep == nil {
			continue
		}
		var tl trainerLine
		if json.Unmarshal([]byte(rest), &tl) != nil || tl.Step <= 0 {
			continue
		}
		at := now()
		if !last.IsZero() && at.Sub(last) < every {
			continue
		}
		p := events.TuningProgressData{Step: tl.Step, MaxSteps: tl.MaxSteps, Loss: tl.Loss, TokensPerSecond: tl.TokensPerSecond}
		if t.ckpts != nil {
			p.CheckpointStep = t.ckpts.newest()
		}
		if tl.MaxSteps > tl.Step && tl.Step > t.from {
			perStep := at.Sub(start).Seconds() / float64(tl.Step-t.from)
			p.ETASeconds = perStep * float64(tl.MaxSteps-tl.Step)
		}
		if err := rep.Report(ctx, p); err != nil {
			log.Warn("job-run: report progress", "err", err)
		}
		last = at
	}
	// Drain whatever is left so the trainer never blocks on a full pipe.
	_, _ = io.Copy(w, r)
}

// PodAnnotator reports progress as an annotation on the pod itself; the Pod watch turns the change
// into kaitoflow.job.changed and tune into kaitoflow.tuning.progress. It needs only permission to
// patch its own Pod.
type PodAnnotator struct {
	// Client acts as the pod's ServiceAccount.
	Client    *kubeclient.Client
	Namespace string
	Pod       string
}

// Report implements Reporter.
func (a PodAnnotator) Report(ctx context.Context, p events.TuningProgressData) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{"kaitoflow.io/progress": string(b)}}})
	if err != nil {
		return err
	}
	_, err = a.Client.Pods(a.Namespace).Patch(ctx, a.Pod, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}
