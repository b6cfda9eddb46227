package adapter

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// RegistryError is a registry call's error as kaitoflow reports it: in workspace.failed, the
// status, logs and replies anyone submitting a workspace can read. go-containerregistry and
// net/http put what the other side answered into their messages (a registry's error body; the
// first bytes of a service that does not speak HTTP — a NATS server's INFO banner once came back
// this way), so a workspace naming an internal address would read that service's answer. This
// says what happened without the answer; the original stays reachable with errors.As.
type RegistryError struct{ Err error }

func (e *RegistryError) Unwrap() error { return e.Err }

func (e *RegistryError) Error() string {
	var te *transport.Error
	if errors.As(e.Err, &te) {
		codes := make([]string, 0, len(te.Errors))
		for _, d := range te.Errors {
			codes = append(codes, string(d.Code))
		}
		msg := fmt.Sprintf("the registry answered HTTP %d %s", te.StatusCode, http.StatusText(te.StatusCode))
		if len(codes) > 0 {
			msg += " (" + strings.Join(codes, ", ") + ")"
		}
		return msg
	}
	s := e.Err.Error()
	switch {
	case strings.Contains(s, "malformed HTTP"), strings.Contains(s, "server gave HTTP response to HTTPS client"),
		strings.Contains(s, "does not look like a TLS handshake"), strings.Contains(s, "readLoopPeekFailLocked"):
		// What net/http says, depending on timing, of a service that speaks first or not HTTP.
		return "the registry's address does not answer as an HTTPS registry"
	case strings.Contains(s, "connection refused"):
		return "the registry refused the connection"
	case strings.Contains(s, "no such host"):
		return "the registry's host name does not resolve"
	case strings.Contains(s, "deadline exceeded"), strings.Contains(s, "timeout"):
		return "the registry did not answer in time"
	}
	// Anything else is kaitoflow's own wording (a digest mismatch, a missing data/ directory):
	// short, and free of what the other side sent.
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// registryError wraps err (nil stays nil).
func registryError(err error) error {
	if err == nil {
		return nil
	}
	return &RegistryError{Err: err}
}
