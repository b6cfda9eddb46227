package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// An endpoint scaled to zero answers late: chat says it is waking the endpoint and for how long,
// and gives up after --wake-timeout naming it; a prompt answer prints nothing of the kind.
func TestChatSaysItIsWakingTheEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name        string
		delay       time.Duration
		timeout     time.Duration
		wantErr     string
		wantWaking  bool
		wantAnswer  bool
		wantElapsed bool
	}{
		{"prompt answer", 0, time.Minute, "", false, true, false},
		{"cold start", 300 * time.Millisecond, time.Minute, "", true, true, true},
		{"too cold", 2 * time.Second, 500 * time.Millisecond, "raise --wake-timeout", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-time.After(tc.delay):
				case <-r.Context().Done():
					return
				}
				_, _ = io.WriteString(w, `{"Result":"hello"}`)
			}))
			defer srv.Close()
			var out, status bytes.Buffer
			c := &chatter{endpoint: srv.URL, out: &out, status: &status, wakeAfter: 100 * time.Millisecond, wakeTimeout: tc.timeout, temperature: -1}
			_, err := c.kaito(context.Background(), "hi")
			if (err != nil) != (tc.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
			if got := strings.Contains(status.String(), "waking "+srv.URL); got != tc.wantWaking {
				t.Errorf("waking notice %v: %q", got, status.String())
			}
			if got := strings.Contains(status.String(), "answered after"); got != tc.wantElapsed {
				t.Errorf("elapsed notice %v: %q", got, status.String())
			}
			if got := strings.Contains(out.String(), "hello"); got != tc.wantAnswer {
				t.Errorf("answer %v: %q", got, out.String())
			}
		})
	}
}
