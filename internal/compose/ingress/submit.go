// Package ingress is how workspaces enter the pipeline from outside the CLI's API: the one
// submission path (validate, admit, publish, wait for the ack) that the API, the Service Bus bridge
// and the dataset-upload webhook share, and the parsers for what those sources deliver.
package ingress

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Admitter records a submission and decides its generation: the same spec again is the same
// generation, a changed one the next (status.Store).
type Admitter interface {
	Admit(ctx context.Context, ws *kaito.Workspace) (rec *status.Workspace, fresh bool, err error)
}

// Submitter admits workspaces and publishes kaitoflow.workspace.requested.
type Submitter struct {
	Store     Admitter
	Publisher events.Publisher
	Policy    netguard.AddressPolicy
	// Source is the CloudEvents source of the events it publishes (kaitoflow/api, …).
	Source string
	// Namespaces are those this entrance may submit workspaces to ("*": any; empty: any, for the
	// entrances whose callers the cluster already authorizes per namespace: kubectl, up's API).
	// Whoever may send to a Service Bus queue, say, should not thereby run GPUs in every namespace.
	Namespaces []string
	// Plan, when set, is provision's fit check, run at submit: what it refuses for good (an
	// unknown preset or SKU, a model that cannot fit, a ConfigMap that is not there) is refused
	// here, before anything is accepted; what it cannot decide now (the Hub unreachable) is left to
	// provision.
	Plan func(ctx context.Context, ws *kaito.Workspace) (*events.Plan, error)
}

// Admits reports whether an entrance limited to namespaces (empty or "*": any) may submit to
// namespace.
func Admits(namespaces []string, namespace string) bool {
	return len(namespaces) == 0 || slices.Contains(namespaces, "*") || slices.Contains(namespaces, namespace)
}

// planTimeout bounds the fit check at submit: a model read from the Hub may need a request.
const planTimeout = 5 * time.Second

// Check runs the validation and the fit check Submit runs, without submitting: a dry run.
func (s *Submitter) Check(ctx context.Context, ws *kaito.Workspace) error {
	if errs := ws.Validate(s.Policy); len(errs) > 0 {
		return &InvalidError{Namespace: ws.Namespace, Name: ws.Name, Fields: errs}
	}
	if !Admits(s.Namespaces, ws.Namespace) {
		return &InvalidError{Namespace: ws.Namespace, Name: ws.Name, Fields: field.ErrorList{field.Forbidden(field.NewPath("metadata", "namespace"),
			fmt.Sprintf("this entrance submits workspaces to %s only", strings.Join(s.Namespaces, ", ")))}}
	}
	if s.Plan == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, planTimeout)
	defer cancel()
	if _, err := s.Plan(ctx, ws); err != nil {
		if _, permanent := events.AsPermanent(err); permanent {
			return &InvalidError{Namespace: ws.Namespace, Name: ws.Name, Fields: field.ErrorList{fieldError(err)}}
		}
	}
	return nil
}

// fieldError is the planner's refusal as a field error: its own when it carries one, the field
// it names (presets.PathError), else the workspace.
func fieldError(err error) *field.Error {
	var fe *field.Error
	if errors.As(err, &fe) {
		return fe
	}
	var pe *presets.PathError
	if errors.As(err, &pe) {
		return &field.Error{Type: field.ErrorTypeInvalid, Field: pe.Path, BadValue: field.OmitValueType{}, Detail: pe.Err.Error()}
	}
	msg := err.Error()
	if p, ok := events.AsPermanent(err); ok && p.Err != nil {
		msg = p.Err.Error() // without the reason in front
	}
	return &field.Error{Type: field.ErrorTypeInvalid, Field: "spec", BadValue: field.OmitValueType{}, Detail: msg}
}

// Result is a submission's outcome.
type Result struct {
	Workspace *status.Workspace
	// Fresh is false when the same spec was already submitted: nothing new started.
	Fresh bool
	Event cloudevents.Event
}

// InvalidError is a workspace that fails validation; Fields name each problem. It is permanent:
// the same manifest fails the same way.
type InvalidError struct {
	Namespace, Name string
	Fields          field.ErrorList
}

func (e *InvalidError) Error() string {
	return fmt.Sprintf("workspace %s/%s is invalid: %s", e.Namespace, e.Name, kaito.FieldErrors(e.Fields))
}

// Submit validates ws, admits it and publishes workspace.requested, and returns once JetStream has
// stored the event. A namespace-less ws goes to the default namespace. origin, when not empty, is
// the id of the message ws arrived in (a Service Bus MessageId, a blob's version): the event id
// derives from it and the generation, so a redelivered message is stored once, while a retried
// failed workspace (a new generation) is not mistaken for a duplicate. Any error but an
// *InvalidError is transient.
func (s *Submitter) Submit(ctx context.Context, ws *kaito.Workspace, origin string) (*Result, error) {
	if ws.Namespace == "" {
		ws.Namespace = kaito.DefaultNamespace
	}
	if ws.APIVersion == "" {
		ws.APIVersion, ws.Kind = kaito.APIVersion, kaito.Kind
	}
	if err := s.Check(ctx, ws); err != nil {
		return nil, err
	}
	rec, fresh, err := s.Store.Admit(ctx, ws)
	if err != nil {
		return nil, fmt.Errorf("admit workspace %s/%s: %w", ws.Namespace, ws.Name, err)
	}
	ref := events.Ref{Namespace: rec.Namespace, Name: rec.Name, Generation: rec.Generation}
	ws.Generation = ref.Generation
	ev, err := events.New(s.Source, events.WorkspaceRequested, events.WorkspaceRequested, ref, ws, nil)
	if err != nil {
		return nil, err
	}
	if origin != "" {
		sum := sha256.Sum256([]byte(s.Source + "\x00" + origin + "\x00" + strconv.FormatInt(ref.Generation, 10)))
		ev.SetID(hex.EncodeToString(sum[:16]))
	}
	runtime.InjectTrace(ctx, &ev)
	// Published even when unchanged: if an earlier submission was admitted but its publish never
	// happened, this completes it; if it did, JetStream drops the duplicate id.
	if err := s.Publisher.Publish(ctx, ev); err != nil {
		return nil, fmt.Errorf("publish workspace.requested for %s: %w", ref, err)
	}
	return &Result{Workspace: rec, Fresh: fresh, Event: ev}, nil
}
