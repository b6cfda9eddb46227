package status

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/kvjson"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// Bucket is the KV bucket holding one record per workspace.
const Bucket = "kaitoflow-workspaces"

// ErrNotFound is returned for a workspace the store has no record of.
var ErrNotFound = errors.New("workspace not found")

// Store reads and writes status records. Writes are compare-and-swap on the key's revision, so
// concurrent projectors and the API never overwrite each other.
type Store struct {
	kv         jetstream.KeyValue
	configMaps jetstream.KeyValue
}

// Open creates or opens the buckets, as storage says (never weakening existing ones).
func Open(ctx context.Context, js jetstream.JetStream, storage runtime.Storage) (*Store, error) {
	kv, err := storage.EnsureBucket(ctx, js, Bucket, "kaitoflow workspace status")
	if err != nil {
		return nil, fmt.Errorf("open status bucket: %w", err)
	}
	cms, err := storage.EnsureBucket(ctx, js, ConfigMapBucket, "kaitoflow ConfigMaps (embedded mode)")
	if err != nil {
		return nil, err
	}
	return &Store{kv: kv, configMaps: cms}, nil
}

// Key is the bucket key of a workspace. Namespaces are DNS labels (no dots), so the first dot
// separates them from the name.
func Key(namespace, name string) string { return namespace + "." + name }

// Get returns the record of namespace/name.
func (s *Store) Get(ctx context.Context, namespace, name string) (*Workspace, error) {
	w, _, err := s.get(ctx, Key(namespace, name))
	return w, err
}

func (s *Store) get(ctx context.Context, key string) (*Workspace, uint64, error) {
	w, rev, err := kvjson.Get[Workspace](ctx, s.kv, key)
	if errors.Is(err, kvjson.ErrNotFound) {
		return nil, 0, ErrNotFound
	}
	return w, rev, err
}

// List returns every record of namespace ("" for all), deleted ones left out, sorted by name.
func (s *Store) List(ctx context.Context, namespace string) ([]Workspace, error) {
	all, err := kvjson.List[Workspace](ctx, s.kv, keyFilter(namespace))
	if err != nil {
		return nil, err
	}
	// Keys are namespace.name: key order is namespace, then name.
	return slices.DeleteFunc(all, func(w Workspace) bool { return w.Phase == Deleted }), nil
}

// keyFilter matches the keys of namespace, or every key for "".
func keyFilter(namespace string) string {
	if namespace == "" {
		return ">"
	}
	return namespace + ".>"
}

// Update applies fn to the record under a compare-and-swap, retrying on conflict. fn receives a
// zero record when there is none and returns whether it changed anything.
func (s *Store) Update(ctx context.Context, namespace, name string, fn func(*Workspace) (bool, error)) (*Workspace, error) {
	return kvjson.Update(ctx, s.kv, Key(namespace, name), func(w *Workspace, _ bool) (bool, error) { return fn(w) })
}

// Admit records a submitted workspace and returns the generation to publish it under. The same
// spec submitted again keeps its generation (its event id is the same, so JetStream drops the
// duplicate); a changed spec, or a resubmission after Failed or delete, gets the next generation.
// A manifest that carries metadata.generation (from the Kubernetes API) keeps it.
func (s *Store) Admit(ctx context.Context, ws *kaito.Workspace) (rec *Workspace, fresh bool, err error) {
	hash, err := SpecHash(ws)
	if err != nil {
		return nil, false, err
	}
	ref := events.WorkspaceRef(ws)
	rec, err = s.Update(ctx, ref.Namespace, ref.Name, func(w *Workspace) (bool, error) {
		fresh = false
		if w.Name != "" && w.SpecHash == hash && w.Phase != Failed && w.Phase != Deleted &&
			(ws.Generation == 0 || ws.Generation == w.Generation) {
			return false, nil
		}
		gen := w.Generation + 1
		if ws.Generation > 0 {
			if ws.Generation < w.Generation {
				return false, fmt.Errorf("generation %d is older than the recorded %d", ws.Generation, w.Generation)
			}
			gen = ws.Generation
		}
		created, history, gpu, live, ckpt := w.Created, w.History, w.GPU, w.Live, w.LiveCheckpoint
		if created.IsZero() || w.Phase == Deleted {
			// A workspace made again after a deletion starts a new life: nothing to roll back to.
			created, history, gpu, live, ckpt = time.Now().UTC(), nil, nil, 0, 0
		}
		*w = Workspace{
			Namespace: ref.Namespace, Name: ref.Name, Generation: gen, SpecHash: hash,
			InstanceType: ws.InstanceType(), Preset: ws.PresetName(), Phase: Pending,
			Manifest: ws, Created: created, Updated: time.Now().UTC(), History: history, GPU: gpu, Live: live, LiveCheckpoint: ckpt,
		}
		if ws.Tuning != nil {
			w.Method = ws.Tuning.Method
		}
		fresh = true
		return true, nil
	})
	return rec, fresh, err
}

// SpecHash fingerprints what a workspace asks for: resource, tuning, inference and labels.
func SpecHash(ws *kaito.Workspace) (string, error) {
	b, err := json.Marshal(struct {
		Labels    map[string]string    `json:"labels,omitempty"`
		Resource  kaito.ResourceSpec   `json:"resource"`
		Tuning    *kaito.TuningSpec    `json:"tuning,omitempty"`
		Inference *kaito.InferenceSpec `json:"inference,omitempty"`
	}{ws.Labels, ws.Resource, ws.Tuning, ws.Inference})
	if err != nil {
		return "", fmt.Errorf("hash workspace spec: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}

// Watch sends the record of namespace/name each time it changes, starting with its current
// value, until ctx is done.
func (s *Store) Watch(ctx context.Context, namespace, name string) (<-chan Workspace, error) {
	return s.watch(ctx, Key(namespace, name))
}

// WatchNamespace sends every record of namespace ("" for every namespace) each time it changes,
// starting with the current ones, until ctx is done.
func (s *Store) WatchNamespace(ctx context.Context, namespace string) (<-chan Workspace, error) {
	return s.watch(ctx, keyFilter(namespace))
}

func (s *Store) watch(ctx context.Context, keys string) (<-chan Workspace, error) {
	wt, err := s.kv.Watch(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("watch status: %w", err)
	}
	out := make(chan Workspace)
	go func() {
		defer close(out)
		defer func() { _ = wt.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-wt.Updates():
				if !ok {
					return
				}
				if e == nil || e.Operation() != jetstream.KeyValuePut {
					continue // nil marks the end of the initial values
				}
				var w Workspace
				if json.Unmarshal(e.Value(), &w) != nil {
					continue
				}
				select {
				case out <- w:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// Projector folds events into the store. It is a runtime handler that emits nothing.
type Projector struct {
	Store *Store
}

// Types are the events the projector consumes: all of them.
func (p *Projector) Types() []string { return events.Types }

// Handle implements runtime.Handler.
func (p *Projector) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	ref, err := events.RefOf(ev)
	if err != nil {
		return nil, events.Permanent(events.ReasonBadEvent, err)
	}
	_, err = p.Store.Update(ctx, ref.Namespace, ref.Name, func(w *Workspace) (bool, error) { return Apply(w, ev) })
	return nil, err
}

// ServingAdapter is the adapter the workspace's endpoint serves now (nil: none): what tune scores
// a new generation's adapter beside.
func (s *Store) ServingAdapter(ctx context.Context, ref events.Ref) (*events.ComparedAdapter, error) {
	w, err := s.Get(ctx, ref.Namespace, ref.Name)
	if errors.Is(err, ErrNotFound) || (err == nil && w == nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	p, ok := w.Pushed(w.Live)
	if w.Live == 0 {
		// A record from before live generations were kept: the newest adapter pushed before
		// ref's generation is what a rollout left serving.
		for _, h := range w.History {
			if h.Image != "" && h.Held == "" && h.Generation < ref.Generation {
				p, ok = h, true
			}
		}
	}
	if !ok {
		return nil, nil
	}
	return &events.ComparedAdapter{Generation: p.Generation, Reference: p.Image}, nil
}
