package runtime

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
)

// A function's routes: the tick to its route, a workspace event to its type's with the workspace
// and the payload decoded, what names no workspace or does not decode is a permanent BadEvent,
// and a type without a route is not the function's business.
func TestRoutes(t *testing.T) {
	ctx := context.Background()
	ref := events.Ref{Namespace: "team-a", Name: "ws", Generation: 3}
	named, err := events.New("kaitoflow/test", events.NodeReady, events.NodeReady, ref, events.NodeReadyData{Nodes: []string{"n0"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	nameless := named.Clone()
	nameless.SetSubject("")
	garbled := named.Clone()
	_ = garbled.SetData(cloudevents.ApplicationJSON, []byte(`{"nodes": 7}`))
	unrouted, err := events.New("kaitoflow/test", events.ImagePushed, events.ImagePushed, ref, events.ImagePushedData{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tick := events.TickAt(time.Unix(60, 0), time.Minute)

	var ticked bool
	var got events.Ref
	var nodes []string
	routes := func(withTick bool) *Routes {
		r := &Routes{}
		if withTick {
			r.OnTick(func(context.Context, cloudevents.Event) ([]cloudevents.Event, error) { ticked = true; return nil, nil })
		}
		On(r, events.NodeReady, func(_ context.Context, rf events.Ref, _ cloudevents.Event, d events.NodeReadyData) ([]cloudevents.Event, error) {
			got, nodes = rf, d.Nodes
			return nil, nil
		})
		return r
	}
	for _, tc := range []struct {
		name       string
		ev         cloudevents.Event
		tick       bool
		wantTicked bool
		wantRef    events.Ref
		wantReason string
	}{
		{name: "tick to tick", ev: tick, tick: true, wantTicked: true},
		{name: "tick without a ticker is nothing", ev: tick},
		{name: "a workspace event with its ref and payload", ev: named, tick: true, wantRef: ref},
		{name: "no subject: permanent", ev: nameless, tick: true, wantReason: events.ReasonBadEvent},
		{name: "a payload that does not decode: permanent", ev: garbled, wantReason: events.ReasonBadEvent},
		{name: "a type without a route is nothing", ev: unrouted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ticked, got, nodes = false, events.Ref{}, nil
			_, err := routes(tc.tick).Handle(ctx, tc.ev)
			p, permanent := events.AsPermanent(err)
			switch {
			case tc.wantReason != "" && (!permanent || p.Reason != tc.wantReason):
				t.Fatalf("err %v, want reason %s", err, tc.wantReason)
			case tc.wantReason == "" && err != nil:
				t.Fatal(err)
			}
			if ticked != tc.wantTicked || got != tc.wantRef || (got != (events.Ref{}) && len(nodes) != 1) {
				t.Fatalf("ticked %v ref %v nodes %v, want %v %v", ticked, got, nodes, tc.wantTicked, tc.wantRef)
			}
		})
	}
	if types := routes(true).Types(); len(types) != 2 || types[0] != events.NodeReady || types[1] != events.Tick {
		t.Errorf("types %v", types)
	}
	defer func() {
		if recover() == nil {
			t.Error("a type routed twice was taken")
		}
	}()
	routes(false).Add(events.NodeReady, nil)
}

func TestEmit(t *testing.T) {
	e := cloudevents.NewEvent()
	e.SetID("x")
	if out, err := Emit(e, nil); err != nil || len(out) != 1 || out[0].ID() != "x" {
		t.Fatalf("%v %v", out, err)
	}
	boom := errors.New("boom")
	if out, err := Emit(e, boom); !errors.Is(err, boom) || out != nil {
		t.Fatalf("%v %v", out, err)
	}
}

// A sweep observes every listed workspace, skips one that cannot be observed now (the next tick
// retries it) and fails only when nothing can be listed.
func TestSweep(t *testing.T) {
	ctx := context.Background()
	tick := events.TickAt(time.Unix(60, 0), time.Minute)
	refs := []events.Ref{{Namespace: "a", Name: "ok", Generation: 1}, {Namespace: "a", Name: "broken", Generation: 1}, {Namespace: "b", Name: "ok", Generation: 2}}
	observe := func(_ context.Context, ref events.Ref, cause *cloudevents.Event) ([]cloudevents.Event, error) {
		if ref.Name == "broken" {
			return nil, errors.New("driver unavailable")
		}
		if cause == nil || cause.ID() != tick.ID() {
			t.Errorf("%s observed without the tick as its cause", ref)
		}
		return []cloudevents.Event{events.Must(events.New("kaitoflow/test", events.ServiceChanged, "observed", ref, events.ServiceChangedData{}, cause))}, nil
	}
	for _, tc := range []struct {
		name    string
		list    func(context.Context) ([]events.Ref, error)
		want    []string
		wantErr bool
	}{
		{"every workspace but the broken one", func(context.Context) ([]events.Ref, error) { return refs, nil }, []string{"a/ok", "b/ok"}, false},
		{"nothing listed", func(context.Context) ([]events.Ref, error) { return nil, nil }, nil, false},
		{"the list fails", func(context.Context) ([]events.Ref, error) { return nil, errors.New("no API server") }, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Sweep(ctx, tick, slog.New(slog.DiscardHandler), "thing", tc.list, observe)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			var got []string
			for _, e := range out {
				got = append(got, e.Subject())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("emitted for %v, want %v", got, tc.want)
			}
		})
	}
}
