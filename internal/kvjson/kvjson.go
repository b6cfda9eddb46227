// Package kvjson keeps JSON values in a JetStream KV bucket and changes them with
// read-modify-write under compare-and-swap: the one way provision's capacity records and the
// status store's workspace records are updated, so several replicas (and a restarted one) never
// overwrite each other's changes.
package kvjson

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/apimachinery/pkg/util/wait"
)

// ErrNotFound is returned by Get for a key that holds nothing.
var ErrNotFound = errors.New("not found")

// Get returns key's value and its revision, or ErrNotFound.
func Get[T any](ctx context.Context, kv jetstream.KeyValue, key string) (*T, uint64, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get %s/%s: %w", kv.Bucket(), key, err)
	}
	var v T
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return nil, 0, fmt.Errorf("decode %s/%s: %w", kv.Bucket(), key, err)
	}
	return &v, e.Revision(), nil
}

// List returns the values of the keys matching filter (NATS subject wildcards: "ns.>"), in key
// order. A key deleted between the listing and its read is left out.
func List[T any](ctx context.Context, kv jetstream.KeyValue, filter string) ([]T, error) {
	lister, err := kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("list %s %s: %w", kv.Bucket(), filter, err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]T, 0, len(keys))
	for _, k := range keys {
		v, _, err := Get[T](ctx, kv, k)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *v)
	}
	return out, nil
}

// Update applies fn to key's value and writes the result back only if nobody wrote in between,
// re-reading and re-applying fn when somebody did. fn gets a zero value and exists=false when the
// key holds nothing, and returns whether it changed the value: nothing is written otherwise.
// Update returns the value as stored (or as read, when fn changed nothing). Any error other than
// a lost compare-and-swap is returned at once, wrapped with the key; running out of retries
// returns the last conflict.
func Update[T any](ctx context.Context, kv jetstream.KeyValue, key string, fn func(v *T, exists bool) (bool, error)) (*T, error) {
	// Conflicts are short: a burst of events for one workspace across replicas settles within a
	// few seconds of jittered, growing waits (1 ms growing by 1.2×: 40 tries span about 9 s).
	backoff := wait.Backoff{Duration: time.Millisecond, Factor: 1.2, Jitter: 0.5, Steps: 40}
	var out *T
	var conflict error
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		v, rev, err := Get[T](ctx, kv, key)
		exists := err == nil
		switch {
		case errors.Is(err, ErrNotFound):
			v = new(T)
		case err != nil:
			return false, err
		}
		changed, err := fn(v, exists)
		if err != nil {
			return false, err
		}
		out = v
		if !changed {
			return true, nil
		}
		b, err := json.Marshal(v)
		if err != nil {
			return false, fmt.Errorf("encode %s/%s: %w", kv.Bucket(), key, err)
		}
		if exists {
			_, err = kv.Update(ctx, key, b, rev)
		} else {
			_, err = kv.Create(ctx, key, b)
		}
		switch {
		case isConflict(err):
			conflict = err
			return false, nil // somebody wrote in between: read again
		case err != nil:
			return false, fmt.Errorf("write %s/%s: %w", kv.Bucket(), key, err)
		}
		return true, nil
	})
	if wait.Interrupted(err) && conflict != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("write %s/%s: too many concurrent updates: %w", kv.Bucket(), key, conflict)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// isConflict reports a lost compare-and-swap: another writer created the key or moved its
// revision on.
func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		(errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence)
}
