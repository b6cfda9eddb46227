package serve

import (
	"testing"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
)

// The promotion policy on a pushed adapter, for each policy and each way the scores can be.
func TestGate(t *testing.T) {
	ref := events.Ref{Namespace: "d", Name: "w", Generation: 3}
	compared := &events.ComparedAdapter{Generation: 2, Reference: "r@sha256:2"}
	scores := func(newLoss, serving float64) map[string]float64 {
		return map[string]float64{events.MetricEvalLoss: newLoss, events.MetricServingEvalLoss: serving, events.MetricBaseEvalLoss: 2}
	}
	// task is a run whose answers score now and serving on metric, and whose eval_loss says the
	// opposite of what they say.
	task := func(metric string, now, serving float64) map[string]float64 {
		m := scores(1.2, 1.1)
		if now < serving {
			m = scores(1.1, 1.2)
		}
		m[metric], m[events.ServingPrefix+metric] = now, serving
		return m
	}
	for _, tc := range []struct {
		name, policy string
		compared     *events.ComparedAdapter
		metrics      map[string]float64
		decision     Decision
		reason       string
	}{
		{"nothing serving", "manual", nil, map[string]float64{events.MetricEvalLoss: 1.5, events.MetricBaseEvalLoss: 2}, Promote, "promoted: nothing was serving (eval_loss 1.5, the base model 2)"},
		{"no policy", "", compared, scores(1.9, 1.2), Promote, "promoted: policy always"},
		{"always", "always", compared, scores(1.9, 1.2), Promote, "promoted: policy always"},
		{"manual", "manual", compared, scores(1.1, 1.2), Hold, "held: policy manual; `kaitoflow promote w --generation 3` serves it"},
		{"better", "if-better", compared, scores(1.1, 1.2), Promote, "promoted: eval_loss 1.1 vs 1.2 serving (generation 2)"},
		{"worse", "if-better", compared, scores(1.42, 1.37), Hold, "held: eval_loss 1.42 vs 1.37 serving (generation 2)"},
		{"equal", "if-better", compared, scores(1.2, 1.2), Promote, "promoted: eval_loss 1.2 vs 1.2 serving (generation 2)"},
		{"not better by enough", "if-better:0.05", compared, scores(1.17, 1.2), Hold, "held: eval_loss 1.17 vs 1.2 serving (generation 2), and the policy wants it lower by 0.05"},
		{"better by enough", "if-better:0.05", compared, scores(1.1, 1.2), Promote, "promoted: eval_loss 1.1 vs 1.2 serving (generation 2)"},
		{"the serving adapter not scored", "if-better", compared, map[string]float64{events.MetricEvalLoss: 1.1}, Hold, "held: the evaluation failed (no serving_eval_loss); generation 2 keeps serving"},
		{"nothing scored", "if-better", compared, nil, Hold, "held: the evaluation failed (no eval_loss); generation 2 keeps serving"},
		// Task scores: higher is better, whatever the losses say.
		{"answers better, loss worse", "if-better:rougeL", compared, task(events.MetricTaskRougeL, 0.41, 0.37), Promote,
			"promoted: rougeL 0.41 vs 0.37 serving (generation 2)"},
		{"answers worse, loss better", "if-better:rougeL", compared, task(events.MetricTaskRougeL, 0.30, 0.37), Hold,
			"held: rougeL 0.3 vs 0.37 serving (generation 2)"},
		{"exact match not better by enough", "if-better:exact_match:0.1", compared, task(events.MetricTaskExactMatch, 0.25, 0.2), Hold,
			"held: exact_match 0.25 vs 0.2 serving (generation 2), and the policy wants it higher by 0.1"},
		{"exact match better by enough", "if-better:exact_match:0.1", compared, task(events.MetricTaskExactMatch, 0.5, 0.2), Promote,
			"promoted: exact_match 0.5 vs 0.2 serving (generation 2)"},
		{"serving answers not scored", "if-better:rougeL", compared, scores(1.1, 1.2), Hold,
			"held: the evaluation failed (no task_rougeL); generation 2 keeps serving"},
		// A canary: its offline gate holds a worse eval_loss; anything else gets its share.
		{"canary, loss better", "canary:20%:1h", compared, scores(1.1, 1.2), StartCanary,
			"canary: 20% of the requests for 1h next to generation 2 (eval_loss 1.1 vs 1.2 serving)"},
		{"canary, loss worse", "canary", compared, scores(1.3, 1.2), Hold, "held: the canary's offline gate: eval_loss 1.3 vs 1.2 serving (generation 2)"},
		{"canary, not scored", "canary", compared, nil, StartCanary,
			"canary: 10% of the requests for 30m next to generation 2 (no eval_loss to compare: the live numbers decide)"},
		{"canary, nothing serving", "canary", nil, nil, Promote, "promoted: nothing was serving"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := kaito.Workspace{}
			if tc.policy != "" {
				ws.Annotations = map[string]string{kaito.AnnotationPromotion: tc.policy}
			}
			decision, g := Gate(ref, events.ImagePushedData{Workspace: ws, Reference: "r@sha256:3", Metrics: tc.metrics, Compared: tc.compared})
			if decision != tc.decision || g.Reason != tc.reason {
				t.Errorf("%s, %q; want %s, %q", decision, g.Reason, tc.decision, tc.reason)
			}
			for k, v := range tc.metrics {
				if g.Scores[k] != v {
					t.Errorf("the decision's scores %v lack %s=%g", g.Scores, k, v)
				}
			}
		})
	}
}

// The tuned adapter is pulled with the workspace's pull-only secret, or none; the push secret never
// reaches the serving pods (it once doubled as their pull secret, mounted into chat-proxy).
func TestTunedAdapterNeverCarriesThePushSecret(t *testing.T) {
	ref := events.Ref{Namespace: "team-a", Name: "ws", Generation: 1}
	ws := kaito.Workspace{Tuning: &kaito.TuningSpec{Output: &kaito.DataDestination{Image: "r.azurecr.io/a:1", ImagePushSecret: "acr-push"}}}
	if got := tunedAdapter(ref, ws, "r.azurecr.io/a@sha256:x").PullSecrets; len(got) != 0 {
		t.Errorf("no pull secret named: pulls with %v", got)
	}
	ws.Annotations = map[string]string{kaito.AnnotationAdapterPullSecret: "acr-pull"}
	if got := tunedAdapter(ref, ws, "r.azurecr.io/a@sha256:x").PullSecrets; len(got) != 1 || got[0] != "acr-pull" {
		t.Errorf("pull-only secret named: pulls with %v", got)
	}
}
