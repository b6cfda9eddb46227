package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// changing is a workspaceSource whose List answers the first of lists and whose WatchList then
// reports the records of every list in turn, as the API's stream does (the current ones first).
type changing struct {
	workspaceSource
	lists [][]status.Workspace
}

func (c *changing) List(context.Context, bool) ([]status.Workspace, error) { return c.lists[0], nil }

func (c *changing) WatchList(_ context.Context, _ bool, fn func(status.Workspace) bool) error {
	for _, l := range c.lists {
		for _, w := range l {
			if !fn(w) {
				return nil
			}
		}
	}
	return nil
}

// get -w prints the table, then a row each time a workspace's row changes (a new one included),
// never one whose row is the same but for its AGE; the header comes once, with the first row.
func TestGetWatch(t *testing.T) {
	created := time.Now().Add(-time.Hour)
	ws := func(name string, phase status.Phase, labels map[string]string) status.Workspace {
		return status.Workspace{Namespace: "default", Name: name, Phase: phase, Created: created, InstanceType: "Standard_NC6s_v3",
			Manifest: &kaito.Workspace{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels}}}
	}
	nlp := map[string]string{"team": "nlp"}
	for _, tc := range []struct {
		name, selector string
		lists          [][]status.Workspace
		want           []string // the first field of each line
	}{
		{name: "changes and a new workspace", lists: [][]status.Workspace{
			{ws("a", status.Pending, nlp)},
			{ws("a", status.Pending, nlp)},
			{ws("a", status.Ready, nlp), ws("b", status.Pending, nil)},
			{ws("a", status.Ready, nlp), ws("b", status.Pending, nil)},
		}, want: []string{"NAME", "a", "a", "b"}},
		{name: "nothing at first", lists: [][]status.Workspace{
			nil,
			{ws("a", status.Pending, nlp)},
		}, want: []string{"NAME", "a"}},
		{name: "a selector", selector: "team=nlp", lists: [][]status.Workspace{
			{ws("a", status.Pending, nlp), ws("b", status.Pending, nil)},
			{ws("a", status.Ready, nlp), ws("b", status.Ready, nil)},
		}, want: []string{"NAME", "a", "a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out, errOut bytes.Buffer
			g := &globals{out: &out, err: &errOut}
			src := &changing{lists: tc.lists}
			if err := g.getWorkspaces(ctx, src, nil, getOptions{watch: true, selector: tc.selector}); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				got = append(got, strings.Fields(l)[0])
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("lines %v, want %v:\n%s", got, tc.want, out.String())
			}
		})
	}
}

// get -w NAME follows the one workspace's stream and prints its row when it changes.
func TestGetWatchOne(t *testing.T) {
	w := status.Workspace{Namespace: "default", Name: "a", Phase: status.Pending, Created: time.Now()}
	ready := w
	ready.Phase = status.Ready
	src := replayOne{replay: replay{records: []status.Workspace{w, w, ready}}, first: w}
	var out bytes.Buffer
	g := &globals{out: &out, err: &out}
	if err := g.getWorkspaces(context.Background(), src, []string{"a"}, getOptions{watch: true, output: "custom-columns=NAME:.metadata.name,PHASE:.status.phase"}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(strings.Fields(out.String()), " "); got != "NAME PHASE a Pending a Ready" {
		t.Errorf("got %q", got)
	}
}

// replayOne is a replay that answers Get with first.
type replayOne struct {
	replay
	first status.Workspace
}

func (r replayOne) Get(context.Context, string) (*status.Workspace, error) { return &r.first, nil }
