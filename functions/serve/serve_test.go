package serve

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/events"
)

func TestHandle(t *testing.T) {
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	preset := &events.PresetSpec{PresetMeta: events.PresetMeta{Name: "phi-3-mini-4k-instruct"}}
	strength := "0.5"
	tests := []struct {
		name     string
		typ      string
		data     any
		adapters int
	}{
		{"tuned adapter", events.ImagePushed, events.ImagePushedData{Workspace: events.Workspace{Tuning: &events.TuningSpec{Preset: preset}}, Reference: "r@sha256:1"}, 1},
		{"inference only", events.NodeReady, events.NodeReadyData{Workspace: events.Workspace{Inference: &events.InferenceSpec{Preset: preset,
			Adapters: []events.AdapterSpec{{Source: &events.DataSource{Name: "a", Image: "x/a:1"}, Strength: &strength}}}}}, 1},
		{"tuning workspace waits for its image", events.NodeReady, events.NodeReadyData{Workspace: events.Workspace{Tuning: &events.TuningSpec{}}}, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim := &Sim{BaseURL: "http://kf/sim/inference"}
			out, err := New(sim, nil).Handle(context.Background(), events.Must(events.New("test", tc.typ, tc.typ, ref, tc.data, nil)))
			if err != nil {
				t.Fatal(err)
			}
			if tc.adapters < 0 {
				if len(out) != 0 {
					t.Fatalf("emitted %v", out)
				}
				return
			}
			var d events.InferenceReadyData
			if err := events.Data(out[0], &d); err != nil {
				t.Fatal(err)
			}
			if d.URL != "http://kf/sim/inference/default/ws" || len(d.Adapters) != tc.adapters || d.Driver != "sim" {
				t.Errorf("inference.ready %+v", d)
			}
			srv := httptest.NewServer(sim.Handler())
			defer srv.Close()
			resp, err := http.Post(srv.URL+"/default/ws/chat", "application/json", strings.NewReader(`{"prompt":"hello"}`))
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("chat: %v %v", resp, err)
			}
			resp, _ = http.Post(srv.URL+"/default/ws/chat", "application/json", strings.NewReader(`{"nope":1}`))
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("bad chat body: %d", resp.StatusCode)
			}
		})
	}
}
