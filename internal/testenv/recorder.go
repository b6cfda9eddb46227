package testenv

import (
	"context"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
)

// Recorder is a publisher that keeps what it is given: for tests of watches and drivers that
// announce events.
type Recorder struct {
	mu  sync.Mutex
	evs []cloudevents.Event
}

// Publish records evs.
func (r *Recorder) Publish(_ context.Context, evs ...cloudevents.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, evs...)
	return nil
}

// Events returns a copy of what was published so far.
func (r *Recorder) Events() []cloudevents.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]cloudevents.Event(nil), r.evs...)
}

// Len is how many events were published.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.evs)
}

// Wait returns the events once more than after have been published, failing t after 10 s.
func (r *Recorder) Wait(t testing.TB, after int) []cloudevents.Event {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if evs := r.Events(); len(evs) > after {
			return evs
		}
	}
	t.Fatalf("no event after the first %d", after)
	return nil
}
