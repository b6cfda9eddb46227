package serve

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/events"
)

func TestHandleSim(t *testing.T) {
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	preset := &events.PresetSpec{PresetMeta: events.PresetMeta{Name: "phi-3-mini-4k-instruct"}}
	strength := "0.5"
	tests := []struct {
		name     string
		typ      string
		data     any
		adapters []string
		model    string
	}{
		{"tuned adapter", events.ImagePushed, events.ImagePushedData{Workspace: events.Workspace{Tuning: &events.TuningSpec{Preset: preset}}, Reference: "r@sha256:1"}, []string{"ws"}, "ws"},
		{"inference only", events.NodeReady, events.NodeReadyData{Workspace: events.Workspace{Inference: &events.InferenceSpec{Preset: preset,
			Adapters: []events.AdapterSpec{{Source: &events.DataSource{Name: "Adapter_A", Image: "x/a:1"}, Strength: &strength}}}}}, []string{"adapter-a"}, "adapter-a"},
		{"base model", events.NodeReady, events.NodeReadyData{Workspace: events.Workspace{Inference: &events.InferenceSpec{Preset: preset}}}, []string{}, "phi-3-mini-4k-instruct"},
		{"tuning workspace waits for its image", events.NodeReady, events.NodeReadyData{Workspace: events.Workspace{Tuning: &events.TuningSpec{}}}, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim := &Sim{}
			srv := httptest.NewServer(sim.Handler())
			defer srv.Close()
			sim.BaseURL = srv.URL
			fn := New(sim, nil)
			out, err := fn.Handle(context.Background(), events.Must(events.New("test", tc.typ, tc.typ, ref, tc.data, nil)))
			if err != nil {
				t.Fatal(err)
			}
			if tc.adapters == nil {
				if len(out) != 0 {
					t.Fatalf("emitted %v", out)
				}
				return
			}
			var d events.InferenceReadyData
			if len(out) != 1 || events.Data(out[0], &d) != nil {
				t.Fatalf("want inference.ready, got %v", out)
			}
			if d.URL != srv.URL+"/default/ws" || strings.Join(d.Adapters, ",") != strings.Join(tc.adapters, ",") || d.Driver != "sim" || d.Revision != "ws-00001" {
				t.Errorf("inference.ready %+v", d)
			}
			// The endpoint is chat-proxy in front of the simulated runtime: Kaito's /chat…
			resp, err := http.Post(d.URL+"/chat", "application/json", strings.NewReader(`{"prompt":"hello","generate_kwargs":{"max_new_tokens":100}}`))
			if err != nil {
				t.Fatal(err)
			}
			var res struct{ Result string }
			_ = json.NewDecoder(resp.Body).Decode(&res)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(res.Result, "[sim]") || !strings.HasSuffix(res.Result, "You said: hello") {
				t.Fatalf("chat: %d %q", resp.StatusCode, res.Result)
			}
			resp, _ = http.Post(d.URL+"/chat", "application/json", strings.NewReader(`{"nope":1}`))
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("bad chat body: %d", resp.StatusCode)
			}
			// …and OpenAI's streaming chat completions, one word per event.
			body := `{"model":"` + tc.model + `","stream":true,"messages":[{"role":"user","content":"hi there"}]}`
			resp, err = http.Post(d.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.Header.Get("Content-Type") != "text/event-stream" {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("stream: %d %s", resp.StatusCode, b)
			}
			var text strings.Builder
			chunks := 0
			for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
				data, ok := strings.CutPrefix(sc.Text(), "data: ")
				if !ok || data == "[DONE]" {
					continue
				}
				var c struct {
					Choices []struct{ Delta struct{ Content string } }
				}
				if err := json.Unmarshal([]byte(data), &c); err != nil || len(c.Choices) != 1 {
					t.Fatalf("chunk %q: %v", data, err)
				}
				text.WriteString(c.Choices[0].Delta.Content)
				chunks++
			}
			if chunks < 5 || !strings.HasSuffix(text.String(), "You said: hi there") {
				t.Errorf("%d chunks: %q", chunks, text.String())
			}
		})
	}
}

func TestSimLifecycle(t *testing.T) {
	ctx := context.Background()
	sim := &Sim{BaseURL: "http://kf"}
	fn := New(sim, nil)
	ws := events.Workspace{Inference: &events.InferenceSpec{Preset: &events.PresetSpec{PresetMeta: events.PresetMeta{Name: "phi-3-mini-4k-instruct"}}}}
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	out, _ := fn.Handle(ctx, events.Must(events.New("test", events.NodeReady, events.NodeReady, ref, events.NodeReadyData{Workspace: ws}, nil)))
	if refs, _ := sim.List(ctx); len(refs) != 1 {
		t.Fatalf("unacknowledged: %v", refs)
	}
	if _, err := fn.Handle(ctx, out[0]); err != nil {
		t.Fatal(err)
	}
	if refs, _ := sim.List(ctx); len(refs) != 0 {
		t.Fatalf("acknowledged but listed: %v", refs)
	}
	if out, _ := fn.Handle(ctx, events.Must(events.New("test", events.Tick, events.Tick, events.Ref{}, events.TickData{}, nil))); len(out) != 0 {
		t.Errorf("tick re-reported an acknowledged service: %v", out)
	}
	if _, err := fn.Handle(ctx, events.Must(events.New("test", events.WorkspaceDeleted, events.WorkspaceDeleted, ref, events.WorkspaceDeletedData{}, nil))); err != nil {
		t.Fatal(err)
	}
	if st, _ := sim.Status(ctx, ref); st != nil {
		t.Errorf("deleted service: %+v", st)
	}
}
