package runtime

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
)

// Tick publishes kaitoflow.tick every interval until ctx ends: the embedded mode's PingSource.
// The id is the interval's index, so several processes ticking at once store one tick.
func Tick(ctx context.Context, pub Publisher, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			e := cloudevents.NewEvent()
			e.SetID("tick-" + strconv.FormatInt(now.UnixNano()/int64(every), 10))
			e.SetSource("kaitoflow/tick")
			e.SetType(events.Tick)
			e.SetTime(now.UTC())
			if err := e.SetData(cloudevents.ApplicationJSON, events.TickData{At: now.UTC()}); err != nil {
				continue
			}
			if err := pub.Publish(ctx, e); err != nil && ctx.Err() == nil {
				log.Warn("publish tick", "err", err)
			}
		}
	}
}
