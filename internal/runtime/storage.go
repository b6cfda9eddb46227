package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// Storage is every JetStream setting kaitoflow owns, in one place: the event stream's and the
// key-value buckets'. Every process that starts creates what is missing and never weakens what
// exists: an operator's R3 stream stays R3 when a process configured for one replica starts, a
// difference that costs nothing but margin is logged, and one that would break a guarantee
// (exactly-once publishing, records that never expire) refuses the start, naming the setting.
type Storage struct {
	// Replicas of the stream and every bucket when they are created: 1 for a single server, 3 on
	// a cluster (a quorum of 2 survives the loss of any one server).
	Replicas int
	Log      *slog.Logger
}

// streamMaxAge is how long events are kept for replay and inspection.
const streamMaxAge = 14 * 24 * time.Hour

func (s Storage) replicas() int { return max(s.Replicas, 1) }

// StreamConfig is the event stream as kaitoflow creates it.
func (s Storage) StreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "kaitoflow pipeline events",
		Subjects:    []string{events.SubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Duplicates:  DuplicateWindow,
		MaxAge:      streamMaxAge,
		MaxMsgSize:  events.MaxEventSize,
		Replicas:    s.replicas(),
	}
}

// EnsureStream creates the event stream, or checks the one that exists against StreamConfig.
func (s Storage) EnsureStream(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	want := s.StreamConfig()
	st, err := js.Stream(ctx, StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		st, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			st, err = js.Stream(ctx, StreamName) // another process created it first
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	refuse, warn := compareStream(st.CachedInfo().Config, want)
	for _, w := range warn {
		logctx.Or(s.Log).WarnContext(ctx, "JetStream stream differs from kaitoflow's settings; kept as it is", "stream", StreamName, "setting", w)
	}
	if len(refuse) > 0 {
		return nil, fmt.Errorf("stream %s cannot carry kaitoflow's guarantees: %s", StreamName, strings.Join(refuse, "; "))
	}
	return st, nil
}

// compareStream returns the differences of an existing stream that break a guarantee, and those
// that only narrow a margin.
func compareStream(have, want jetstream.StreamConfig) (refuse, warn []string) {
	if !slices.Contains(have.Subjects, events.SubjectPrefix+">") {
		refuse = append(refuse, fmt.Sprintf("subjects %v do not include %s>", have.Subjects, events.SubjectPrefix))
	}
	// Only a subject's publisher puts an event on it (natsauth's roles): a stream that rewrites
	// or copies subjects would let one role's events arrive as another's.
	if t := have.SubjectTransform; t != nil {
		refuse = append(refuse, fmt.Sprintf("it maps %s onto %s: the stream must store events on the subjects they were published on", t.Source, t.Destination))
	}
	if r := have.RePublish; r != nil {
		refuse = append(refuse, fmt.Sprintf("it republishes %s onto %s", r.Source, r.Destination))
	}
	if have.Mirror != nil || len(have.Sources) > 0 {
		refuse = append(refuse, "it mirrors or sources other streams: only kaitoflow's publishers may write it")
	}
	if have.Retention != jetstream.LimitsPolicy {
		refuse = append(refuse, fmt.Sprintf("retention %s: every function reads every event, so it must be limits", have.Retention))
	}
	if have.Duplicates < want.Duplicates {
		refuse = append(refuse, fmt.Sprintf("duplicate window %s: publishing exactly once needs at least %s", have.Duplicates, want.Duplicates))
	}
	if have.MaxMsgSize > 0 && have.MaxMsgSize < want.MaxMsgSize {
		refuse = append(refuse, fmt.Sprintf("max message size %d: an event may be %d bytes", have.MaxMsgSize, want.MaxMsgSize))
	}
	if have.Replicas < want.Replicas {
		warn = append(warn, fmt.Sprintf("replicas %d, fewer than the %d asked for (raise with `nats stream edit %s --replicas %d`)", have.Replicas,
			want.Replicas, StreamName, want.Replicas))
	}
	if have.MaxAge > 0 && have.MaxAge < want.MaxAge {
		warn = append(warn, fmt.Sprintf("max age %s: events can be replayed for less than %s", have.MaxAge, want.MaxAge))
	}
	if have.Storage != jetstream.FileStorage {
		warn = append(warn, "memory storage: events are lost when the server restarts")
	}
	return refuse, warn
}

// BucketConfig is a key-value bucket as kaitoflow creates it: one value per key, kept until
// deleted.
func (s Storage) BucketConfig(name, description string) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: name, Description: description, Storage: jetstream.FileStorage, History: 1, Replicas: s.replicas()}
}

// EnsureBucket creates the bucket, or checks the one that exists against BucketConfig.
func (s Storage) EnsureBucket(ctx context.Context, js jetstream.JetStream, name, description string) (jetstream.KeyValue, error) {
	want := s.BucketConfig(name, description)
	kv, err := js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, want)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ensure bucket %s: %w", name, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", name, err)
	}
	if st.TTL() > 0 {
		return nil, fmt.Errorf("bucket %s cannot carry kaitoflow's guarantees: its entries expire after %s, and records must be kept until deleted",
			name, st.TTL())
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		if have := bs.StreamInfo().Config; have.Replicas < want.Replicas {
			logctx.Or(s.Log).WarnContext(ctx, "JetStream bucket differs from kaitoflow's settings; kept as it is", "bucket", name,
				"setting", fmt.Sprintf("replicas %d, fewer than the %d asked for", have.Replicas, want.Replicas))
		}
	}
	return kv, nil
}
