package events

import (
	"time"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
)

// Metric names the trainer reports on the held-out rows, by which adapters are compared.
const (
	// MetricEvalLoss is the new adapter's.
	MetricEvalLoss = "eval_loss"
	// MetricServingEvalLoss is the adapter serving when the run started, on the same rows.
	MetricServingEvalLoss = "serving_eval_loss"
	// MetricBaseEvalLoss is the base model's, with no adapter.
	MetricBaseEvalLoss = "base_eval_loss"

	// MetricTaskExactMatch and MetricTaskRougeL score the new adapter's generated answers against
	// the dataset's responses (the held-out rows, or the workspace's eval set): the share of exact
	// matches and the mean ROUGE-L F1, both in [0, 1], higher is better. ServingPrefix and
	// BasePrefix name the same scores of the serving adapter and the base model, on the same rows.
	MetricTaskExactMatch = "task_exact_match"
	MetricTaskRougeL     = "task_rougeL"
	// MetricTaskExamples is how many rows the task scores are over.
	MetricTaskExamples = "task_examples"

	ServingPrefix = "serving_"
	BasePrefix    = "base_"
)

// ScoreMetrics are the metrics a run's adapter is judged by, each as the new adapter's, the
// serving one's and the base model's: what the gate, the adapters' history and `kaitoflow
// adapters` keep of a run's metrics.
func ScoreMetrics() []string {
	var out []string
	for _, m := range []string{MetricEvalLoss, MetricTaskExactMatch, MetricTaskRougeL} {
		out = append(out, m, ServingPrefix+m, BasePrefix+m)
	}
	return append(out, MetricTaskExamples)
}

// Scores are the ScoreMetrics among metrics; nil when there are none.
func Scores(metrics map[string]float64) map[string]float64 {
	var out map[string]float64
	for _, k := range ScoreMetrics() {
		if v, ok := metrics[k]; ok {
			if out == nil {
				out = map[string]float64{}
			}
			out[k] = v
		}
	}
	return out
}

// CompareKeys are the metrics a promotion policy's if-better compares for metric (kaito.Compare*):
// the new adapter's, the serving adapter's, and whether higher is better.
func CompareKeys(metric string) (newKey, servingKey string, higherIsBetter bool) {
	switch metric {
	case kaito.CompareRougeL:
		return MetricTaskRougeL, ServingPrefix + MetricTaskRougeL, true
	case kaito.CompareExactMatch:
		return MetricTaskExactMatch, ServingPrefix + MetricTaskExactMatch, true
	}
	return MetricEvalLoss, MetricServingEvalLoss, false
}

// ComparedAdapter is the adapter a tuning run compared its own with: the one serving when it
// started.
type ComparedAdapter struct {
	Generation int64  `json:"generation"`
	Reference  string `json:"reference"`
}

// AdapterGateData is the payload of kaitoflow.adapter.promoted and kaitoflow.adapter.held: what
// the promotion policy decided for a generation's adapter, and on which numbers.
type AdapterGateData struct {
	Ref       Ref    `json:"ref"`
	Reference string `json:"reference"`
	Policy    string `json:"policy"`
	// Scores are the run's ScoreMetrics, those it has.
	Scores map[string]float64 `json:"scores,omitempty"`
	// Compared is the adapter it was compared with; nil when nothing was serving.
	Compared *ComparedAdapter `json:"compared,omitempty"`
	// Reason says why, in a line ("held: eval_loss 1.42 vs 1.37 serving (generation 1)").
	Reason string `json:"reason"`
	// Canary is the canary's share and window: set on kaitoflow.adapter.canary, which starts one,
	// and on the decision that ends it.
	Canary *CanaryWindow `json:"canary,omitempty"`
	// Live is what users saw of the canary and of the adapter serving beside it, on the decision
	// at the window's end.
	Live *kaito.CanaryLive `json:"live,omitempty"`
}

// CanaryWindow is a canary's share of requests (percent) and when it started and ends.
type CanaryWindow struct {
	Share int       `json:"share"`
	Start time.Time `json:"start"`
	Ends  time.Time `json:"ends"`
}
