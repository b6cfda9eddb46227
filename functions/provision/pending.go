package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/events"
)

// PendingBucket is the JetStream KV bucket of provision records.
const PendingBucket = "kaitoflow-provision"

// KVPending keeps records in a JetStream KV bucket, so any replica of the function (and a restarted
// one) sees the requests that are waiting for capacity.
type KVPending struct {
	kv jetstream.KeyValue
}

// OpenKVPending creates or opens the bucket.
func OpenKVPending(ctx context.Context, js jetstream.JetStream) (*KVPending, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: PendingBucket, Description: "kaitoflow provision: capacity requests", Storage: jetstream.FileStorage, History: 1,
	})
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
	e, err := p.kv.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get provision record %s: %w", k, err)
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, 0, fmt.Errorf("decode provision record %s: %w", k, err)
	}
	return &rec, e.Revision(), nil
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

// MarkReady implements Pending: a compare-and-swap, so it never overwrites a newer generation.
func (p *KVPending) MarkReady(ctx context.Context, ref events.Ref) error {
	for range 10 {
		rec, rev, err := p.get(ctx, key(ref.Namespace, ref.Name))
		if err != nil || rec == nil || rec.Ref.Generation != ref.Generation || rec.Ready {
			return err
		}
		rec.Ready = true
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if _, err := p.kv.Update(ctx, key(ref.Namespace, ref.Name), b, rev); err == nil {
			return nil
		}
	}
	return fmt.Errorf("mark %s ready: too many concurrent updates", ref)
}

// MarkReleased implements Pending: a compare-and-swap on ref's generation, so a newer
// generation's record is never overwritten.
func (p *KVPending) MarkReleased(ctx context.Context, ref events.Ref) error {
	for range 10 {
		rec, rev, err := p.get(ctx, key(ref.Namespace, ref.Name))
		if err != nil || rec == nil || rec.Ref.Generation != ref.Generation || rec.Released {
			return err
		}
		rec.Released = true
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if _, err := p.kv.Update(ctx, key(ref.Namespace, ref.Name), b, rev); err == nil {
			return nil
		}
	}
	return fmt.Errorf("mark %s released: too many concurrent updates", ref)
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
func (m *MemoryPending) MarkReady(_ context.Context, ref events.Ref) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key(ref.Namespace, ref.Name)
	if rec, ok := m.recs[k]; ok && rec.Ref.Generation == ref.Generation {
		rec.Ready = true
		m.recs[k] = rec
	}
	return nil
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
