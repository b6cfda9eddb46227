// Package kubeerr is the one place that decides whether a Kubernetes API error is worth a retry.
// Every driver that talks to the API server (tune's Jobs, serve's Knative Services, provision's
// NodeClaims) classifies through Classify, so the same refusal fails the same way everywhere and
// carries a reason a dashboard can group by.
package kubeerr

import (
	"errors"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/kaitoflow/kaitoflow/events"
)

// Failure reasons for refusals by the API server.
const (
	// ReasonInvalid: the object fails validation or an admission rule (PodSecurity, a webhook,
	// Knative's feature flags).
	ReasonInvalid = "KubernetesInvalid"
	// ReasonForbidden: RBAC refused the request; the function's ServiceAccount lacks a verb.
	ReasonForbidden = "KubernetesForbidden"
	// ReasonBadRequest: the request itself is malformed (an unknown field in strict mode).
	ReasonBadRequest = "KubernetesBadRequest"
	// ReasonAPINotInstalled: the resource type does not exist: Knative Serving or Karpenter is not
	// installed in the cluster.
	ReasonAPINotInstalled = "KubernetesAPINotInstalled"
)

// Classify returns err unchanged when a retry may succeed (conflicts, timeouts, throttling,
// server errors, an object that is not there yet, the network, and a 401, which a rotated token
// or an expired exec credential causes for a moment) and an events.PermanentError
// with a precise reason when it cannot. Wrap err with what was being done before classifying:
// the permanent error keeps the whole chain.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := events.AsPermanent(err); ok {
		return err
	}
	if meta.IsNoMatchError(err) {
		return events.Permanent(ReasonAPINotInstalled, err)
	}
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return err
	}
	s := status.Status()
	switch {
	case apierrors.IsInvalid(err):
		return events.Permanent(ReasonInvalid, err)
	case apierrors.IsForbidden(err):
		return events.Permanent(ReasonForbidden, err)
	case apierrors.IsBadRequest(err), apierrors.IsMethodNotSupported(err), apierrors.IsRequestEntityTooLargeError(err):
		return events.Permanent(ReasonBadRequest, err)
	case apierrors.IsNotFound(err) && (s.Details == nil || s.Details.Name == ""):
		// A 404 that names no object is the API server saying the resource type does not exist.
		return events.Permanent(ReasonAPINotInstalled, err)
	case s.Code == http.StatusUnprocessableEntity:
		return events.Permanent(ReasonInvalid, err)
	}
	return err
}

// WorkspaceSecret reads a Secret a workspace names (what for: the field that names it) through
// get, and says what to do when the namespace has not granted kaitoflow its Secrets: the
// functions read them only where a RoleBinding to the kaitoflow-workspace-secrets ClusterRole
// allows, so a workspace cannot name another namespace's.
func WorkspaceSecret(err error, field, namespace, name string) error {
	if apierrors.IsForbidden(err) {
		return events.Permanentf(ReasonForbidden,
			"%s: kaitoflow may not read Secret %s/%s: namespace %s has not granted its Secrets (a RoleBinding to ClusterRole "+
				"kaitoflow-workspace-secrets for kaitoflow's functions; see docs/install.md)",
			field, namespace, name, namespace)
	}
	return err
}
