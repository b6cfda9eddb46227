// Package tunepart builds the tune function and its trainers: the sim, the local Python trainer
// and Kubernetes Jobs with the watch that follows them.
package tunepart

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/functions/tune/jobs"
	tunelocal "github.com/kaitoflow/kaitoflow/functions/tune/local"
	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// Part builds tune: the re-planner and the trainer (sim, local or Kubernetes Jobs).
func Part() assembly.Part {
	p := assembly.StepPart(tune.Name, tune.Types, handler)
	p.JetStream = true
	return p
}

func handler(ctx context.Context, b *assembly.Builder) (runtime.Handler, error) {
	d := b.Config.Drivers
	planner, err := b.Planner(assembly.IdentityTune)
	if err != nil {
		return nil, err
	}
	opts := tune.Options{Replanner: planner, MaxAttempts: b.Config.TuningAttempts, Log: b.Log}
	if b.Config.JetStream != nil {
		// A run scores the adapter serving beside its own: the status records say which it is.
		store, err := b.Store(ctx)
		if err != nil {
			return nil, err
		}
		opts.Serving = store
	}
	switch d.Trainer {
	case "", "sim":
		sim := &tunesim.Trainer{Dir: b.Config.Sim.Dir, Delay: b.Config.Sim.Delay, Publisher: b.Config.Publisher, Log: b.Log, Policy: b.Config.Policy,
			Parallel: b.Config.Sim.Parallel}
		if b.Config.Registry != "" {
			sim.Resolve = func(image string) (name.Reference, error) { return adapter.Rewrite(b.Config.Registry, image) }
		}
		b.Out.Logs = sim.Logs
		return tune.New(sim, opts), nil
	case "local":
		if d.Local.Interpreter == "" || d.Local.TrainerDir == "" {
			return nil, errors.New("trainer local: the Python trainer's interpreter (--python, an environment from hack/ml-env.sh) and its " +
				"directory (--trainer-dir, presets/trainer) are required")
		}
		local := &tunelocal.Trainer{Dir: filepath.Join(b.Config.Sim.Dir, "local"), Publisher: b.Config.Publisher, Log: b.Log, Policy: b.Config.Policy,
			Parallel: 1, Process: d.Local.Process}
		if b.Config.Registry != "" {
			local.Resolve = func(image string) (name.Reference, error) { return adapter.Rewrite(b.Config.Registry, image) }
		}
		b.Out.Logs = local.Logs
		return tune.New(local, opts), nil
	case "job":
		c, err := b.Kube(assembly.IdentityTune)
		if err != nil {
			return nil, fmt.Errorf("trainer job: %w", err)
		}
		if d.TrainerImage == "" || d.WrapperImage == "" {
			return nil, errors.New("trainer job: the trainer image (--trainer-image, built from presets/trainer) and job-run's image " +
				"(--wrapper-image) are required; hack/release.sh builds both")
		}
		o := jobs.DefaultOptions()
		o.TrainerImage, o.WrapperImage, o.WeightsCache, o.AllowHosts = d.TrainerImage, d.WrapperImage, d.WeightsCache, b.Config.Policy.Allow
		w, err := b.Kube(assembly.IdentitySources)
		if err != nil {
			return nil, err
		}
		b.Watch("jobs", func(ctx context.Context, pub events.Publisher) error { return jobs.Watch(ctx, w, pub, b.Log) })
		jt := &jobs.Trainer{Client: c, Options: o, Log: b.Log}
		b.Out.Logs = jt.Logs
		return tune.New(jt, opts), nil
	}
	return nil, fmt.Errorf("trainer %q: want sim, local or job", d.Trainer)
}
