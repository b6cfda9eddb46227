package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
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
	// Topic is the storage account's resource id (Event Grid's topic, a CloudEvent's source).
	Topic   string
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
		be := BlobEvent{Topic: e.Topic, ID: e.ID, Type: e.EventType, Subject: e.Subject}
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
		be := BlobEvent{Topic: ev.Source(), ID: ev.ID(), Type: ev.Type(), Subject: ev.Subject()}
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

// blobDomains are Azure Storage's blob and Data Lake endpoints in Azure's public, China and US
// Government clouds.
var blobDomains = []string{
	"blob.core.windows.net", "dfs.core.windows.net",
	"blob.core.chinacloudapi.cn", "dfs.core.chinacloudapi.cn",
	"blob.core.usgovcloudapi.net", "dfs.core.usgovcloudapi.net",
}

// Account is the storage account the event's topic names ("" when it names none).
func (e BlobEvent) Account() string {
	_, rest, ok := strings.Cut(e.Topic, "/providers/Microsoft.Storage/storageAccounts/")
	if !ok {
		return ""
	}
	account, _, _ := strings.Cut(rest, "/")
	return account
}

// CheckURL ties the event's data.url to what its topic and subject say: the blob endpoint of
// the topic's account, https, at the subject's container and blob. The subject and topic come
// from Event Grid; data.url is what the trainer will download, and a delivery that pairs a
// trusted subject with another URL would train on whatever that URL serves.
func (e BlobEvent) CheckURL() error {
	container, blob, ok := e.Blob()
	account := e.Account()
	if !ok || account == "" {
		return errors.New("the event names no storage account and blob")
	}
	u, err := url.Parse(e.Data.URL)
	if err != nil {
		return fmt.Errorf("data.url: %w", err)
	}
	host := strings.ToLower(u.Hostname())
	first, domain, _ := strings.Cut(host, ".")
	if u.Scheme != "https" || first != strings.ToLower(account) || !slices.Contains(blobDomains, domain) || u.Port() != "" || u.User != nil {
		return fmt.Errorf("data.url %q is not the blob endpoint of storage account %s", e.Data.URL, account)
	}
	// A query (?snapshot=, ?versionid=) or fragment would select another version than the event's.
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("data.url %q names more than the blob (a query or fragment)", e.Data.URL)
	}
	if u.Path != "/"+container+"/"+blob {
		return fmt.Errorf("data.url %q is not blob %s in container %s", e.Data.URL, blob, container)
	}
	return nil
}
