package api

import "testing"

// An error names each field's problem once: a refusal that is one field's is not repeated.
func TestAPIErrorSaysEachProblemOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  APIError
		want string
	}{
		{"no fields", APIError{Status: 503, Problem: Problem{Error: "NATS unavailable"}}, "NATS unavailable (HTTP 503)"},
		{"the field's message is the error", APIError{Status: 409, Problem: Problem{Error: "generation 3 has no adapter",
			Fields: []FieldError{{Field: "generation", Message: "generation 3 has no adapter"}}}}, "generation 3 has no adapter"},
		{"fields add to the error", APIError{Status: 422, Problem: Problem{Error: "invalid workspace",
			Fields: []FieldError{{Field: "tuning.method", Message: "tuning.method: Unsupported value"}}}}, "invalid workspace\n  tuning.method: Unsupported value"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
