package events

import (
	"os"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
)

func TestIDsAreDeterministic(t *testing.T) {
	r := Ref{Namespace: "default", Name: "ws", Generation: 3}
	if first, again := r.ID(NodeReady), r.ID(NodeReady); first != again {
		t.Fatal("same ref and step gave different ids")
	}
	others := []Ref{
		{Namespace: "default", Name: "ws", Generation: 4},
		{Namespace: "other", Name: "ws", Generation: 3},
		{Namespace: "default", Name: "ws2", Generation: 3},
		// the separator keeps "a"+"b/c" and "a/b"+"c" apart
		{Namespace: "default/ws", Name: "", Generation: 3},
	}
	for _, o := range others {
		if o.ID(NodeReady) == r.ID(NodeReady) {
			t.Errorf("%v and %v share an id", r, o)
		}
	}
	if r.ID(NodeReady) == r.ID(TuningCompleted) {
		t.Error("different steps share an id")
	}
}

func TestNewCarriesTraceAndGeneration(t *testing.T) {
	cause := cloudevents.NewEvent()
	cause.SetExtension(ExtTraceParent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	r := Ref{Namespace: "ns", Name: "ws", Generation: 1 << 40}
	e, err := New("kaitoflow/test", NodeReady, NodeReady, r, NodeReadyData{Nodes: []string{"n1"}}, &cause)
	if err != nil {
		t.Fatal(err)
	}
	if e.Subject() != "ns/ws" || e.ID() != r.ID(NodeReady) {
		t.Errorf("subject %q id %q", e.Subject(), e.ID())
	}
	if got := e.Extensions()[ExtTraceParent]; got != cause.Extensions()[ExtTraceParent] {
		t.Errorf("traceparent = %v", got)
	}
	back, err := RefOf(e)
	if err != nil || back != r {
		t.Fatalf("RefOf = %v, %v; want %v", back, err, r)
	}
}

// seedPath is the manifest of Kaito's fine-tuning guide, the project's first example.
const seedPath = "../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"

func TestNATSRoundTrip(t *testing.T) {
	doc, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kaito.DecodeWorkspace(doc)
	if err != nil {
		t.Fatal(err)
	}
	e, err := New("kaitoflow/api", WorkspaceRequested, WorkspaceRequested, Ref{Namespace: "default", Name: w.Name, Generation: 1}, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Values that need percent-encoding must survive.
	e.SetSource("kaitoflow/api with spaces")
	e.SetExtension("note", "%and \"quotes\" é")
	e.SetExtension(ExtTraceState, "k=v")
	h, body, err := EncodeNATS(e)
	if err != nil {
		t.Fatal(err)
	}
	if h[HeaderMsgID][0] != e.ID() {
		t.Errorf("Nats-Msg-Id = %v, want the event id", h[HeaderMsgID])
	}
	if strings.ContainsAny(h["ce-source"][0], " \"é") {
		t.Errorf("source not percent-encoded: %q", h["ce-source"][0])
	}
	got, err := DecodeNATS(h, body)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, a, b string }{
		{"id", got.ID(), e.ID()}, {"source", got.Source(), e.Source()}, {"type", got.Type(), e.Type()},
		{"subject", got.Subject(), e.Subject()}, {"content type", got.DataContentType(), e.DataContentType()},
		{"data", string(got.Data()), string(e.Data())},
	} {
		if c.a != c.b {
			t.Errorf("%s: got %q want %q", c.name, c.a, c.b)
		}
	}
	if !got.Time().Equal(e.Time()) {
		t.Errorf("time: %v vs %v", got.Time(), e.Time())
	}
	r, err := RefOf(got)
	if err != nil || r.Generation != 1 {
		t.Errorf("generation lost: %v %v", r, err)
	}
	var back kaito.Workspace
	if err := Data(got, &back); err != nil || back.Tuning.Input.URLs[0] != w.Tuning.Input.URLs[0] {
		t.Errorf("payload: %v", err)
	}
}

func TestDecodeNATSRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    map[string][]string
		body []byte
	}{
		{"no headers", nil, []byte(`{}`)},
		{"missing id", map[string][]string{"ce-specversion": {"1.0"}, "ce-type": {"t"}, "ce-source": {"s"}}, nil},
		{"bad time", map[string][]string{"ce-specversion": {"1.0"}, "ce-id": {"1"}, "ce-type": {"t"}, "ce-source": {"s"}, "ce-time": {"yesterday"}}, nil},
		{"bad escape", map[string][]string{"ce-specversion": {"1.0"}, "ce-id": {"%zz"}, "ce-type": {"t"}, "ce-source": {"s"}}, nil},
		{"too big", map[string][]string{"ce-specversion": {"1.0"}}, make([]byte, MaxEventSize+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeNATS(tc.h, tc.body); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// FuzzDecodeNATS: no input panics, and whatever decodes re-encodes to the same event.
func FuzzDecodeNATS(f *testing.F) {
	f.Add("1.0", "id-1", "kaitoflow/test", NodeReady, "ns/ws", "2026-01-02T03:04:05Z", "7", []byte(`{"a":1}`))
	f.Add("1.0", "%41", "s%20s", "t", "", "", "", []byte{})
	f.Add("0.3", "x", "y", "z", "a/b", "bad", "-1", []byte("not json"))
	f.Fuzz(func(t *testing.T, spec, id, source, typ, subject, tm, gen string, body []byte) {
		h := map[string][]string{
			"ce-specversion": {spec}, "ce-id": {id}, "ce-source": {source}, "ce-type": {typ},
			"ce-subject": {subject}, "ce-time": {tm}, "ce-" + ExtGeneration: {gen}, "content-type": {"application/json"},
		}
		e, err := DecodeNATS(h, body)
		if err != nil {
			return
		}
		h2, body2, err := EncodeNATS(e)
		if err != nil {
			t.Fatalf("decoded event does not encode: %v", err)
		}
		e2, err := DecodeNATS(h2, body2)
		if err != nil {
			t.Fatalf("re-encoded event does not decode: %v", err)
		}
		if e2.ID() != e.ID() || e2.Source() != e.Source() || e2.Subject() != e.Subject() || string(e2.Data()) != string(e.Data()) {
			t.Fatalf("round trip changed the event: %v vs %v", e, e2)
		}
		_, _ = RefOf(e)
	})
}
