package embedded

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/pipeline"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// The embedded NATS server admits only who signs in, and each role only to its rights. Before,
// anyone who reached its port could publish a workspace onto the pipeline's stream; then anyone
// holding the one password could. Now a function's credentials (what a `kaitoflow fn` process
// joins with) cannot submit or delete a workspace, edit the stream, or write another's bucket,
// while the entrance's submit and the pipeline runs, every function on its own role.
func TestEmbeddedNATSRolesHaveOnlyTheirRights(t *testing.T) {
	p := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	u, err := url.Parse(p.NATSURL)
	if err != nil || u.User == nil {
		t.Fatalf("the pipeline's NATS URL has no credentials: %v", err)
	}
	anonymous := *u
	anonymous.User = nil
	if nc, err := nats.Connect(anonymous.String(), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("an anonymous client was admitted")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("anonymous: %v", err)
	}
	wrong := *u
	wrong.User = url.UserPassword(tune.Name, "guessed")
	if nc, err := nats.Connect(wrong.String(), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("a wrong password was admitted")
	}

	roleJS := func(role string) (jetstream.JetStream, *testenv.SyncBuffer) {
		t.Helper()
		file := filepath.Join(p.DataDir, NATSDir, role+".url")
		st, err := os.Stat(file)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s's credentials file: %v %v", role, st, err)
		}
		b, _ := os.ReadFile(file)
		var violations testenv.SyncBuffer
		nc, err := nats.Connect(strings.TrimSpace(string(b)), nats.MaxReconnects(0),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				_, _ = violations.Write([]byte(err.Error() + "\n"))
			}))
		if err != nil {
			t.Fatalf("%s's credentials: %v", role, err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js, &violations
	}
	refused := func(what string, violations *testenv.SyncBuffer, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: allowed", what)
			return
		}
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(violations.String(), "Permissions Violation"); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("%s failed (%v), but not for a permission: %s", what, err, violations.String())
				return
			}
		}
	}
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, time.Second)
		t.Cleanup(cancel)
		return c
	}

	ws, _ := testenv.Seed(t, "default")
	ws.Name = "by-a-function"
	ev, err := events.New("kaitoflow/test", events.WorkspaceRequested, events.WorkspaceRequested, events.WorkspaceRef(ws), ws, nil)
	if err != nil {
		t.Fatal(err)
	}

	for _, role := range []string{tune.Name, assembly.Status} {
		js, violations := roleJS(role)
		refused(role+" publishes workspace.requested", violations, runtime.JetStreamPublisher{JS: js}.Publish(short(), ev))
		violations.Reset()
		rollback, err := events.New("kaitoflow/test", events.AdapterSelected, "rollback", events.WorkspaceRef(ws), events.AdapterSelectedData{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		refused(role+" publishes adapter.selected", violations, runtime.JetStreamPublisher{JS: js}.Publish(short(), rollback))
		violations.Reset()
		deleted, err := events.New("kaitoflow/test", events.WorkspaceDeleted, events.WorkspaceDeleted, events.WorkspaceRef(ws), events.WorkspaceDeletedData{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		refused(role+" publishes workspace.deleted", violations, runtime.JetStreamPublisher{JS: js}.Publish(short(), deleted))
		violations.Reset()
		refused(role+" deletes the stream", violations, js.DeleteStream(short(), runtime.StreamName))
		violations.Reset()
		// A stream of its own that mirrors or sources the pipeline's would carry its events elsewhere.
		_, err = js.CreateStream(short(), jetstream.StreamConfig{Name: "copy-" + role, Mirror: &jetstream.StreamSource{Name: runtime.StreamName}})
		refused(role+" mirrors the stream", violations, err)
		violations.Reset()
		_, err = js.CreateStream(short(), jetstream.StreamConfig{Name: "sourced-" + role, Sources: []*jetstream.StreamSource{{Name: runtime.StreamName}}})
		refused(role+" sources the stream", violations, err)
		violations.Reset()
		st, err := js.Stream(ctx, runtime.StreamName)
		if err != nil {
			t.Fatalf("%s reads the stream: %v", role, err)
		}
		cfg := st.CachedInfo().Config
		cfg.SubjectTransform = &jetstream.SubjectTransformConfig{Source: events.Tick, Destination: events.WorkspaceRequested}
		_, err = js.UpdateStream(short(), cfg)
		refused(role+" edits the stream", violations, err)
		violations.Reset()
		refused(role+" purges the stream", violations, st.Purge(short()))
		violations.Reset()
		kv, err := js.KeyValue(ctx, status.Bucket)
		if err != nil {
			t.Fatalf("%s opens the status bucket: %v", role, err)
		}
		_, err = kv.PutString(short(), "default.forged", "{}")
		if role == assembly.Status {
			if err != nil {
				t.Errorf("status writes its own bucket: %v", err)
			}
			continue
		}
		refused(role+" writes the status bucket", violations, err)
	}
	if _, err := p.Store.Get(ctx, "default", ws.Name); err == nil {
		t.Fatal("a function's credentials submitted a workspace")
	}

	// The entrance's credentials submit; the pipeline, each function on its own role, takes it to Ready.
	js, violations := roleJS(pipeline.Entrance)
	ws.Name = "by-the-entrance"
	if ev, err = events.New("kaitoflow/test", events.WorkspaceRequested, events.WorkspaceRequested, events.WorkspaceRef(ws), ws, nil); err != nil {
		t.Fatal(err)
	}
	if err := (runtime.JetStreamPublisher{JS: js}).Publish(ctx, ev); err != nil {
		t.Fatalf("the entrance submits: %v", err)
	}
	if w := waitTerminal(t, p, "default", ws.Name, 30*time.Second); w.Phase != status.Ready {
		t.Fatalf("phase %s: %+v", w.Phase, w.Failure)
	}
	// ... and is refused what only the pipeline's own events say.
	ready, err := events.New("kaitoflow/test", events.InferenceReady, events.InferenceReady, events.WorkspaceRef(ws), events.InferenceReadyData{Ref: events.WorkspaceRef(ws)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	refused("the entrance publishes inference.ready", violations, runtime.JetStreamPublisher{JS: js}.Publish(short(), ready))
}
