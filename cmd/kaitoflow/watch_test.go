package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/status"
)

// replay is a workspaceSource whose Watch reports the records given, in order: what the API's
// stream would say of one workspace.
type replay struct {
	workspaceSource
	records []status.Workspace
}

func (r replay) Watch(_ context.Context, _ string, fn func(status.Workspace) bool) error {
	for _, w := range r.records {
		if !fn(w) {
			return nil
		}
	}
	return nil
}

// watch prints the header once (even when the first report has no events yet), ends on every
// terminal phase (a deletion included, where it used to wait forever), and says how long this
// generation took, not the workspace since its first generation.
func TestWatch(t *testing.T) {
	created := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	gen2 := created.Add(time.Hour)
	ev := func(id string, at time.Time) status.EventRecord {
		return status.EventRecord{ID: id, Type: "kaitoflow." + id, Source: "kaitoflow/test", Time: at}
	}
	base := status.Workspace{Namespace: "default", Name: "ws", Generation: 2, Created: created}
	pending, running, ready, deleted := base, base, base, base
	pending.Phase = status.Pending
	running.Phase, running.Events = status.Tuning, []status.EventRecord{ev("workspace.requested", gen2)}
	ready.Phase, ready.Updated, ready.Endpoint = status.Ready, gen2.Add(8600*time.Millisecond), "http://ws.example"
	ready.Events = slices.Concat(running.Events, []status.EventRecord{ev("inference.ready", gen2.Add(8600*time.Millisecond))})
	deleted.Phase, deleted.Events = status.Deleted, running.Events
	for _, tc := range []struct {
		name    string
		records []status.Workspace
		want    []string
		wantErr bool
	}{
		{"ready", []status.Workspace{pending, running, ready}, []string{"Ready in 8.6s: http://ws.example"}, false},
		{"deleted while watched", []status.Workspace{pending, running, deleted, ready}, []string{"workspace ws deleted"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			g := &globals{out: &out, err: &out}
			err := g.watch(context.Background(), replay{records: tc.records}, "ws")
			if (err != nil) != tc.wantErr {
				t.Fatalf("watch: %v", err)
			}
			if n := strings.Count(out.String(), "workspace default/ws generation 2"); n != 1 {
				t.Errorf("header printed %d times:\n%s", n, out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("want %q in:\n%s", w, out.String())
				}
			}
		})
	}
}
