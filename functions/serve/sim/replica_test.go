package sim

import (
	"net/url"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/functions/serve"
)

// A simulated replica's model is loaded when its load delay has passed, not before: the adapter
// reconciler is told at that moment, and one told early would wait for its next poll.
func TestSimulatedModelLoadsAfterItsDelay(t *testing.T) {
	d := &Deployer{Delay: time.Minute}
	u, _ := url.Parse("http://127.0.0.1:1/replicas/r0/runtime")
	ws := kaito.Workspace{Inference: &kaito.InferenceSpec{Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-4k-instruct"}}}}
	rs, err := d.modelServer(serve.Deployment{Workspace: ws}, "r0", u)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.stop()
	select {
	case <-rs.loaded:
		t.Fatal("the simulated model counts as loaded at once, a minute before its load delay")
	default:
	}
	fast := &Deployer{}
	rs, err = fast.modelServer(serve.Deployment{Workspace: ws}, "r1", u)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-rs.loaded:
	case <-time.After(10 * time.Second):
		t.Fatal("a model with no load delay never counted as loaded")
	}
}
