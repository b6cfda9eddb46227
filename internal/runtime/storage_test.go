package runtime

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// An existing stream or bucket whose settings break a guarantee refuses the start, naming the
// setting; what only narrows a margin is kept.
func TestStorageRefusesWhatBreaksAGuarantee(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		change func(*jetstream.StreamConfig)
		want   string
	}{
		{"short duplicate window", func(c *jetstream.StreamConfig) { c.Duplicates = time.Minute }, "duplicate window 1m0s"},
		{"work-queue retention", func(c *jetstream.StreamConfig) { c.Retention = jetstream.WorkQueuePolicy }, "retention WorkQueue"},
		{"small messages", func(c *jetstream.StreamConfig) { c.MaxMsgSize = 1024 }, "max message size 1024"},
		{"short max age", func(c *jetstream.StreamConfig) { c.MaxAge = time.Hour }, ""},
		// A mapping would let whoever may publish a tick (any function's NATS role) store a request.
		{"subject mapping", func(c *jetstream.StreamConfig) {
			c.SubjectTransform = &jetstream.SubjectTransformConfig{Source: events.Tick, Destination: events.WorkspaceRequested}
		}, "maps kaitoflow.tick"},
		{"republish", func(c *jetstream.StreamConfig) {
			c.RePublish = &jetstream.RePublish{Source: ">", Destination: "elsewhere.>"}
		}, "republishes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js := connect(t, testenv.NATSServer(t))
			cfg := Storage{}.StreamConfig()
			tc.change(&cfg)
			if _, err := js.CreateStream(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			_, err := (Storage{Replicas: 1, Log: slog.New(slog.DiscardHandler)}).EnsureStream(ctx, js)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("a narrower margin refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want a refusal naming %q, got %v", tc.want, err)
			}
		})
	}
	t.Run("expiring bucket", func(t *testing.T) {
		js := connect(t, testenv.NATSServer(t))
		cfg := Storage{}.BucketConfig("kaitoflow-status", "")
		cfg.TTL = time.Hour
		if _, err := js.CreateKeyValue(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := (Storage{Replicas: 1}).EnsureBucket(ctx, js, "kaitoflow-status", ""); err == nil || !strings.Contains(err.Error(), "expire after 1h0m0s") {
			t.Fatalf("got %v", err)
		}
	})
}

// On a three-server cluster: what is missing is created with the replicas asked for, and a process
// configured for one replica leaves the operator's R3 stream and buckets R3.
func TestStorageNeverWeakensReplicas(t *testing.T) {
	ctx := context.Background()
	c := testenv.StartNATSCluster(t)
	nc, err := nats.Connect(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (Storage{Replicas: 3}).EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	if _, err := (Storage{Replicas: 3}).EnsureBucket(ctx, js, "kaitoflow-status", "status"); err != nil {
		t.Fatal(err)
	}
	// A function started with the default of one replica.
	st, err := (Storage{Replicas: 1, Log: slog.New(slog.DiscardHandler)}).EnsureStream(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := (Storage{Replicas: 1, Log: slog.New(slog.DiscardHandler)}).EnsureBucket(ctx, js, "kaitoflow-status", "status")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Errorf("stream: R%d, cluster %+v; want R3 with a leader and two replicas", info.Config.Replicas, info.Cluster)
	}
	ks, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := ks.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas; r != 3 {
		t.Errorf("bucket: R%d, want R3", r)
	}
}
