package kaito

import (
	"fmt"
	"strconv"
	"strings"
)

// AnnotationPromotion is a tuning workspace's promotion policy: when a generation's adapter is
// served in place of the one serving (kaitoflow's own, outside Kaito's spec).
//
//	always                  every new generation is served (the default: Kaito's behaviour)
//	if-better               served only if its eval_loss on the new data's held-out rows beats the
//	if-better:0.02          serving adapter's on the same rows, by at least the number given
//	manual                  held until `kaitoflow promote NAME --generation N`
//
// A held adapter is pushed and kept, not served. The first generation with nothing serving is
// always served.
const AnnotationPromotion = "kaitoflow.io/promotion"

// Promotion policies.
const (
	PromoteAlways   = "always"
	PromoteIfBetter = "if-better"
	PromoteManual   = "manual"
)

// Promotion is a parsed AnnotationPromotion.
type Promotion struct {
	Policy string
	// MinImprovement is how much lower eval_loss must be (if-better).
	MinImprovement float64
}

// String is the annotation's value.
func (p Promotion) String() string {
	if p.Policy == PromoteIfBetter && p.MinImprovement > 0 {
		return p.Policy + ":" + strconv.FormatFloat(p.MinImprovement, 'g', -1, 64)
	}
	return p.Policy
}

// ParsePromotion reads an AnnotationPromotion value ("" is always).
func ParsePromotion(v string) (Promotion, error) {
	policy, min, hasMin := strings.Cut(strings.TrimSpace(v), ":")
	switch {
	case policy == "" && !hasMin:
		return Promotion{Policy: PromoteAlways}, nil
	case (policy == PromoteAlways || policy == PromoteManual) && !hasMin:
		return Promotion{Policy: policy}, nil
	case policy == PromoteIfBetter && !hasMin:
		return Promotion{Policy: policy}, nil
	case policy == PromoteIfBetter:
		n, err := strconv.ParseFloat(min, 64)
		if err != nil || n < 0 {
			return Promotion{}, fmt.Errorf("%q: want if-better:N with N a non-negative decrease in eval_loss", v)
		}
		return Promotion{Policy: policy, MinImprovement: n}, nil
	}
	return Promotion{}, fmt.Errorf("%q: want always, if-better, if-better:N or manual", v)
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
