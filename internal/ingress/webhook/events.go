package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// Event types of interest.
const (
	TypeBlobCreated            = "Microsoft.Storage.BlobCreated"
	TypeSubscriptionValidation = "Microsoft.EventGrid.SubscriptionValidationEvent"
)

// Delivery is what one POST carried: a subscription handshake, or storage events.
type Delivery struct {
	// ValidationCode is set for the Event Grid schema's SubscriptionValidation handshake.
	ValidationCode string
	Events         []BlobEvent
}

// BlobEvent is a storage event in either schema, reduced to what a workspace needs.
type BlobEvent struct {
	ID      string
	Type    string
	Subject string
	Data    BlobData
}

// BlobData is the data of Microsoft.Storage.BlobCreated.
type BlobData struct {
	API           string `json:"api"`
	ETag          string `json:"eTag"`
	ContentType   string `json:"contentType"`
	ContentLength int64  `json:"contentLength"`
	BlobType      string `json:"blobType"`
	URL           string `json:"url"`
	Sequencer     string `json:"sequencer"`
}

// gridEvent is the Event Grid schema.
type gridEvent struct {
	ID        string          `json:"id"`
	Topic     string          `json:"topic"`
	Subject   string          `json:"subject"`
	EventType string          `json:"eventType"`
	Data      json.RawMessage `json:"data"`
}

// ParseDelivery reads a POST in the Event Grid schema (a JSON array; aeg-event-type says whether
// it is a handshake) or the CloudEvents 1.0 schema (structured, batch, or binary mode). Only
// BlobCreated data is decoded; other event types come back without data for the caller to skip.
func ParseDelivery(header http.Header, body []byte) (*Delivery, error) {
	ct := header.Get("Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/cloudevents-batch+json"):
		var evs []cloudevents.Event
		if err := json.Unmarshal(body, &evs); err != nil {
			return nil, fmt.Errorf("body: not a CloudEvents batch: %w", err)
		}
		return fromCloudEvents(evs)
	case strings.HasPrefix(ct, "application/cloudevents+json"):
		var ev cloudevents.Event
		if err := json.Unmarshal(body, &ev); err != nil {
			return nil, fmt.Errorf("body: not a structured CloudEvent: %w", err)
		}
		return fromCloudEvents([]cloudevents.Event{ev})
	case header.Get("ce-specversion") != "":
		req, _ := http.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		req.Header = header.Clone()
		ev, err := cehttp.NewEventFromHTTPRequest(req)
		if err != nil {
			return nil, fmt.Errorf("binary-mode CloudEvent: %w", err)
		}
		return fromCloudEvents([]cloudevents.Event{*ev})
	}
	// The Event Grid schema: always an array.
	var evs []gridEvent
	if err := json.Unmarshal(body, &evs); err != nil {
		return nil, fmt.Errorf("body: not an Event Grid event array: %w", err)
	}
	d := &Delivery{}
	for i, e := range evs {
		if e.EventType == TypeSubscriptionValidation {
			var v struct {
				ValidationCode string `json:"validationCode"`
			}
			if err := json.Unmarshal(e.Data, &v); err != nil || v.ValidationCode == "" {
				return nil, fmt.Errorf("[%d].data.validationCode: required in a SubscriptionValidationEvent", i)
			}
			d.ValidationCode = v.ValidationCode
			continue
		}
		be := BlobEvent{ID: e.ID, Type: e.EventType, Subject: e.Subject}
		if e.ID == "" || e.EventType == "" {
			return nil, fmt.Errorf("[%d]: id and eventType are required", i)
		}
		if e.EventType == TypeBlobCreated {
			if err := json.Unmarshal(e.Data, &be.Data); err != nil {
				return nil, fmt.Errorf("[%d].data: %w", i, err)
			}
		}
		d.Events = append(d.Events, be)
	}
	return d, nil
}

func fromCloudEvents(evs []cloudevents.Event) (*Delivery, error) {
	d := &Delivery{}
	for i, ev := range evs {
		// Required attributes only: Event Grid's own BlobCreated carries "dataschema": "#", which
		// the SDK's full validation refuses as not an absolute URI.
		if ev.ID() == "" || ev.Type() == "" || ev.Source() == "" {
			return nil, fmt.Errorf("[%d]: id, type and source are required", i)
		}
		be := BlobEvent{ID: ev.ID(), Type: ev.Type(), Subject: ev.Subject()}
		if ev.Type() == TypeBlobCreated {
			if err := json.Unmarshal(ev.Data(), &be.Data); err != nil {
				return nil, fmt.Errorf("[%d].data: %w", i, err)
			}
		}
		d.Events = append(d.Events, be)
	}
	return d, nil
}

// Blob returns the container and blob path of a storage event's subject
// ("/blobServices/default/containers/C/blobs/P"; the CloudEvents schema drops the leading slash).
func (e BlobEvent) Blob() (container, path string, ok bool) {
	rest, ok := strings.CutPrefix(strings.TrimPrefix(e.Subject, "/"), "blobServices/default/containers/")
	if !ok {
		return "", "", false
	}
	container, path, ok = strings.Cut(rest, "/blobs/")
	return container, path, ok && container != "" && path != ""
}
