package ingress

import (
	"cmp"
	"context"
	"fmt"
	"strings"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// RollbackRefused is a rollback that cannot be asked for; Reason says why (a generation that pushed
// no adapter, the one serving, a workspace still in progress). It is not retried.
type RollbackRefused struct{ Reason string }

func (e *RollbackRefused) Error() string { return e.Reason }

// Rollback asks serve to serve an earlier generation's pushed adapter again, live: it publishes
// kaitoflow.adapter.selected and returns once JetStream has stored it. gen 0 is the newest
// generation pushed before the one serving. key tells requests apart in the event id (each request
// is its own intent: back to 2, forward to 3, back to 2 again), so only a repeat of the same
// request deduplicates. reason says who asked ("rollback" when empty, "promote" for a held
// adapter served after all). The API and the Workspace controller share it.
//
// checkpoint > 0 asks for generation gen's checkpoint at that step instead of its final adapter
// (`kaitoflow promote --checkpoint`): the target's Image is the checkpoint's.
func Rollback(ctx context.Context, pub events.Publisher, source string, rec *status.Workspace, gen int64, checkpoint int, key,
	reason string) (status.PushedAdapter, error) {
	target, err := RollbackTarget(rec, gen)
	if checkpoint > 0 {
		target, err = CheckpointTarget(rec, gen, checkpoint)
	}
	if err != nil {
		return target, err
	}
	if rec.Manifest == nil {
		return target, &RollbackRefused{fmt.Sprintf("workspace %s/%s: its manifest is not in the record yet", rec.Namespace, rec.Name)}
	}
	ref := events.Ref{Namespace: rec.Namespace, Name: rec.Name, Generation: rec.Generation}
	// The id names the request, not its target: a retried request whose target reads otherwise
	// (the record moved on meanwhile) is still the same request, stored once.
	id := events.AdapterSelected + "/" + key
	ev, err := events.New(source, events.AdapterSelected, id, ref, events.AdapterSelectedData{
		Ref: ref, Workspace: *rec.Manifest, Generation: target.Generation, Reference: target.Image, Checkpoint: checkpoint,
		Reason: cmp.Or(reason, "rollback")}, nil)
	if err != nil {
		return target, err
	}
	if err := pub.Publish(ctx, ev); err != nil {
		return target, fmt.Errorf("publish %s: %w", events.AdapterSelected, err)
	}
	return target, nil
}

// CheckpointTarget is generation gen's servable checkpoint at step, as a pushed adapter whose Image
// is the checkpoint's.
func CheckpointTarget(rec *status.Workspace, gen int64, step int) (status.PushedAdapter, error) {
	if rec.Phase != status.Ready && rec.Phase != status.Failed {
		return status.PushedAdapter{}, &RollbackRefused{fmt.Sprintf("workspace %s/%s is %s: serve a checkpoint once its generation %d has finished",
			rec.Namespace, rec.Name, rec.Phase, rec.Generation)}
	}
	p, ok := rec.Pushed(gen)
	if !ok {
		return p, &RollbackRefused{fmt.Sprintf("generation %d pushed no adapter, so none of its checkpoints was published", gen)}
	}
	var have []string
	for _, c := range p.Checkpoints {
		if c.Step == step {
			p.Image = c.Image
			return p, nil
		}
		have = append(have, fmt.Sprint(c.Step))
	}
	if len(have) == 0 {
		return p, &RollbackRefused{fmt.Sprintf("generation %d published no checkpoints (its run kept none in the output repository)", gen)}
	}
	return p, &RollbackRefused{fmt.Sprintf("generation %d has no checkpoint at step %d (its checkpoints: steps %s)", gen, step, strings.Join(have, ", "))}
}

// RollbackTarget is the pushed adapter a rollback serves: generation gen's, or (gen 0) the newest
// pushed before the generation serving now — or, while a canary runs, the one serving beside it.
func RollbackTarget(rec *status.Workspace, gen int64) (status.PushedAdapter, error) {
	if rec.Phase != status.Ready && rec.Phase != status.Failed {
		return status.PushedAdapter{}, &RollbackRefused{fmt.Sprintf("workspace %s/%s is %s: roll back once its generation %d has finished",
			rec.Namespace, rec.Name, rec.Phase, rec.Generation)}
	}
	// What the endpoint serves: the record's live generation, once one has served.
	serving := cmp.Or(rec.Live, rec.Serving())
	if _, running := rec.Canary(); running && (gen == 0 || gen == serving) {
		// A canary answers a share: rolling back ends it at once, the serving adapter alone
		// answering again.
		if p, ok := rec.Pushed(serving); ok {
			return p, nil
		}
	}
	if gen == 0 {
		// Back to the newest adapter that served before: one the promotion policy held never did.
		var best status.PushedAdapter
		for _, p := range rec.History {
			if p.Image != "" && p.Held == "" && p.Generation < serving && p.Generation > best.Generation {
				best = p
			}
		}
		if best.Generation == 0 {
			return best, &RollbackRefused{fmt.Sprintf("workspace %s/%s serves generation %d and no earlier generation pushed an adapter",
				rec.Namespace, rec.Name, serving)}
		}
		return best, nil
	}
	if gen == serving && rec.LiveCheckpoint == 0 {
		return status.PushedAdapter{}, &RollbackRefused{fmt.Sprintf("generation %d is the one serving", gen)}
	}
	p, ok := rec.Pushed(gen)
	if !ok {
		var have []string
		for _, h := range rec.History {
			if h.Image != "" {
				have = append(have, fmt.Sprint(h.Generation))
			}
		}
		return p, &RollbackRefused{fmt.Sprintf("generation %d pushed no adapter (generations with one: %s)", gen, strings.Join(have, ", "))}
	}
	return p, nil
}
