package kvjson_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/internal/kvjson"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

type counter struct {
	N       int      `json:"n"`
	Writers []string `json:"writers"`
}

// Many writers of one key, each adding itself: every change survives (no lost update), against
// a real nats-server.
func TestUpdateConcurrentWritersLoseNothing(t *testing.T) {
	ctx := context.Background()
	kv, err := testenv.JetStream(t).CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "kvjson-test"})
	if err != nil {
		t.Fatal(err)
	}
	const writers = 24
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := kvjson.Update(ctx, kv, "k", func(c *counter, _ bool) (bool, error) {
				c.N++
				c.Writers = append(c.Writers, string(rune('a'+i)))
				return true, nil
			})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c, _, err := kvjson.Get[counter](ctx, kv, "k")
	if err != nil {
		t.Fatal(err)
	}
	if c.N != writers || len(c.Writers) != writers {
		t.Fatalf("n=%d writers=%d, want %d each: an update was lost", c.N, len(c.Writers), writers)
	}
}

func TestUpdate(t *testing.T) {
	ctx := context.Background()
	kv, err := testenv.JetStream(t).CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "kvjson-test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := kvjson.Get[counter](ctx, kv, "absent"); !errors.Is(err, kvjson.ErrNotFound) {
		t.Fatalf("Get of an absent key: %v, want ErrNotFound", err)
	}

	// fn sees exists=false and a zero value; an unchanged value is not written.
	v, err := kvjson.Update(ctx, kv, "absent", func(c *counter, exists bool) (bool, error) {
		if exists || c.N != 0 {
			t.Errorf("absent key: exists=%v n=%d", exists, c.N)
		}
		return false, nil
	})
	if err != nil || v.N != 0 {
		t.Fatalf("unchanged update: %v %v", v, err)
	}
	if _, err := kv.Get(ctx, "absent"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("an unchanged update wrote the key: %v", err)
	}

	// fn's error comes back as it is, and nothing is written.
	boom := errors.New("boom")
	if _, err := kvjson.Update(ctx, kv, "absent", func(c *counter, _ bool) (bool, error) { c.N = 9; return true, boom }); !errors.Is(err, boom) {
		t.Fatalf("fn's error: %v", err)
	}

	// A value that does not decode is an error naming the key, never overwritten.
	if _, err := kv.Put(ctx, "bad", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := kvjson.Update(ctx, kv, "bad", func(*counter, bool) (bool, error) { return true, nil }); err == nil {
		t.Fatal("a corrupt value was overwritten")
	}
}
