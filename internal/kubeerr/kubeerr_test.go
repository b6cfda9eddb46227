package kubeerr

import (
	"context"
	"errors"
	"fmt"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kaitoflow/kaitoflow/events"
)

func TestClassify(t *testing.T) {
	jobs := schema.GroupResource{Group: "batch", Resource: "jobs"}
	for _, tc := range []struct {
		name   string
		err    error
		reason string // "" means retryable
	}{
		{"invalid", apierrors.NewInvalid(schema.GroupKind{Group: "batch", Kind: "Job"}, "x", field.ErrorList{field.Required(field.NewPath("spec"), "")}), ReasonInvalid},
		{"forbidden, wrapped", fmt.Errorf("create Job a/b: %w", apierrors.NewForbidden(jobs, "x", errors.New("RBAC"))), ReasonForbidden},
		{"unauthorized: a token being rotated", apierrors.NewUnauthorized("token expired"), ""},
		{"bad request", apierrors.NewBadRequest("strict decoding error: unknown field"), ReasonBadRequest},
		{"too large", apierrors.NewRequestEntityTooLargeError("limit is 3145728"), ReasonBadRequest},
		{"CRD missing: 404 without a name", apierrors.NewNotFound(schema.GroupResource{Group: "serving.knative.dev", Resource: "services"}, ""), ReasonAPINotInstalled},
		{"CRD missing: no REST mapping", &meta.NoKindMatchError{GroupKind: schema.GroupKind{Group: "karpenter.sh", Kind: "NodeClaim"}}, ReasonAPINotInstalled},
		{"object not found yet", apierrors.NewNotFound(jobs, "x"), ""},
		{"conflict", apierrors.NewConflict(jobs, "x", errors.New("modified")), ""},
		{"already exists", apierrors.NewAlreadyExists(jobs, "x"), ""},
		{"timeout", apierrors.NewTimeoutError("etcd", 2), ""},
		{"throttled", apierrors.NewTooManyRequests("slow down", 1), ""},
		{"server error", apierrors.NewInternalError(errors.New("etcd")), ""},
		{"unavailable", apierrors.NewServiceUnavailable("starting"), ""},
		{"network", context.DeadlineExceeded, ""},
		{"already permanent", events.Permanent("Mine", errors.New("x")), "Mine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Classify(tc.err)
			p, ok := events.AsPermanent(got)
			switch {
			case tc.reason == "" && ok:
				t.Fatalf("Classify made a retryable error permanent: %v", got)
			case tc.reason != "" && !ok:
				t.Fatalf("Classify left a refusal retryable: %v", got)
			case ok && p.Reason != tc.reason:
				t.Fatalf("reason %q, want %q", p.Reason, tc.reason)
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("the cause is lost: %v", got)
			}
		})
	}
	if Classify(nil) != nil {
		t.Error("Classify(nil) != nil")
	}
}
