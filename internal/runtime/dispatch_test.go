package runtime

import (
	"context"
	"errors"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kaitoflow/kaitoflow/events"
)

func TestDispatch(t *testing.T) {
	ctx := context.Background()
	ref := events.Ref{Namespace: "team-a", Name: "ws", Generation: 3}
	named, err := events.New("kaitoflow/test", events.NodeReady, events.NodeReady, ref, events.NodeReadyData{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	nameless := named.Clone()
	nameless.SetSubject("")
	tick := events.TickAt(time.Unix(60, 0), time.Minute)

	var ticked bool
	var got events.Ref
	onTick := func(context.Context, cloudevents.Event) ([]cloudevents.Event, error) { ticked = true; return nil, nil }
	handle := func(_ context.Context, r events.Ref, _ cloudevents.Event) ([]cloudevents.Event, error) {
		got = r
		return nil, nil
	}
	for _, tc := range []struct {
		name       string
		ev         cloudevents.Event
		tick       func(context.Context, cloudevents.Event) ([]cloudevents.Event, error)
		wantTicked bool
		wantRef    events.Ref
		wantReason string
	}{
		{name: "tick to tick", ev: tick, tick: onTick, wantTicked: true},
		{name: "tick without a ticker is nothing", ev: tick},
		{name: "a workspace event with its ref", ev: named, tick: onTick, wantRef: ref},
		{name: "no subject: permanent", ev: nameless, tick: onTick, wantReason: events.ReasonBadEvent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ticked, got = false, events.Ref{}
			_, err := Dispatch(ctx, tc.ev, tc.tick, handle)
			p, permanent := events.AsPermanent(err)
			switch {
			case tc.wantReason != "" && (!permanent || p.Reason != tc.wantReason):
				t.Fatalf("err %v, want reason %s", err, tc.wantReason)
			case tc.wantReason == "" && err != nil:
				t.Fatal(err)
			}
			if ticked != tc.wantTicked || got != tc.wantRef {
				t.Fatalf("ticked %v ref %v, want %v %v", ticked, got, tc.wantTicked, tc.wantRef)
			}
		})
	}
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
