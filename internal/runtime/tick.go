package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
)

// Tick publishes kaitoflow.tick every interval until ctx ends: the embedded mode's PingSource.
// The id is the interval's index, so several processes ticking at once store one tick.
func Tick(ctx context.Context, pub events.Publisher, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			e := events.TickAt(now, every)
			if err := pub.Publish(ctx, e); err != nil && ctx.Err() == nil {
				log.Warn("publish tick", "err", err)
			}
		}
	}
}

// Sweep is the tick of a step whose driver keeps what it has not acknowledged: each listed
// workspace is observed again (what its watch event, if lost, would have said) and what the
// observations emit is returned. A workspace that cannot be observed now is logged and left to the
// next tick, so one broken workspace does not hold the others back.
func Sweep(ctx context.Context, tick cloudevents.Event, log *slog.Logger, what string,
	list func(context.Context) ([]events.Ref, error),
	observe func(context.Context, events.Ref, *cloudevents.Event) ([]cloudevents.Event, error),
) ([]cloudevents.Event, error) {
	refs, err := list(ctx)
	if err != nil {
		return nil, fmt.Errorf("list %ss: %w", what, err)
	}
	var out []cloudevents.Event
	for _, ref := range refs {
		evs, err := observe(ctx, ref, &tick)
		if err != nil {
			log.WarnContext(ctx, "observe "+what+"; the next tick retries", "workspace", ref.String(), "err", err)
			continue
		}
		out = append(out, evs...)
	}
	return out, nil
}
