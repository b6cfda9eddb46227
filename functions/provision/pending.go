package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/kvjson"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// PendingBucket is the JetStream KV bucket of provision records.
const PendingBucket = "kaitoflow-provision"

// KVPending keeps records in a JetStream KV bucket, so any replica of the function (and a restarted
// one) sees the requests that are waiting for capacity.
type KVPending struct {
	kv jetstream.KeyValue
}

// OpenKVPending creates or opens the bucket, as storage says (never weakening an existing one).
func OpenKVPending(ctx context.Context, js jetstream.JetStream, storage runtime.Storage) (*KVPending, error) {
	kv, err := storage.EnsureBucket(ctx, js, PendingBucket, "kaitoflow provision: capacity requests")
	if err != nil {
		return nil, fmt.Errorf("open %s bucket: %w", PendingBucket, err)
	}
	return &KVPending{kv: kv}, nil
}

func key(namespace, name string) string { return namespace + "." + name }

// Put implements Pending.
func (p *KVPending) Put(ctx context.Context, rec Record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := p.kv.Put(ctx, key(rec.Ref.Namespace, rec.Ref.Name), b); err != nil {
		return fmt.Errorf("store provision record %s: %w", rec.Ref, err)
	}
	return nil
}

// Get implements Pending.
func (p *KVPending) Get(ctx context.Context, namespace, name string) (*Record, error) {
	rec, _, err := p.get(ctx, key(namespace, name))
	return rec, err
}

func (p *KVPending) get(ctx context.Context, k string) (*Record, uint64, error) {
	rec, rev, err := kvjson.Get[Record](ctx, p.kv, k)
	if errors.Is(err, kvjson.ErrNotFound) {
		return nil, 0, nil
	}
	return rec, rev, err
}

// List implements Pending.
func (p *KVPending) List(ctx context.Context) ([]Record, error) {
	lister, err := p.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list provision records: %w", err)
	}
	var out []Record
	for k := range lister.Keys() {
		rec, _, err := p.get(ctx, k)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			out = append(out, *rec)
		}
	}
	return out, nil
}

// MarkReady implements Pending: a compare-and-swap, so it never overwrites a newer generation
// or attempt.
func (p *KVPending) MarkReady(ctx context.Context, ref events.Ref, attempt int) error {
	return p.mark(ctx, ref, func(r *Record) *bool {
		if max(r.Attempt, 1) != max(attempt, 1) {
			return nil
		}
		return &r.Ready
	})
}

// MarkReleased implements Pending: a compare-and-swap on ref's generation, so a newer
// generation's record is never overwritten.
func (p *KVPending) MarkReleased(ctx context.Context, ref events.Ref) error {
	return p.mark(ctx, ref, func(r *Record) *bool { return &r.Released })
}

// mark sets one flag of ref's record, if the record is still ref's generation (and flag returns
// one: nil leaves the record as it is).
func (p *KVPending) mark(ctx context.Context, ref events.Ref, flag func(*Record) *bool) error {
	_, err := kvjson.Update(ctx, p.kv, key(ref.Namespace, ref.Name), func(rec *Record, exists bool) (bool, error) {
		if !exists || rec.Ref.Generation != ref.Generation {
			return false, nil
		}
		f := flag(rec)
		if f == nil || *f {
			return false, nil
		}
		*f = true
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("provision record of %s: %w", ref, err)
	}
	return nil
}

// NextAttempt implements Pending: a compare-and-swap, so a concurrent release (the workspace
// deleted) is never overwritten by a retry buying capacity again.
func (p *KVPending) NextAttempt(ctx context.Context, ref events.Ref, next Attempt) (*Record, error) {
	rec, err := kvjson.Update(ctx, p.kv, key(ref.Namespace, ref.Name), func(rec *Record, exists bool) (bool, error) {
		return exists && next.apply(rec, ref), nil
	})
	if err != nil {
		return nil, fmt.Errorf("provision record of %s: %w", ref, err)
	}
	if rec == nil || rec.Ref.Generation != ref.Generation || rec.Released || rec.Ref.Namespace == "" {
		return nil, nil
	}
	return rec, nil
}

// Attempt is what a next tuning attempt changes in its generation's record.
type Attempt struct {
	Attempt            int
	Plan               events.Plan
	Resume             bool
	Requested, Expires time.Time
}

// apply moves rec to the attempt, if rec is ref's generation, still held, and at an earlier
// attempt; it reports whether rec changed.
func (a Attempt) apply(rec *Record, ref events.Ref) bool {
	if rec.Ref.Generation != ref.Generation || rec.Released || rec.Attempt >= a.Attempt {
		return false
	}
	rec.Plan, rec.Attempt, rec.Resume, rec.Ready = a.Plan, a.Attempt, a.Resume, false
	rec.Requested, rec.Deadline = a.Requested, a.Expires
	return true
}

// MemoryPending keeps records in memory: for tests and single-process tools.
type MemoryPending struct {
	mu   sync.Mutex
	recs map[string]Record
}

// Put implements Pending.
func (m *MemoryPending) Put(_ context.Context, rec Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.recs == nil {
		m.recs = map[string]Record{}
	}
	m.recs[key(rec.Ref.Namespace, rec.Ref.Name)] = rec
	return nil
}

// Get implements Pending.
func (m *MemoryPending) Get(_ context.Context, namespace, name string) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.recs[key(namespace, name)]
	if !ok {
		return nil, nil
	}
	return &rec, nil
}

// List implements Pending.
func (m *MemoryPending) List(context.Context) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Record, 0, len(m.recs))
	for _, r := range m.recs {
		out = append(out, r)
	}
	return out, nil
}

// MarkReady implements Pending.
func (m *MemoryPending) MarkReady(_ context.Context, ref events.Ref, attempt int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key(ref.Namespace, ref.Name)
	if rec, ok := m.recs[k]; ok && rec.Ref.Generation == ref.Generation && max(rec.Attempt, 1) == max(attempt, 1) {
		rec.Ready = true
		m.recs[k] = rec
	}
	return nil
}

// NextAttempt implements Pending.
func (m *MemoryPending) NextAttempt(_ context.Context, ref events.Ref, next Attempt) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key(ref.Namespace, ref.Name)
	rec, ok := m.recs[k]
	if !ok {
		return nil, nil
	}
	if next.apply(&rec, ref) {
		m.recs[k] = rec
	}
	if rec.Ref.Generation != ref.Generation || rec.Released {
		return nil, nil
	}
	return &rec, nil
}

// MarkReleased implements Pending.
func (m *MemoryPending) MarkReleased(_ context.Context, ref events.Ref) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key(ref.Namespace, ref.Name)
	if rec, ok := m.recs[k]; ok && rec.Ref.Generation == ref.Generation {
		rec.Released = true
		m.recs[k] = rec
	}
	return nil
}
