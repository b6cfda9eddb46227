// Package servepart builds the serve function and its deployers: the sim, the local one (vLLM
// processes behind chat-proxy) and Knative Services.
package servepart

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/serve/knative"
	servesim "github.com/kaitoflow/kaitoflow/functions/serve/sim"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Part builds serve: the deployer (sim, local vLLM processes, or Knative Services with the watch
// that follows them).
func Part() assembly.Part { return assembly.StepPart(serve.Name, serve.Types, handler) }

func handler(_ context.Context, b *assembly.Builder) (runtime.Handler, error) {
	switch d := b.Config.Drivers; d.Deployer {
	case "", "sim", "local":
		return simDeployer(b)
	case "knative":
		return knativeDeployer(b)
	default:
		return nil, fmt.Errorf("deployer %q: want sim, local or knative", d.Deployer)
	}
}

// simDeployer is the sim deployer, or the local one: the sim's replicas with vLLM processes.
func simDeployer(b *assembly.Builder) (runtime.Handler, error) {
	d := b.Config.Drivers
	// The local deployer is the sim's replicas, revisions and scale to zero with a real vLLM
	// process per replica in place of the simulated runtime.
	simd := &servesim.Deployer{BaseURL: b.Config.Sim.BaseURL + assembly.SimInferencePath, Delay: b.Config.Sim.Delay, Log: b.Log}
	if b.Config.Sim.Dir != "" {
		simd.Dir = filepath.Join(b.Config.Sim.Dir, "serving")
	}
	if b.Config.Sim.Token != "" {
		simd.Transport = bearer{token: b.Config.Sim.Token, next: http.DefaultTransport}
	}
	if d.Deployer == "local" {
		if d.VLLM.Python == "" {
			return nil, errors.New("deployer local: a Python with vLLM (--vllm-python; hack/ml-env.sh vllm makes one) is required")
		}
		catalog, err := presets.Default()
		if err != nil {
			return nil, err
		}
		models := &knative.Deployer{Catalog: catalog}
		v := d.VLLM
		v.Log, v.Dir = b.Log, filepath.Join(b.Config.Sim.Dir, "vllm")
		v.Runtime = func(d serve.Deployment) ([]string, error) {
			rt, err := models.Runtime(d)
			return rt.Args, err
		}
		simd.Server = &v
		// vLLM's engine processes outlive a server killed with this process: stop them all.
		b.Out.Close = simd.Close
	}
	b.Out.SimInference = http.StripPrefix(assembly.SimInferencePath, simd.Handler())
	return serve.New(simd, b.Log), nil
}

// knativeDeployer is the Knative deployer and the watch that follows its Services.
func knativeDeployer(b *assembly.Builder) (runtime.Handler, error) {
	d := b.Config.Drivers
	kube, err := b.Kube(assembly.IdentityServe)
	if err != nil {
		return nil, fmt.Errorf("deployer knative: %w", err)
	}
	dyn, err := b.Dynamic(assembly.IdentityServe)
	if err != nil {
		return nil, fmt.Errorf("deployer knative: %w", err)
	}
	catalog, err := presets.Default()
	if err != nil {
		return nil, err
	}
	configs, err := b.ConfigMaps(assembly.IdentityServe)
	if err != nil {
		return nil, err
	}
	o := knative.DefaultOptions()
	if d.ProxyImage == "" {
		return nil, errors.New("deployer knative: chat-proxy's image (--proxy-image) is required; hack/release.sh builds it")
	}
	if d.RuntimeImage != "" {
		o.RuntimeImage = d.RuntimeImage
	}
	o.ProxyImage, o.WeightsCache, o.WeightsImage, o.AllowHosts = d.ProxyImage, d.WeightsCache, d.TrainerImage, b.Config.Policy.Allow
	if d.InferencePool != "" {
		if o.InferencePool, err = knative.ParseInferencePool(d.InferencePool); err != nil {
			return nil, fmt.Errorf("deployer knative: --inference-pool %w", err)
		}
	}
	w, err := b.Dynamic(assembly.IdentitySources)
	if err != nil {
		return nil, err
	}
	b.Watch("knative-services", func(ctx context.Context, pub events.Publisher) error {
		return knative.Watch(ctx, w, pub, b.Log)
	})
	return serve.New(&knative.Deployer{Client: dyn, Kube: kube, Replicas: knative.PodReplicas{Kube: kube, Address: d.ReplicaAddress},
		Catalog: catalog, Options: o, Configs: configs, Log: b.Log}, b.Log), nil
}

// bearer adds a bearer token to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
