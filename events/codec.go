package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/types"
)

// NATS binary content mode: attributes travel as "ce-" headers, the data is the message body and
// datacontenttype is the content-type header. Header values are percent-encoded as the HTTP
// binding specifies, so any string survives the trip.
const (
	headerPrefix      = "ce-"
	headerContentType = "content-type"
	// HeaderMsgID is JetStream's deduplication header.
	HeaderMsgID = "Nats-Msg-Id"
)

// MaxEventSize bounds what the decoders accept. JetStream's default max payload is 1 MiB; an event
// bigger than that is a mistake, not a workspace.
const MaxEventSize = 1 << 20

// EncodeNATS returns the headers and body of e in binary mode. Headers is the shape of nats.Header.
func EncodeNATS(e cloudevents.Event) (map[string][]string, []byte, error) {
	if err := e.Validate(); err != nil {
		return nil, nil, fmt.Errorf("invalid event: %w", err)
	}
	h := map[string][]string{}
	set := func(k, v string) {
		if v != "" {
			h[headerPrefix+k] = []string{percentEncode(v)}
		}
	}
	set("specversion", e.SpecVersion())
	set("id", e.ID())
	set("source", e.Source())
	set("type", e.Type())
	set("subject", e.Subject())
	set("dataschema", e.DataSchema())
	if !e.Time().IsZero() {
		set("time", e.Time().UTC().Format(time.RFC3339Nano))
	}
	for k, v := range e.Extensions() {
		s, err := types.Format(v)
		if err != nil {
			return nil, nil, fmt.Errorf("extension %s: %w", k, err)
		}
		set(k, s)
	}
	if ct := e.DataContentType(); ct != "" {
		h[headerContentType] = []string{ct}
	}
	h[HeaderMsgID] = []string{e.ID()}
	return h, e.Data(), nil
}

// DecodeNATS rebuilds an event from binary-mode headers and body. A message without ce-
// headers whose content type is application/cloudevents+json is read in structured mode.
func DecodeNATS(h map[string][]string, body []byte) (cloudevents.Event, error) {
	if len(body) > MaxEventSize {
		return cloudevents.Event{}, fmt.Errorf("event of %d bytes exceeds the %d byte limit", len(body), MaxEventSize)
	}
	get := func(k string) (string, error) {
		for hk, v := range h {
			if strings.EqualFold(hk, k) && len(v) > 0 {
				return url.PathUnescape(v[0])
			}
		}
		return "", nil
	}
	ct, _ := get(headerContentType)
	spec, err := get(headerPrefix + "specversion")
	if err != nil {
		return cloudevents.Event{}, fmt.Errorf("header %sspecversion: %w", headerPrefix, err)
	}
	if spec == "" {
		if strings.HasPrefix(ct, cloudevents.ApplicationCloudEventsJSON) {
			var e cloudevents.Event
			if err := json.Unmarshal(body, &e); err != nil {
				return cloudevents.Event{}, fmt.Errorf("structured event: %w", err)
			}
			return e, e.Validate()
		}
		return cloudevents.Event{}, fmt.Errorf("no %sspecversion header: not a CloudEvent", headerPrefix)
	}
	if spec != cloudevents.VersionV1 && spec != cloudevents.VersionV03 {
		return cloudevents.Event{}, fmt.Errorf("specversion %q is not supported", spec)
	}
	e := cloudevents.NewEvent(spec)
	for hk, v := range h {
		lk := strings.ToLower(hk)
		if !strings.HasPrefix(lk, headerPrefix) || len(v) == 0 {
			continue
		}
		val, err := url.PathUnescape(v[0])
		if err != nil {
			return cloudevents.Event{}, fmt.Errorf("header %s: %w", hk, err)
		}
		if !utf8.ValidString(val) {
			return cloudevents.Event{}, fmt.Errorf("header %s: not UTF-8", hk)
		}
		if err := setAttribute(&e, strings.TrimPrefix(lk, headerPrefix), val); err != nil {
			return cloudevents.Event{}, fmt.Errorf("header %s: %w", hk, err)
		}
	}
	if ct != "" {
		e.SetDataContentType(ct)
	}
	if len(body) > 0 {
		e.DataEncoded = bytes.Clone(body)
	}
	if err := e.Validate(); err != nil {
		return cloudevents.Event{}, fmt.Errorf("invalid event: %w", err)
	}
	return e, nil
}

// setAttribute sets one context attribute or extension from its header's decoded value.
func setAttribute(e *cloudevents.Event, name, val string) error {
	switch name {
	case "specversion":
	case "id":
		e.SetID(val)
	case "source":
		e.SetSource(val)
	case "type":
		e.SetType(val)
	case "subject":
		e.SetSubject(val)
	case "dataschema":
		e.SetDataSchema(val)
	case "time":
		t, err := time.Parse(time.RFC3339Nano, val)
		if err != nil {
			return err
		}
		e.SetTime(t)
	default:
		return e.Context.SetExtension(name, val)
	}
	return nil
}

// percentEncode escapes what the CloudEvents HTTP binding (3.1.3.2) requires: space, '"', '%',
// and everything outside printable ASCII.
func percentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || c == '"' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
