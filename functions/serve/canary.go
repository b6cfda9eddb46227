package serve

import (
	"context"
	"fmt"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/events"
)

// CanaryAdapter is a candidate adapter that answers a share of the requests next to the adapter
// serving (a canary policy), until Ends.
type CanaryAdapter struct {
	Adapter    Adapter   `json:"adapter"`
	Generation int64     `json:"generation"`
	Share      int       `json:"share"`
	Start      time.Time `json:"start"`
	Ends       time.Time `json:"ends"`
}

// CanaryDeployer is a deployer whose services can run canaries: it reports each running one with
// what its replicas measured, and ends one, promoting its candidate or rolling it back, in the
// running replicas (no new revision).
type CanaryDeployer interface {
	Canaries(ctx context.Context) ([]CanaryReport, error)
	// EndCanary ends the canary v is the verdict on, if it still runs, and keeps v with the set
	// that ends it (Status.Verdict) until that set is reported served; false when the canary no
	// longer runs (a newer generation, a rollback, another tick that ended it first).
	EndCanary(ctx context.Context, v CanaryVerdict) (bool, error)
}

// CanaryReport is one running canary: the workspace generation whose candidate it is, the public
// name it splits, the generation serving beside it, and the replicas' numbers so far.
type CanaryReport struct {
	Ref       events.Ref
	Public    string
	Canary    chatproxy.Canary
	Reference string
	Stable    int64
	Live      kaito.CanaryLive
}

// CanaryVerdict is how a canary ended: written with the set that ends it, so that the decision is
// never lost between ending the canary and saying so — observe announces it (adapter.promoted or
// adapter.held) with the inference.ready of that set, and a tick that runs again finds the canary
// ended and decides nothing twice.
type CanaryVerdict struct {
	CanaryReport
	Promote bool   `json:"promote"`
	Reason  string `json:"reason"`
}

// TallyKey names one canary of one public name, for a LiveTally: numbers of another canary (an
// earlier one, a replica still on an older set) never count for this one.
func TallyKey(public string, c chatproxy.Canary) string {
	return fmt.Sprintf("%s/%d/%d", public, c.Generation, c.Start.UnixNano())
}

// LiveTally is the newest numbers each replica process reported of one canary, by replica and
// process (ReplicaKey): a process's numbers are its totals since it loaded the canary, so the
// newest replaces the last, and a replica that scaled away, or a process that restarted, still
// counts with what it last said.
type LiveTally map[string]kaito.CanaryLive

// ReplicaKey names one chat-proxy process of a replica in a LiveTally.
func ReplicaKey(replica, instance string) string { return replica + "/" + instance }

// Total is every replica's numbers together.
func (t LiveTally) Total() kaito.CanaryLive {
	var out kaito.CanaryLive
	for _, l := range t {
		out.Stable, out.Canary = out.Stable.Add(l.Stable), out.Canary.Add(l.Canary)
	}
	return out
}

// How a canary is judged at its window's end: it is rolled back when what users saw of it is worse
// than of the adapter serving beside it, over the same window, by more than these margins, and held
// when it answered too few requests to tell.
const (
	// MinCanaryRequests is the fewest requests a canary must answer to be judged.
	MinCanaryRequests = 20
	// CanaryErrorMargin is how much higher its error rate may be (2 percentage points).
	CanaryErrorMargin = 0.02
	// CanaryMinFeedback is the least feedback that counts; below it approval is not compared.
	CanaryMinFeedback = 5
	// CanaryApprovalMargin is how much lower its share of thumbs up may be (10 points); with too
	// little feedback on the serving adapter, the canary's must be at least one half.
	CanaryApprovalMargin = 0.10
	// CanarySlowerFactor and its slack bound the time to first token and the time per token:
	// at most 1.5× the serving adapter's plus the slack (noise on fast answers is not a verdict).
	CanarySlowerFactor      = 1.5
	canaryFirstTokenSlack   = 50 * time.Millisecond
	canaryPerTokenSlackSecs = 0.005
)

// JudgeCanary decides a canary at its window's end from what users saw of it (l.Canary) and of the
// adapter serving beside it (l.Stable): promoted when it answered at least MinCanaryRequests and
// is not worse by the margins above in errors, feedback, time to first token and tokens per
// second; otherwise held (rolled back), with the numbers in the reason.
func JudgeCanary(l kaito.CanaryLive) (promote bool, reason string) {
	c, s := l.Canary, l.Stable
	numbers := fmt.Sprintf("canary %s; serving %s", armSummary(c), armSummary(s))
	if c.Requests < MinCanaryRequests {
		return false, fmt.Sprintf("held: the canary answered %d requests, too few to judge (at least %d): %s", c.Requests, MinCanaryRequests, numbers)
	}
	var worse []string
	if c.ErrorRate() > s.ErrorRate()+CanaryErrorMargin {
		worse = append(worse, fmt.Sprintf("error rate %.1f%% vs %.1f%%", 100*c.ErrorRate(), 100*s.ErrorRate()))
	}
	if ca, cn := c.Approval(); cn >= CanaryMinFeedback {
		sa, sn := s.Approval()
		floor := 0.5
		if sn >= CanaryMinFeedback {
			floor = sa - CanaryApprovalMargin
		}
		if ca < floor {
			worse = append(worse, fmt.Sprintf("thumbs up %.0f%% vs %.0f%% wanted", 100*ca, 100*floor))
		}
	}
	if ct, st := c.FirstToken(), s.FirstToken(); st > 0 && ct > time.Duration(CanarySlowerFactor*float64(st))+canaryFirstTokenSlack {
		worse = append(worse, fmt.Sprintf("first token %s vs %s", ct.Round(time.Millisecond), st.Round(time.Millisecond)))
	}
	if ctps, stps := c.TokensPerSecond(), s.TokensPerSecond(); ctps > 0 && stps > 0 && 1/ctps > CanarySlowerFactor/stps+canaryPerTokenSlackSecs {
		worse = append(worse, fmt.Sprintf("%.0f tokens/s vs %.0f", ctps, stps))
	}
	if len(worse) > 0 {
		return false, fmt.Sprintf("held: the canary did worse than the serving adapter (%s): %s", strings.Join(worse, ", "), numbers)
	}
	return true, "promoted: the canary did as well as the serving adapter: " + numbers
}

// armSummary writes an arm's numbers in a line.
func armSummary(a kaito.CanaryArm) string {
	s := fmt.Sprintf("%d requests, %d errors, first token %s, %.0f tokens/s", a.Requests, a.Errors, a.FirstToken().Round(time.Millisecond),
		a.TokensPerSecond())
	if approval, n := a.Approval(); n > 0 {
		s += fmt.Sprintf(", %.0f%% up of %d", 100*approval, n)
	}
	return s
}

// judgeCanaries ends every canary whose window has passed at the tick's time, with its verdict:
// the candidate is promoted or rolled back in the running replicas, and observe announces the
// decision (adapter.promoted or adapter.held, with the live numbers) once they serve the set that
// ended it. A canary that cannot be ended now is judged again at the next tick.
func (f *Function) judgeCanaries(ctx context.Context, ev cloudevents.Event) {
	cd, ok := f.deployer.(CanaryDeployer)
	if !ok {
		return
	}
	reports, err := cd.Canaries(ctx)
	if err != nil {
		f.log.WarnContext(ctx, "list canaries; judged at the next tick", "err", err)
	}
	now := ev.Time()
	for _, r := range reports {
		if now.Before(r.Canary.Ends) {
			continue
		}
		promote, reason := JudgeCanary(r.Live)
		ended, err := cd.EndCanary(ctx, CanaryVerdict{CanaryReport: r, Promote: promote, Reason: reason})
		switch {
		case err != nil:
			f.log.WarnContext(ctx, "end canary; judged again at the next tick", "workspace", r.Ref.String(), "err", err)
		case ended:
			f.log.InfoContext(ctx, "canary judged", "workspace", r.Ref.String(), "promoted", promote, "reason", reason)
		}
	}
}

// decision is the event announcing v: adapter.promoted or adapter.held of the canary's generation,
// its id the same however often it is announced.
func decision(v *CanaryVerdict, cause *cloudevents.Event) (cloudevents.Event, error) {
	typ, step := events.AdapterHeld, "canary/held"
	if v.Promote {
		typ, step = events.AdapterPromoted, "canary/promoted"
	}
	policy := kaito.Promotion{Policy: kaito.PromoteCanary, Share: v.Canary.Share, Window: v.Canary.Ends.Sub(v.Canary.Start)}
	live := v.Live
	return events.New(Source, typ, step, v.Ref, events.AdapterGateData{Ref: v.Ref, Reference: v.Reference, Policy: policy.String(),
		Compared: &events.ComparedAdapter{Generation: v.Stable}, Reason: v.Reason, Live: &live,
		Canary: &events.CanaryWindow{Share: v.Canary.Share, Start: v.Canary.Start, Ends: v.Canary.Ends}}, cause)
}
