package kaito

import (
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

func TestParsePromotion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Promotion
		err  string
	}{
		{"", Promotion{Policy: PromoteAlways}, ""},
		{"always", Promotion{Policy: PromoteAlways}, ""},
		{"manual", Promotion{Policy: PromoteManual}, ""},
		{"if-better", Promotion{Policy: PromoteIfBetter}, ""},
		{"if-better:0.02", Promotion{Policy: PromoteIfBetter, MinImprovement: 0.02}, ""},
		{"if-better:-1", Promotion{}, "non-negative"},
		{"if-better:rougeL", Promotion{Policy: PromoteIfBetter, Metric: CompareRougeL}, ""},
		{"if-better:exact_match:0.1", Promotion{Policy: PromoteIfBetter, Metric: CompareExactMatch, MinImprovement: 0.1}, ""},
		{"if-better:eval_loss:0.02", Promotion{Policy: PromoteIfBetter, Metric: CompareEvalLoss, MinImprovement: 0.02}, ""},
		{"if-better:bleu:0.1", Promotion{}, `"bleu" is not a metric`},
		{"if-better:bleu", Promotion{}, "non-negative improvement"},
		{"if-better:rougeL:x", Promotion{}, "non-negative improvement"},
		{"if-better:NaN", Promotion{}, "non-negative improvement"},
		{"if-better:rougeL:+Inf", Promotion{}, "non-negative improvement"},
		{"if-better:rougeL:0.1:2", Promotion{}, "want always"},
		{"manual:1", Promotion{}, "want always"},
		{"sometimes", Promotion{}, "want always, if-better, if-better:N, if-better:METRIC[:N], manual or canary[:SHARE%[:WINDOW]]"},
		{"canary", Promotion{Policy: PromoteCanary, Share: 10, Window: 30 * time.Minute}, ""},
		{"canary:25%", Promotion{Policy: PromoteCanary, Share: 25, Window: 30 * time.Minute}, ""},
		{"canary:5%:2h", Promotion{Policy: PromoteCanary, Share: 5, Window: 2 * time.Hour}, ""},
		{"canary:50%:3s", Promotion{Policy: PromoteCanary, Share: 50, Window: 3 * time.Second}, ""},
		{"canary:10", Promotion{}, "want a percentage of requests from 1% to 99%"},
		{"canary:0%", Promotion{}, "1% to 99%"},
		{"canary:100%", Promotion{}, "1% to 99%"},
		{"canary:10%:soon", Promotion{}, `the canary's window "soon"`},
		{"canary:10%:100ms", Promotion{}, "from 1s to 168h0m0s"},
		{"canary:10%:30m:x", Promotion{}, "want always"},
	} {
		got, err := ParsePromotion(tc.in)
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) || got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v, %q", tc.in, got, err, tc.want, tc.err)
		}
	}
	// Refused at submission, naming the annotation; and only on a tuning workspace.
	ws := Workspace{Inference: &InferenceSpec{}}
	ws.Name = "w"
	ws.Annotations = map[string]string{AnnotationPromotion: "if-better"}
	if errs := ws.Validate(netguard.AddressPolicy{}); !strings.Contains(errs.ToAggregate().Error(), "metadata.annotations[kaitoflow.io/promotion]: Forbidden") {
		t.Errorf("inference workspace with a policy: %v", errs)
	}
	ws.Annotations[AnnotationPromotion] = "sometimes"
	if errs := ws.Validate(netguard.AddressPolicy{}); !strings.Contains(errs.ToAggregate().Error(), "metadata.annotations[kaitoflow.io/promotion]: Invalid value") {
		t.Errorf("a bad policy: %v", errs)
	}
	// A canary splits one service's requests: a serving pool's is shared.
	ws = Workspace{Tuning: &TuningSpec{}}
	ws.Name = "w"
	ws.Annotations = map[string]string{AnnotationPromotion: "canary", AnnotationServingPool: "pool", AnnotationServingPoolSize: "4"}
	if errs := ws.Validate(netguard.AddressPolicy{}); !strings.Contains(errs.ToAggregate().Error(), "a serving pool's service is shared") {
		t.Errorf("a canary in a serving pool: %v", errs)
	}
	for _, v := range []string{"canary", "canary:10%:30m", "if-better:rougeL:0.05"} {
		if p, _ := ParsePromotion(v); p.String() != map[string]string{"canary": "canary:10%:30m"}[v] && p.String() != v {
			t.Errorf("%q reads back as %q", v, p.String())
		}
	}
}
