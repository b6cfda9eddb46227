package knative

import (
	"context"
	"slices"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/presets"
)

// withInferenceConfig applies the workspace's inference.config to the runtime's arguments.
func (k *Deployer) withInferenceConfig(ctx context.Context, ws *kaito.Workspace, rt Runtime) (Runtime, error) {
	in := ws.Inference
	if in == nil || in.Config == "" || len(rt.Args) == 0 {
		return rt, nil
	}
	c, err := presets.ReadInferenceConfig(ctx, k.Configs, ws)
	if err != nil {
		return rt, err
	}
	rt.Args = presets.MergeArgs(slices.Clone(rt.Args), c.Args)
	return rt, nil
}
