package ingress

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

func seed(t testing.TB) []byte {
	t.Helper()
	doc, err := os.ReadFile("../../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestParseMessage(t *testing.T) {
	doc := seed(t)
	ws, _ := kaito.DecodeWorkspace(doc)
	asJSON, _ := json.Marshal(ws)
	structured := func(typ string) []byte {
		ce := cloudevents.NewEvent()
		ce.SetID("ce-1")
		ce.SetSource("test")
		ce.SetType(typ)
		_ = ce.SetData(cloudevents.ApplicationJSON, ws)
		b, _ := json.Marshal(ce)
		return b
	}
	binary := func(typ string) map[string]any {
		return map[string]any{"cloudEvents:specversion": "1.0", "cloudEvents:id": "ce-2", "cloudEvents:source": "test", "cloudEvents:type": typ}
	}
	tests := []struct {
		name        string
		body        []byte
		contentType string
		props       map[string]any
		id          string
		err         string
	}{
		{"YAML manifest", doc, "", nil, "", ""},
		{"JSON manifest", asJSON, "application/json", nil, "", ""},
		{"structured CloudEvent", structured(events.WorkspaceRequested), "application/cloudevents+json", nil, "ce-1", ""},
		{"structured CloudEvent without its content type", structured(events.WorkspaceRequested), "", nil, "ce-1", ""},
		{"binary CloudEvent", asJSON, "application/json", binary(events.WorkspaceRequested), "ce-2", ""},
		{"binary CloudEvent, JMS-style prefix", asJSON, "", map[string]any{"cloudEvents_specversion": "1.0", "cloudEvents_id": "ce-3", "cloudEvents_source": "s", "cloudEvents_type": events.WorkspaceRequested}, "ce-3", ""},
		{"binary CloudEvent with a YAML body", doc, "application/yaml", binary(events.WorkspaceRequested), "ce-2", ""},
		{"wrong CloudEvent type", structured("com.example.other"), "", nil, "", "type: \"com.example.other\""},
		{"wrong binary type", asJSON, "", binary("com.example.other"), "", "cloudEvents:type"},
		{"binary without an id", asJSON, "", map[string]any{"cloudEvents:specversion": "1.0", "cloudEvents:source": "s", "cloudEvents:type": events.WorkspaceRequested}, "", "id"},
		{"binary, old specversion", asJSON, "", map[string]any{"cloudEvents:specversion": "0.3"}, "", "cloudEvents:specversion"},
		{"unknown field", []byte(strings.Replace(string(doc), "instanceType:", "instanceTypo:", 1)), "", nil, "", "instanceTypo"},
		{"not YAML", []byte("{{{"), "", nil, "", "body"},
		{"empty CloudEvent data", []byte(`{"specversion":"1.0","id":"x","source":"s","type":"` + events.WorkspaceRequested + `"}`), "", nil, "", "data: empty"},
		{"too big", make([]byte, MaxMessageSize+1), "", nil, "", "over the"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ws, id, err := ParseMessage(tc.body, tc.contentType, tc.props)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("want an error naming %q, got %v", tc.err, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ws.Name != "workspace-tuning-phi-3" || ws.Tuning == nil || id != tc.id {
				t.Errorf("workspace %q, id %q", ws.Name, id)
			}
		})
	}
}

func FuzzParseMessage(f *testing.F) {
	doc := seed(f)
	f.Add(doc, "", "")
	f.Add([]byte(`{"specversion":"1.0","id":"x","source":"s","type":"kaitoflow.workspace.requested","data":{"metadata":{"name":"a"}}}`), "application/cloudevents+json", "")
	f.Add([]byte(`{"metadata":{"name":"a"}}`), "application/json", events.WorkspaceRequested)
	f.Fuzz(func(t *testing.T, body []byte, contentType, binaryType string) {
		var props map[string]any
		if binaryType != "" {
			props = map[string]any{"cloudEvents:specversion": "1.0", "cloudEvents:id": "i", "cloudEvents:source": "s", "cloudEvents:type": binaryType}
		}
		ws, _, err := ParseMessage(body, contentType, props)
		if err == nil && ws == nil {
			t.Fatal("no error and no workspace")
		}
	})
}

// Kaito's v1beta1 manifests, as a Service Bus message body or the data of a CloudEvent, parse as
// they are.
func TestParseKaitoV1beta1(t *testing.T) {
	files, _ := filepath.Glob("../../../examples/v1beta1/*.yaml")
	if len(files) == 0 {
		t.Fatal("no v1beta1 examples")
	}
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ws, _, err := ParseMessage(body, "application/yaml", nil)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if ws.APIVersion != kaito.APIVersionV1Beta1 || len(ws.Validate(netguard.AddressPolicy{})) > 0 {
			t.Errorf("%s: %s, %v", f, ws.APIVersion, ws.Validate(netguard.AddressPolicy{}))
		}
	}
}

// Kaito's InferenceSet as a Service Bus message body: the workspace it is served as.
func TestParseKaitoInferenceSet(t *testing.T) {
	body, err := os.ReadFile("../../../apis/kaito/testdata/kaito-inferenceset/kaito_inferenceset_mistral_7b-instruct.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ws, _, err := ParseMessage(body, "application/yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ws.Kind != kaito.Kind || ws.Name != "mistral-7b-instruct" || ws.Labels[kaito.LabelInferenceSetCreatedBy] != "mistral-7b-instruct" ||
		len(ws.Validate(netguard.AddressPolicy{})) > 0 {
		t.Errorf("%+v: %v", ws, ws.Validate(netguard.AddressPolicy{}))
	}
	if _, _, err := ParseMessage([]byte(strings.Replace(string(body), "replicas: 1", "replicas: -1", 1)), "application/yaml", nil); err == nil ||
		!strings.Contains(err.Error(), "spec.replicas") {
		t.Errorf("negative replicas: %v, want the field named", err)
	}
}
