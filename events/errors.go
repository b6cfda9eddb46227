package events

import (
	"errors"
	"fmt"
)

// Failure reasons carried by workspace.failed and dead-letter headers. They are stable strings so
// that alerts and dashboards can match on them.
const (
	ReasonBadEvent         = "BadEvent"
	ReasonInvalidWorkspace = "InvalidWorkspace"
	ReasonUnknownType      = "UnknownEventType"
	ReasonMaxDeliveries    = "MaxDeliveriesExceeded"
	// ReasonInsufficientGPUMemory: the request cannot fit the GPUs it names (or any).
	ReasonInsufficientGPUMemory = "InsufficientGPUMemory"
	// ReasonGPUOutOfMemory: a tuning run ran out of GPU memory (the trainer's exit code 4), and
	// no smaller plan was left to retry with.
	ReasonGPUOutOfMemory = "GPUOutOfMemory"
	// ReasonInsufficientQuota: the region's vCPU quota has no room for the capacity the
	// workspace needs.
	ReasonInsufficientQuota = "InsufficientQuota"
	// ReasonForeignObject: an object kaitoflow would create exists and is not the workspace's
	// (no kaitoflow.io/workspace label); kaitoflow never touches it.
	ReasonForeignObject = "ForeignObject"
	// ReasonNotSupported: the workspace asks for something kaitoflow does not do (yet); the
	// message names the field.
	ReasonNotSupported = "NotSupported"
)

// WorkspaceFault reports whether reason says the workspace itself cannot run as asked (invalid,
// too big for its GPUs or its quota, unsupported, or colliding with another's object): the
// user's to fix, as opposed to an event or a system kaitoflow could not handle. Metrics and alerts
// tell the two apart.
func WorkspaceFault(reason string) bool {
	switch reason {
	case ReasonInvalidWorkspace, ReasonInsufficientGPUMemory, ReasonGPUOutOfMemory, ReasonInsufficientQuota, ReasonForeignObject, ReasonNotSupported:
		return true
	}
	return false
}

// PermanentError marks a failure that retrying cannot fix. The runtime turns it into a
// workspace.failed event and a dead letter; every other error is retried with backoff.
type PermanentError struct {
	Reason string
	Err    error
}

func (e *PermanentError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err as a permanent failure with a machine-readable reason.
func Permanent(reason string, err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Reason: reason, Err: err}
}

// Permanentf is Permanent with a formatted message.
func Permanentf(reason, format string, args ...any) error {
	return Permanent(reason, fmt.Errorf(format, args...))
}

// AsPermanent reports whether err (or anything it wraps) is permanent, and returns it.
func AsPermanent(err error) (*PermanentError, bool) {
	var p *PermanentError
	ok := errors.As(err, &p)
	return p, ok
}
