package runtime

import (
	"context"
	"log/slog"
	"time"

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
