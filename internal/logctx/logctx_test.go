package logctx

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// Durations reach JSON logs as seconds under a key that says so, not as nanoseconds.
func TestSeconds(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&b, &slog.HandlerOptions{ReplaceAttr: Seconds}))
	log.Info("capacity released", "held", 7*time.Second, "wait_seconds", 1500*time.Millisecond, "count", 3)
	for _, want := range []string{`"held_seconds":7`, `"wait_seconds":1.5`, `"count":3`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("want %s in %s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "7000000000") {
		t.Errorf("nanoseconds logged: %s", b.String())
	}
}
