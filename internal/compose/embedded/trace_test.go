package embedded

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/internal/telemetry"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// otlpReceiver is an OTLP/HTTP trace endpoint that decodes what it is sent (the protobuf
// ExportTraceServiceRequest, as a collector would) and keeps the spans.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []receivedSpan
}

type receivedSpan struct {
	trace, id, parent, name, subject string
	start                            uint64
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want OTLP/HTTP protobuf on /v1/traces", http.StatusBadRequest)
		return
	}
	b, err := io.ReadAll(r.Body)
	var req coltracepb.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(b, &req)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				sp := receivedSpan{trace: hex.EncodeToString(s.TraceId), id: hex.EncodeToString(s.SpanId),
					parent: hex.EncodeToString(s.ParentSpanId), name: s.Name, start: s.StartTimeUnixNano}
				for _, a := range s.Attributes {
					if a.Key == "cloudevents.event_subject" {
						sp.subject = a.Value.GetStringValue()
					}
				}
				o.spans = append(o.spans, sp)
			}
		}
	}
	o.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, the pipeline's spans go out over OTLP/HTTP: one workspace
// is one trace, from the API's submission through every function, each span a child of the one
// that produced its input, in event order; and the steps' log lines name that trace and their span.
func TestTracesExportedOverOTLP(t *testing.T) {
	recv := &otlpReceiver{}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_SERVICE_NAME", "kaitoflow-test")
	tp, shutdown, err := telemetry.Tracer(context.Background(), "kaitoflow")
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.SyncBuffer
	p := startWith(t, startOptions{tracer: tp, log: slog.New(logctx.New(slog.NewJSONHandler(&logs, nil)))})

	doc, _ := os.ReadFile(seedPath)
	if code, body := submit(t, p, doc); code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, body)
	}
	if w := waitTerminal(t, p, "default", "workspace-tuning-phi-3", 30*time.Second); w.Phase != status.Ready {
		t.Fatalf("phase %s", w.Phase)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil { // flushes the batch
		t.Fatal(err)
	}

	recv.mu.Lock()
	defer recv.mu.Unlock()
	byID := map[string]receivedSpan{}
	var root *receivedSpan
	var ws []receivedSpan
	for i, s := range recv.spans {
		byID[s.id] = s
		if s.name == "submit workspace" {
			root = &recv.spans[i]
		}
		if s.subject == "default/workspace-tuning-phi-3" {
			ws = append(ws, s)
		}
	}
	if root == nil || len(ws) < 5 {
		t.Fatalf("received %d spans, %d of the workspace, root %v", len(recv.spans), len(ws), root)
	}
	for _, s := range ws {
		if s.trace != root.trace {
			t.Errorf("%s in trace %s, the submission's is %s", s.name, s.trace, root.trace)
		}
		parent, ok := byID[s.parent]
		if !ok {
			t.Errorf("%s: parent %s not received", s.name, s.parent)
			continue
		}
		if parent.start > s.start {
			t.Errorf("%s starts before its parent %s", s.name, parent.name)
		}
	}
	// The steps, each a descendant of the one before.
	chain := []string{"provision kaitoflow.workspace.requested", "tune kaitoflow.node.ready", "publish kaitoflow.tuning.completed", "serve kaitoflow.image.pushed"}
	descends := func(s receivedSpan, ancestor string) bool {
		for ; s.parent != ""; s = byID[s.parent] {
			if byID[s.parent].name == ancestor {
				return true
			}
			if _, ok := byID[s.parent]; !ok {
				return false
			}
		}
		return false
	}
	for i, name := range chain {
		var found *receivedSpan
		for j := range ws {
			if ws[j].name == name {
				found = &ws[j]
			}
		}
		if found == nil {
			t.Errorf("no span %q; the workspace's: %v", name, names(ws))
			continue
		}
		want := "submit workspace"
		if i > 0 {
			want = chain[i-1]
		}
		if !descends(*found, want) {
			t.Errorf("%s does not descend from %s", name, want)
		}
	}
	// A step's log line names the workspace's trace and a span of it.
	traced := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		var rec struct {
			TraceID string `json:"trace_id"`
			SpanID  string `json:"span_id"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.TraceID == "" {
			continue
		}
		if s, ok := byID[rec.SpanID]; ok && rec.TraceID == root.trace && s.trace == root.trace {
			traced++
		}
	}
	if traced == 0 {
		t.Errorf("no log line names the workspace's trace %s and one of its spans:\n%s", root.trace, logs.String())
	}
}

func names(spans []receivedSpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.name)
	}
	return out
}
