package runtime

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
)

// nopPublisher stores nothing and never fails.
type nopPublisher struct{}

func (nopPublisher) Publish(context.Context, ...cloudevents.Event) error { return nil }

// FuzzHTTPReceiver feeds the Knative-facing receiver arbitrary CloudEvents over HTTP (binary mode
// headers or a structured body): it must answer every one with a status, never panic, and only
// hand the function events of its types.
func FuzzHTTPReceiver(f *testing.F) {
	f.Add("application/json", events.WorkspaceRequested, "default/ws", "1", `{"metadata":{"name":"ws"}}`)
	f.Add("application/cloudevents+json", "", "", "", `{"specversion":"1.0","id":"1","source":"s","type":"kaitoflow.workspace.requested","subject":"default/ws","data":{}}`)
	f.Add("application/json", "kaitoflow.bogus", "x", "abc", "{")
	f.Fuzz(func(t *testing.T, contentType, typ, subject, generation, body string) {
		fn := Function{Name: "fuzz", Types: []string{events.WorkspaceRequested}, Handler: HandlerFunc(func(_ context.Context, e cloudevents.Event) ([]cloudevents.Event, error) {
			if e.Type() != events.WorkspaceRequested {
				t.Fatalf("the function got a %q", e.Type())
			}
			var ws kaito.Workspace
			return nil, events.Data(e, &ws)
		})}
		h, err := NewHTTP(fn, Deps{Publisher: nopPublisher{}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		if typ != "" {
			req.Header.Set("ce-specversion", "1.0")
			req.Header.Set("ce-id", "fuzz-1")
			req.Header.Set("ce-source", "fuzz")
			req.Header.Set("ce-type", typ)
			req.Header.Set("ce-subject", subject)
			req.Header.Set("ce-workspacegeneration", generation)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code < 200 || rec.Code > 599 {
			t.Fatalf("status %d", rec.Code)
		}
	})
}
