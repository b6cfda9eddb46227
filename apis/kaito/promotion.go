package kaito

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// AnnotationPromotion is a tuning workspace's promotion policy: when a generation's adapter is
// served in place of the one serving (kaitoflow's own, outside Kaito's spec).
//
//	always                  every new generation is served (the default: Kaito's behaviour)
//	if-better               served only if its eval_loss on the new data's held-out rows beats the
//	if-better:0.02          serving adapter's on the same rows, by at least the number given
//	if-better:rougeL        served only if its answers score better than the serving adapter's on
//	if-better:rougeL:0.05   the same rows (ROUGE-L F1 or exact_match, higher is better), by at
//	if-better:exact_match   least the number given
//	manual                  held until `kaitoflow promote NAME --generation N`
//	canary                  one that passes the offline gate (its eval_loss no worse than the
//	canary:10%              serving adapter's, where both are known) answers a share of the
//	canary:10%:30m          requests (10% unless given) next to the serving one for a window
//	                        (30m unless given); at the window's end it is promoted or rolled back
//	                        on what users saw: errors, time to first token, tokens/s, feedback
//
// A held adapter is pushed and kept, not served. The first generation with nothing serving is
// always served.
const AnnotationPromotion = "kaitoflow.io/promotion"

// Promotion policies.
const (
	PromoteAlways   = "always"
	PromoteIfBetter = "if-better"
	PromoteManual   = "manual"
	PromoteCanary   = "canary"
)

// A canary's defaults and bounds: the share of requests it answers (percent) and how long.
const (
	DefaultCanaryShare  = 10
	DefaultCanaryWindow = 30 * time.Minute
	MinCanaryWindow     = time.Second
	MaxCanaryWindow     = 7 * 24 * time.Hour
)

// The metrics if-better compares: the eval loss (lower is better) or a task score of generated
// answers (higher is better).
const (
	CompareEvalLoss   = "eval_loss"
	CompareRougeL     = "rougeL"
	CompareExactMatch = "exact_match"
)

// Promotion is a parsed AnnotationPromotion.
type Promotion struct {
	Policy string
	// Metric is what if-better compares: CompareEvalLoss (also when empty), CompareRougeL or
	// CompareExactMatch.
	Metric string
	// MinImprovement is by how much the metric must be better (if-better).
	MinImprovement float64
	// Share is the percentage of requests a canary answers, Window how long (canary).
	Share  int
	Window time.Duration
}

// CompareBy is the metric if-better compares.
func (p Promotion) CompareBy() string {
	if p.Metric == "" {
		return CompareEvalLoss
	}
	return p.Metric
}

// String is the annotation's value.
func (p Promotion) String() string {
	s := p.Policy
	if p.Policy == PromoteIfBetter && p.CompareBy() != CompareEvalLoss {
		s += ":" + p.Metric
	}
	if p.Policy == PromoteIfBetter && p.MinImprovement > 0 {
		s += ":" + strconv.FormatFloat(p.MinImprovement, 'g', -1, 64)
	}
	if p.Policy == PromoteCanary {
		s += fmt.Sprintf(":%d%%:%s", p.Share, ShortDuration(p.Window))
	}
	return s
}

// ShortDuration writes d as a person would (30m, 2h, 1h30m) rather than as time.Duration does
// (30m0s, 2h0m0s).
func ShortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// ParsePromotion reads an AnnotationPromotion value ("" is always).
func ParsePromotion(v string) (Promotion, error) {
	parts := strings.Split(strings.TrimSpace(v), ":")
	switch policy := parts[0]; {
	case len(parts) == 1 && (policy == "" || policy == PromoteAlways):
		return Promotion{Policy: PromoteAlways}, nil
	case len(parts) == 1 && (policy == PromoteManual || policy == PromoteIfBetter):
		return Promotion{Policy: policy}, nil
	case policy == PromoteIfBetter && len(parts) <= 3:
		return parseIfBetter(v, parts[1:])
	case policy == PromoteCanary && len(parts) <= 3:
		return parseCanary(v, parts[1:])
	}
	return Promotion{}, fmt.Errorf("%q: want always, if-better, if-better:N, if-better:METRIC[:N], manual or canary[:SHARE%%[:WINDOW]]", v)
}

// parseCanary reads what follows canary: the share of requests ("10%") and the window ("30m").
func parseCanary(v string, rest []string) (Promotion, error) {
	p := Promotion{Policy: PromoteCanary, Share: DefaultCanaryShare, Window: DefaultCanaryWindow}
	if len(rest) > 0 {
		n, err := strconv.Atoi(strings.TrimSuffix(rest[0], "%"))
		if err != nil || !strings.HasSuffix(rest[0], "%") || n < 1 || n > 99 {
			return Promotion{}, fmt.Errorf("%q: the canary's share %q: want a percentage of requests from 1%% to 99%%", v, rest[0])
		}
		p.Share = n
	}
	if len(rest) > 1 {
		d, err := time.ParseDuration(rest[1])
		if err != nil || d < MinCanaryWindow || d > MaxCanaryWindow {
			return Promotion{}, fmt.Errorf("%q: the canary's window %q: want a duration from %s to %s (30m, 2h)", v, rest[1], MinCanaryWindow,
				MaxCanaryWindow)
		}
		p.Window = d
	}
	return p, nil
}

// parseIfBetter reads what follows if-better: a minimum improvement, a metric, or both.
func parseIfBetter(v string, rest []string) (Promotion, error) {
	p := Promotion{Policy: PromoteIfBetter}
	if slices.Contains([]string{CompareEvalLoss, CompareRougeL, CompareExactMatch}, rest[0]) {
		p.Metric, rest = rest[0], rest[1:]
	} else if len(rest) == 2 {
		return Promotion{}, fmt.Errorf("%q: %q is not a metric if-better compares: want %s, %s or %s", v, rest[0],
			CompareEvalLoss, CompareRougeL, CompareExactMatch)
	}
	if len(rest) == 1 {
		n, err := strconv.ParseFloat(rest[0], 64)
		if err != nil || n < 0 || math.IsNaN(n) || math.IsInf(n, 0) {
			return Promotion{}, fmt.Errorf("%q: want if-better[:METRIC]:N with N a non-negative improvement (METRIC %s, %s or %s)", v,
				CompareEvalLoss, CompareRougeL, CompareExactMatch)
		}
		p.MinImprovement = n
	}
	return p, nil
}

// Promotion is the workspace's promotion policy (always when the annotation is absent or bad:
// validation refuses a bad one before anything runs).
func (w *Workspace) Promotion() Promotion {
	p, err := ParsePromotion(w.Annotations[AnnotationPromotion])
	if err != nil {
		return Promotion{Policy: PromoteAlways}
	}
	return p
}
