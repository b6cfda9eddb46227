package ingress

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
)

// MaxMessageSize bounds a message body: a manifest, not a dataset.
const MaxMessageSize = events.MaxEventSize

// The CloudEvents AMQP binding names attributes in application properties with one of these
// prefixes (the second for brokers that forbid ':').
var cePrefixes = []string{"cloudEvents:", "cloudEvents_"}

// ParseMessage reads a workspace from a message: a Kaito Workspace manifest (YAML or JSON), a
// structured-mode CloudEvent (application/cloudevents+json, or any JSON object with a
// specversion), or — when props carry CloudEvents attributes — a binary-mode CloudEvent whose data
// is the body. A CloudEvent must be of type kaitoflow.workspace.requested. It returns the
// CloudEvent's id when there was one. Errors name the field and are permanent: the same message
// fails the same way.
func ParseMessage(body []byte, contentType string, props map[string]any) (ws *kaito.Workspace, eventID string, err error) {
	if len(body) > MaxMessageSize {
		return nil, "", fmt.Errorf("body: %d bytes, over the %d-byte limit", len(body), MaxMessageSize)
	}
	if attrs := ceProperties(props); len(attrs) > 0 {
		return parseBinary(body, contentType, attrs)
	}
	if strings.HasPrefix(contentType, "application/cloudevents+json") || looksStructured(body) {
		var ev cloudevents.Event
		if err := json.Unmarshal(body, &ev); err != nil {
			return nil, "", fmt.Errorf("body: not a structured CloudEvent: %w", err)
		}
		return fromEvent(ev, "")
	}
	// A Workspace, or an InferenceSet served as the workspace it becomes.
	ws, err = kaito.DecodeManifest(body)
	if err != nil {
		return nil, "", fmt.Errorf("body: %w", err)
	}
	return ws, "", nil
}

// looksStructured reports whether body is a JSON object with a specversion member.
func looksStructured(body []byte) bool {
	b := bytes.TrimSpace(body)
	if len(b) == 0 || b[0] != '{' {
		return false
	}
	var probe struct {
		SpecVersion *json.RawMessage `json:"specversion"`
	}
	return json.Unmarshal(b, &probe) == nil && probe.SpecVersion != nil
}

func ceProperties(props map[string]any) map[string]string {
	attrs := map[string]string{}
	for k, v := range props {
		for _, p := range cePrefixes {
			if name, ok := strings.CutPrefix(k, p); ok && name != "" {
				attrs[strings.ToLower(name)] = fmt.Sprint(v)
			}
		}
	}
	return attrs
}

func parseBinary(body []byte, contentType string, attrs map[string]string) (*kaito.Workspace, string, error) {
	ev := cloudevents.NewEvent(attrs["specversion"])
	if attrs["specversion"] != "1.0" {
		return nil, "", fmt.Errorf("cloudEvents:specversion: %q, want 1.0", attrs["specversion"])
	}
	ev.SetID(attrs["id"])
	ev.SetSource(attrs["source"])
	ev.SetType(attrs["type"])
	ev.SetSubject(attrs["subject"])
	if ct := attrs["datacontenttype"]; ct != "" {
		contentType = ct
	}
	if contentType == "" {
		contentType = cloudevents.ApplicationJSON
	}
	if err := ev.SetData(contentType, body); err != nil {
		return nil, "", fmt.Errorf("data: %w", err)
	}
	return fromEvent(ev, "cloudEvents:")
}

func fromEvent(ev cloudevents.Event, prefix string) (*kaito.Workspace, string, error) {
	if err := ev.Validate(); err != nil {
		return nil, "", fmt.Errorf("%sCloudEvent: %w", prefix, err)
	}
	if ev.Type() != events.WorkspaceRequested {
		return nil, "", fmt.Errorf("%stype: %q is not %s", prefix, ev.Type(), events.WorkspaceRequested)
	}
	if len(ev.Data()) == 0 {
		return nil, "", fmt.Errorf("data: empty; want a Kaito Workspace manifest")
	}
	ws, err := kaito.DecodeWorkspace(ev.Data())
	if err != nil {
		return nil, "", fmt.Errorf("data: %w", err)
	}
	return ws, ev.ID(), nil
}
