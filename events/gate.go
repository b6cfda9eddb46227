package events

// Metric names the trainer reports on the held-out rows, by which adapters are compared.
const (
	// MetricEvalLoss is the new adapter's.
	MetricEvalLoss = "eval_loss"
	// MetricServingEvalLoss is the adapter serving when the run started, on the same rows.
	MetricServingEvalLoss = "serving_eval_loss"
	// MetricBaseEvalLoss is the base model's, with no adapter.
	MetricBaseEvalLoss = "base_eval_loss"
)

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
	// Scores are the run's eval losses (MetricEvalLoss, MetricServingEvalLoss,
	// MetricBaseEvalLoss), those it has.
	Scores map[string]float64 `json:"scores,omitempty"`
	// Compared is the adapter it was compared with; nil when nothing was serving.
	Compared *ComparedAdapter `json:"compared,omitempty"`
	// Reason says why, in a line ("held: eval_loss 1.42 vs 1.37 serving (generation 1)").
	Reason string `json:"reason"`
}
