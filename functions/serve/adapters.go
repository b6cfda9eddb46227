package serve

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/events"
)

// LoRAName is the model-server name of an adapter from source (an image reference or a path)
// published as public: the public name and a digest of the source, so two generations' adapters
// can be loaded side by side while the route moves from one to the other.
func LoRAName(public, source string) string {
	sum := sha256.Sum256([]byte(source))
	base := AdapterName(public)
	if len(base) > 40 {
		base = strings.Trim(base[:40], "-")
	}
	return base + "-" + hex.EncodeToString(sum[:])[:8]
}

// DesiredSet is the adapter set that serves d, at version: each adapter under its LoRAName,
// routed from its public name, and /chat talking to the first (a tuning workspace's own). place
// adds what the deployer knows of where an adapter is: a mounted volume's path, the files of its
// pull secrets.
//
// A canary (d.Canary) adds its candidate to the set, splitting the first adapter's public name.
func DesiredSet(d Deployment, version int64, place func(Adapter, *chatproxy.AdapterSpec)) chatproxy.AdapterSet {
	set := chatproxy.AdapterSet{Version: version}
	for _, a := range d.Adapters {
		public, spec := AdapterName(a.Name), adapterSpec(a, d.ServingGeneration(), place)
		if set.Routes == nil {
			set.Routes, set.Generations = map[string]string{}, map[string]int64{}
			set.Default = public
		}
		set.Adapters = append(set.Adapters, spec)
		set.Routes[public], set.Generations[public] = spec.Name, d.ServingGeneration()
		if d.Checkpoint > 0 && set.Default == public {
			set.Checkpoints = map[string]int{public: d.Checkpoint}
		}
	}
	if c := d.Canary; c != nil && set.Default != "" {
		spec := adapterSpec(c.Adapter, c.Generation, place)
		if spec.Name != set.Routes[set.Default] { // the same adapter again: nothing to compare
			set.Adapters = append(set.Adapters, spec)
			set.Canaries = map[string]chatproxy.Canary{set.Default: {Adapter: spec.Name, Generation: c.Generation, Share: c.Share,
				Start: c.Start, Ends: c.Ends}}
		}
	}
	return set
}

// adapterSpec is a's entry in an adapter set, from generation gen.
func adapterSpec(a Adapter, gen int64, place func(Adapter, *chatproxy.AdapterSpec)) chatproxy.AdapterSpec {
	spec := chatproxy.AdapterSpec{Image: a.Image}
	if place != nil {
		place(a, &spec)
	}
	if a.Volume != nil {
		spec.Image = ""
	}
	// A digest names content; a tag or a path may hold other content next generation, so the
	// generation is part of the name and a new one is loaded.
	source := cmp.Or(spec.Image, spec.Path)
	if !strings.Contains(source, "@sha256:") {
		source += "#" + strconv.FormatInt(gen, 10)
	}
	spec.Name = LoRAName(AdapterName(a.Name), source)
	return spec
}

// UnionSet is the adapter set of a service that serves several workspaces (a serving pool): each
// one's DesiredSet side by side, at version. Two workspaces routing one public name is a permanent
// error naming both, and a pool has no default for /chat (a request names its model).
func UnionSet(ds []Deployment, version int64, place func(Adapter, *chatproxy.AdapterSpec)) (chatproxy.AdapterSet, error) {
	if len(ds) == 1 && ds[0].Pool == "" {
		return DesiredSet(ds[0], version, place), nil
	}
	union := chatproxy.AdapterSet{Version: version}
	owner := map[string]string{}
	for _, d := range ds {
		set := DesiredSet(d, version, place)
		for _, a := range set.Adapters {
			if !slices.ContainsFunc(union.Adapters, func(b chatproxy.AdapterSpec) bool { return b.Name == a.Name }) {
				union.Adapters = append(union.Adapters, a)
			}
		}
		for public, target := range set.Routes {
			if other, ok := owner[public]; ok {
				return chatproxy.AdapterSet{}, events.Permanentf(events.ReasonInvalidWorkspace,
					"model name %s is served by both %s and %s in one serving pool", public, other, d.Ref.Name)
			}
			owner[public] = d.Ref.Name
			if union.Routes == nil {
				union.Routes, union.Generations = map[string]string{}, map[string]int64{}
			}
			union.Routes[public], union.Generations[public] = target, set.Generations[public]
		}
	}
	return union, nil
}

// ServedModel is the model name chat-proxy's /chat talks to: the first adapter (the one a tuning
// workspace just made), or the base model.
func ServedModel(d Deployment) string {
	if len(d.Adapters) > 0 {
		return AdapterName(d.Adapters[0].Name)
	}
	return d.Workspace.PresetName()
}

// AdapterNames are the adapters' names as AdapterName makes them.
func AdapterNames(as []Adapter) []string {
	names := make([]string, 0, len(as))
	for _, a := range as {
		names = append(names, AdapterName(a.Name))
	}
	return slices.Clip(names)
}

// AdapterName makes an adapter name safe as a container name and a vLLM LoRA module name.
func AdapterName(s string) string {
	s = strings.ToLower(s)
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, s)
	if len(s) > 50 {
		s = s[:50]
	}
	return strings.Trim(s, "-")
}
