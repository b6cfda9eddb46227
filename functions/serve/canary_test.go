package serve

import (
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
)

func TestJudgeCanary(t *testing.T) {
	// arm is n requests with errs errors, each answered with 20 tokens in 0.4s, its first byte at
	// ttft seconds, and up/down feedback.
	arm := func(n, errs int64, ttft float64, up, down int64) kaito.CanaryArm {
		ok := float64(n - errs)
		return kaito.CanaryArm{Requests: n, Errors: errs, Answered: n - errs, FirstTokenSeconds: ttft * ok, Tokens: 20 * (n - errs), TokenSeconds: 0.4 * ok,
			Up: up, Down: down}
	}
	serving := arm(400, 2, 0.2, 40, 10)
	for _, tc := range []struct {
		name    string
		canary  kaito.CanaryArm
		stable  kaito.CanaryArm
		promote bool
		reason  string
	}{
		{"as good", arm(100, 0, 0.2, 9, 2), serving, true, "promoted: the canary did as well"},
		{"too few requests", arm(19, 0, 0.2, 0, 0), serving, false, "answered 19 requests, too few to judge (at least 20)"},
		{"more errors", arm(100, 5, 0.2, 0, 0), serving, false, "error rate 5.0% vs 0.5%"},
		{"errors within the margin", arm(100, 2, 0.2, 0, 0), serving, true, "promoted"},
		{"thumbs down", arm(100, 0, 0.2, 2, 8), serving, false, "thumbs up 20% vs 70% wanted"},
		{"too little feedback to count", arm(100, 0, 0.2, 0, 4), serving, true, "promoted"},
		{"thumbs down, the serving one unjudged", arm(100, 0, 0.2, 2, 4), arm(400, 0, 0.2, 0, 0), false, "thumbs up 33% vs 50% wanted"},
		{"slower first token", arm(100, 0, 0.5, 0, 0), serving, false, "first token 500ms vs 200ms"},
		{"slower within the slack", arm(100, 0, 0.3, 0, 0), serving, true, "promoted"},
		{"fewer tokens per second", kaito.CanaryArm{Requests: 100, FirstTokenSeconds: 20, Tokens: 2000, TokenSeconds: 100}, serving, false,
			"20 tokens/s vs 50"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			promote, reason := JudgeCanary(kaito.CanaryLive{Stable: tc.stable, Canary: tc.canary})
			if promote != tc.promote || !strings.Contains(reason, tc.reason) || !strings.Contains(reason, "serving ") {
				t.Errorf("%t, %q; want %t, %q", promote, reason, tc.promote, tc.reason)
			}
		})
	}
}

// A replica's numbers are its totals: the newest replaces its last, and one gone still counts.
func TestLiveTallyKeepsReplicasThatWent(t *testing.T) {
	tally := LiveTally{}
	tally["a"] = kaito.CanaryLive{Canary: kaito.CanaryArm{Requests: 5}, Stable: kaito.CanaryArm{Requests: 50}}
	tally["b"] = kaito.CanaryLive{Canary: kaito.CanaryArm{Requests: 3, Up: 1}}
	tally["a"] = kaito.CanaryLive{Canary: kaito.CanaryArm{Requests: 7}, Stable: kaito.CanaryArm{Requests: 60}}
	if got := tally.Total(); got.Canary.Requests != 10 || got.Stable.Requests != 60 || got.Canary.Up != 1 {
		t.Errorf("total %+v", got)
	}
}
