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
	"k8s.io/client-go/kubernetes"

	"github.com/kaitoflow/kaitoflow/events"
)

// ProgressPrefix starts the lines the trainer prints for progress (presets/trainer).
const ProgressPrefix = "KAITOFLOW_PROGRESS "

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

// progressTee copies the trainer's output to w unchanged and reports its progress lines, at
// most once per every (and always the first), with an ETA from the step rate.
func progressTee(ctx context.Context, r io.Reader, w io.Writer, rep Reporter, every time.Duration, now func() time.Time, log *slog.Logger) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	start := now()
	var last time.Time
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(w, line)
		rest, ok := strings.CutPrefix(line, ProgressPrefix)
		if !ok || rep == nil {
			continue
		}
		var tl trainerLine
		if json.Unmarshal([]byte(rest), &tl) != nil || tl.Step <= 0 {
			continue
		}
		t := now()
		if !last.IsZero() && t.Sub(last) < every {
			continue
		}
		p := events.TuningProgressData{Step: tl.Step, MaxSteps: tl.MaxSteps, Loss: tl.Loss, TokensPerSecond: tl.TokensPerSecond}
		if tl.MaxSteps > tl.Step {
			perStep := t.Sub(start).Seconds() / float64(tl.Step)
			p.ETASeconds = perStep * float64(tl.MaxSteps-tl.Step)
		}
		if err := rep.Report(ctx, p); err != nil {
			log.Warn("job-run: report progress", "err", err)
		}
		last = t
	}
	// Drain whatever is left so the trainer never blocks on a full pipe.
	_, _ = io.Copy(w, r)
}

// PodAnnotator reports progress as an annotation on the pod itself; the Pod watch turns the change
// into kaitoflow.job.changed and tune into kaitoflow.tuning.progress. It needs only permission to
// patch its own Pod.
type PodAnnotator struct {
	Client    kubernetes.Interface
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
	_, err = a.Client.CoreV1().Pods(a.Namespace).Patch(ctx, a.Pod, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}
