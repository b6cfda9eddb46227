package sim

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// A run's trainer output is kept as a pod's log: followed while the run goes (its progress shows
// before it ends), ended with the run, read again whole afterwards; a generation that never ran
// has none.
func TestLogsFollowARun(t *testing.T) {
	tr := &Trainer{Dir: t.TempDir(), Delay: 2 * time.Second, Log: slog.New(slog.DiscardHandler)}
	ref := events.Ref{Namespace: "default", Name: "ws", Generation: 1}
	job := tune.Job{Ref: ref, Name: "ws-1"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := tr.Logs(ctx, ref, 0, false, &bytes.Buffer{}); !errors.Is(err, tune.ErrNoLogs) {
		t.Fatalf("logs before the run: %v, want ErrNoLogs", err)
	}
	if err := tr.Start(ctx, job); err != nil {
		t.Fatal(err)
	}
	var followed testenv.SyncBuffer
	done := make(chan error, 1)
	// The log file appears when job-run starts the run.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		err := tr.Logs(ctx, ref, 0, false, &bytes.Buffer{})
		if err == nil {
			break
		}
		if !errors.Is(err, tune.ErrNoLogs) || time.Now().After(deadline) {
			t.Fatalf("logs of a started run: %v", err)
		}
	}
	go func() { done <- tr.Logs(ctx, ref, 0, true, &followed) }()
	sawProgress := false
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			st, err := tr.Status(ctx, ref)
			if err != nil || st == nil || st.Phase != tune.Succeeded {
				t.Fatalf("the follow ended before the run did: %+v %v", st, err)
			}
			if !sawProgress || !strings.Contains(followed.String(), "sim trainer: wrote a simulated adapter") {
				t.Fatalf("followed (progress seen during the run: %v):\n%s", sawProgress, followed.String())
			}
			var whole bytes.Buffer
			if err := tr.Logs(ctx, ref, 1, false, &whole); err != nil || whole.String() != followed.String() {
				t.Fatalf("read again: %v\n%q\nfollowed:\n%q", err, whole.String(), followed.String())
			}
			return
		case <-time.After(20 * time.Millisecond):
			if st, _ := tr.Status(ctx, ref); st != nil && st.Phase == tune.Running && strings.Contains(followed.String(), `"step"`) {
				sawProgress = true
			}
		case <-ctx.Done():
			t.Fatal("the follow did not end with the run")
		}
	}
}
