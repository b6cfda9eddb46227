package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/events"
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

// On a terminal a run's progress is one line redrawn in place, and colours mark what failed, waits
// or is ready; piped, every report is a line of its own and there is no escape sequence at all.
func TestTimelineOnATerminal(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	ev := func(id, typ string, s int) status.EventRecord {
		return status.EventRecord{ID: id, Type: typ, Source: "kaitoflow/test", Time: at.Add(time.Duration(s) * time.Second), Note: id}
	}
	w := status.Workspace{Namespace: "default", Name: "ws", Generation: 1}
	// The record folds progress reports: each report replaces the one before.
	records := [][]status.EventRecord{
		{ev("req", events.WorkspaceRequested, 0), ev("p1", events.TuningProgress, 1)},
		{ev("req", events.WorkspaceRequested, 0), ev("p2", events.TuningProgress, 2)},
		{ev("req", events.WorkspaceRequested, 0), ev("p3", events.TuningProgress, 3), ev("retry", events.TuningRetrying, 4)},
		{ev("req", events.WorkspaceRequested, 0), ev("p4", events.TuningProgress, 5), ev("ready", events.InferenceReady, 6)},
	}
	for _, tc := range []struct {
		name        string
		tty, colour bool
		redraws     int
		coloured    []string
	}{
		{name: "piped"},
		{name: "terminal, NO_COLOR", tty: true, redraws: 2},
		{name: "terminal", tty: true, colour: true, redraws: 2, coloured: []string{
			sgrYellow + events.TuningRetrying, sgrGreen + events.InferenceReady, sgrBold + "workspace default/ws generation 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			tl := &timeline{out: &out, printed: map[string]bool{}, tty: tc.tty, colour: tc.colour}
			for _, evs := range records {
				w.Events = evs
				tl.print(w)
			}
			got := out.String()
			// p2 redraws p1 and p3 redraws p2; p4 follows the retry on a line of its own.
			if n := strings.Count(got, redrawLine); n != tc.redraws {
				t.Errorf("%d redraws, want %d:\n%q", n, tc.redraws, got)
			}
			for _, id := range []string{"p1", "p2", "p3", "p4", "retry", "ready"} {
				if !strings.Contains(got, " "+id+"\n") {
					t.Errorf("no line for %s:\n%q", id, got)
				}
			}
			for _, c := range tc.coloured {
				if !strings.Contains(got, c) {
					t.Errorf("%q is not coloured:\n%q", c, got)
				}
			}
			if !tc.colour && strings.Contains(got, "\x1b[3") {
				t.Errorf("colour without a colour terminal:\n%q", got)
			}
		})
	}
}

// A progress line wider than the terminal is cut to one row: the redraw moves up one row only.
func TestTimelineCutsProgressToTheTerminal(t *testing.T) {
	var out bytes.Buffer
	tl := &timeline{out: &out, printed: map[string]bool{}, tty: true, width: 40}
	long := strings.Repeat("=", 100)
	tl.print(status.Workspace{Name: "ws", Events: []status.EventRecord{{ID: "p", Type: events.TuningProgress, Note: long}}})
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if last := lines[len(lines)-1]; len([]rune(last)) != 39 {
		t.Errorf("a progress line of %d runes on a 40-column terminal: %q", len([]rune(last)), last)
	}
}

func TestWantsColour(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want bool
	}{
		{map[string]string{"TERM": "xterm-256color"}, true},
		{map[string]string{"TERM": "xterm-256color", "NO_COLOR": "1"}, false},
		{map[string]string{"TERM": "dumb"}, false},
		{map[string]string{}, false},
	} {
		if got := wantsColour(func(k string) string { return tc.env[k] }); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.env, got, tc.want)
		}
	}
}
