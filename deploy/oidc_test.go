package deploy_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// renderWith renders deploy/knative with the component at dir, as `kubectl kustomize` would.
func renderWith(t *testing.T, component string) []object {
	t.Helper()
	return render(t, []string{"knative"}, component)
}

// render renders an overlay of the kustomizations and components given (paths under deploy/), as
// `kubectl kustomize` would: what hack/release.sh writes, before ko resolves the images.
func render(t *testing.T, resources []string, components ...string) []object {
	t.Helper()
	// An overlay beside a copy of deploy/knative, in memory, as hack/release.sh makes one.
	fs := filesys.MakeFsInMemory()
	err := filepath.WalkDir("knative", func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return fs.WriteFile(filepath.Join("/deploy", p), b)
	})
	if err != nil {
		t.Fatal(err)
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
	for _, r := range resources {
		k += "- ../" + filepath.ToSlash(r) + "\n"
	}
	if len(components) > 0 {
		k += "components:\n"
		for _, c := range components {
			k += "- ../" + filepath.ToSlash(c) + "\n"
		}
	}
	overlay := "/deploy/overlay"
	if err := fs.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k)); err != nil {
		t.Fatal(err)
	}
	opts := krusty.MakeDefaultOptions()
	m, err := krusty.MakeKustomizer(opts).Run(fs, overlay)
	if err != nil {
		t.Fatalf("kustomize: %v", err)
	}
	y, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return parseObjects(t, "rendered", y)
}

// The OIDC component (deploy/knative/oidc): each Trigger names its function's audience, the
// function takes events only with a token for that audience from that Trigger's identity, the
// dead-letter function from every Trigger's and the Broker's, every function sends to the Broker
// with a token for the Broker's audience, and what it renders passes Knative's validation and a
// server-side dry run (the EventPolicy against Eventing's CRD).
func TestOIDCComponent(t *testing.T) {
	objs := renderWith(t, filepath.Join("knative", "oidc"))
	checkManifests(t, objs)
	dryRunApply(t, objs)

	audience := map[string]string{} // Trigger subscriber → its audience
	dlAudiences := map[string]bool{}
	services := map[string]*unstructured.Unstructured{}
	policies := 0
	for _, o := range objs {
		switch o.u.GetKind() {
		case "Trigger":
			sub, _, _ := unstructured.NestedString(o.u.Object, "spec", "subscriber", "ref", "name")
			aud, _, _ := unstructured.NestedString(o.u.Object, "spec", "subscriber", "audience")
			audience[sub] = aud
			dl, _, _ := unstructured.NestedString(o.u.Object, "spec", "delivery", "deadLetterSink", "audience")
			dlAudiences[dl] = true
		case "Broker":
			dl, _, _ := unstructured.NestedString(o.u.Object, "spec", "delivery", "deadLetterSink", "audience")
			dlAudiences[dl] = true
		case "Service":
			if o.u.GetAPIVersion() == "serving.knative.dev/v1" && o.u.GetLabels()["kaitoflow.io/function"] != "" {
				services[o.u.GetName()] = o.u
			}
		case "EventPolicy":
			policies++
			filters, _, _ := unstructured.NestedSlice(o.u.Object, "spec", "filters")
			if len(filters) == 0 || !strings.Contains(filters[0].(map[string]any)["cesql"].(string), "NOT IN ('kaitoflow.workspace.requested'") {
				t.Errorf("the EventPolicy lets publishers send workspace requests: %v", filters)
			}
		}
	}
	if len(audience) != 6 || policies != 1 || len(services) != 7 {
		t.Fatalf("%d Triggers, %d EventPolicies, %d function Services", len(audience), policies, len(services))
	}
	args := func(u *unstructured.Unstructured) []string {
		c, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
		a, _, _ := unstructured.NestedStringSlice(c[0].(map[string]any), "args")
		return a
	}
	for name, svc := range services {
		a := args(svc)
		want := audience[name]
		if name == "kaitoflow-deadletter" {
			if len(dlAudiences) != 1 || dlAudiences[""] {
				t.Errorf("dead-letter sinks name audiences %v", dlAudiences)
			}
			for k := range dlAudiences {
				want = k
			}
		}
		if want == "" || !slices.Contains(a, "--caller-audience="+want) {
			t.Errorf("%s: args %v do not take its Trigger's audience %q", name, a, want)
		}
		own := "--caller=system:serviceaccount:kaitoflow:" + name + "-oidc-eventing.knative.dev-trigger"
		if name != "kaitoflow-deadletter" && !slices.Contains(a, own) {
			t.Errorf("%s: args %v do not allow its Trigger (%s)", name, a, own)
		}
		for _, arg := range a {
			if v, ok := strings.CutPrefix(arg, "--caller="); ok && (strings.HasSuffix(v, "*") || !strings.HasPrefix(v, "system:serviceaccount:kaitoflow:")) {
				t.Errorf("%s: a caller beyond kaitoflow's Triggers: %s", name, v)
			}
		}
		vols, _, _ := unstructured.NestedSlice(svc.Object, "spec", "template", "spec", "volumes")
		if !strings.Contains(strings.Join(flat(vols), " "), "eventing.knative.dev/broker/kaitoflow/kaitoflow") {
			t.Errorf("%s: no token for the Broker's audience: %v", name, vols)
		}
	}
}

// flat lists the string leaves of v, for a look through nested YAML.
func flat(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			out = append(out, flat(e)...)
		}
		return out
	case map[string]any:
		var out []string
		for _, e := range x {
			out = append(out, flat(e)...)
		}
		return out
	}
	return nil
}
