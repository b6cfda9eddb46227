package kaito

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

// Kaito's own InferenceSet examples, unchanged (testdata/kaito-inferenceset): each becomes the
// inference workspace kaitoflow serves it as, with the set's name, nodes and bounds; the MIG ones
// are refused on the field kaitoflow does not support, as a Workspace asking for a partition is.
func TestKaitoInferenceSetExamples(t *testing.T) {
	for _, tc := range []struct {
		file, name, preset, selector string
		min, max                     string
		refused                      string // a field the workspace is refused on
	}{
		{"kaito_inferenceset_phi_4_mini.yaml", "phi-4-mini", "phi-4-mini-instruct", "apps=phi-4-mini", "1", "1", ""},
		{"kaito_inferenceset_mistral_7b-instruct.yaml", "mistral-7b-instruct", "mistral-7b-instruct", "apps=mistral-7b-instruct", "1", "1", ""},
		{"kaito_inferenceset_llama-3.1_8b_instruct.yaml", "llama-3-1-8b", "llama-3.1-8b-instruct", "apps=llama-3-1-8b", "2", "2", ""},
		{"kaito_inferenceset_mig_single_strategy.yaml", "phi-4-mini", "phi-4-mini-instruct", "kaito-inferenceset=phi-4-mini", "2", "2", ""},
		{"kaito_inferenceset_mig_mixed_strategy.yaml", "phi-4-mini", "phi-4-mini-instruct", "kaito-inferenceset=phi-4-mini", "2", "2", "resource.partition"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", "kaito-inferenceset", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			docs, err := SplitYAML(b)
			if err != nil {
				t.Fatal(err)
			}
			w, err := DecodeManifest(docs[len(docs)-1]) // the llama example's Secret comes first
			if err != nil {
				t.Fatal(err)
			}
			sel := w.Resource.LabelSelector.MatchLabels
			if w.Kind != Kind || w.Name != tc.name || w.PresetName() != tc.preset || w.Inference == nil || w.Tuning != nil ||
				!strings.Contains(tc.selector, "="+sel[strings.SplitN(tc.selector, "=", 2)[0]]) ||
				w.Labels[LabelInferenceSetCreatedBy] != tc.name {
				t.Errorf("workspace %+v", w)
			}
			if a := w.Annotations; a["autoscaling.knative.dev/min-scale"] != tc.min || a["autoscaling.knative.dev/max-scale"] != tc.max ||
				a["scaledobject.kaito.sh/threshold"] != "10" {
				t.Errorf("annotations %v: want min-scale %s, max-scale %s and the set's own", a, tc.min, tc.max)
			}
			if strconv.Itoa(w.NodeCount()) != tc.max {
				t.Errorf("%d nodes, want one a replica: %s", w.NodeCount(), tc.max)
			}
			errs := w.Validate(netguard.AddressPolicy{})
			switch {
			case tc.refused == "" && len(errs) > 0:
				t.Errorf("refused: %s", FieldErrors(errs))
			case tc.refused != "" && !strings.Contains(FieldErrors(errs), tc.refused):
				t.Errorf("want a refusal on %s, got %q", tc.refused, FieldErrors(errs))
			}
		})
	}
}

// The bounds: spec.replicas at least (0 scales to zero), keda-kaito-scaler's max-replicas at
// most when larger, spec.nodeCountLimit over both; what is the set's own is refused in its own
// field paths.
func TestInferenceSetBoundsAndRefusals(t *testing.T) {
	doc := func(spec, annotations string) []byte {
		return []byte("apiVersion: kaito.sh/v1beta1\nkind: InferenceSet\nmetadata:\n  name: s\n" + annotations +
			"spec:\n  labelSelector:\n    matchLabels: {apps: s}\n  template:\n    inference:\n      preset: {name: phi-4-mini-instruct}\n" + spec)
	}
	for _, tc := range []struct {
		name, spec, annotations string
		min, max                string
	}{
		{"default replicas", "", "", "1", "1"},
		{"scale to zero", "  replicas: 0\n", "", "0", "1"},
		{"KEDA's maximum", "  replicas: 1\n", "  annotations: {scaledobject.kaito.sh/max-replicas: \"4\"}\n", "1", "4"},
		{"node count limit", "  replicas: 2\n  nodeCountLimit: 3\n", "  annotations: {scaledobject.kaito.sh/max-replicas: \"8\"}\n", "2", "3"},
		{"the set's own Knative bounds win", "  replicas: 1\n", "  annotations: {autoscaling.knative.dev/max-scale: \"2\"}\n", "1", "2"},
	} {
		w, err := DecodeManifest(doc(tc.spec, tc.annotations))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if a := w.Annotations; a["autoscaling.knative.dev/min-scale"] != tc.min || a["autoscaling.knative.dev/max-scale"] != tc.max {
			t.Errorf("%s: min-scale %s, max-scale %s; want %s, %s", tc.name, a["autoscaling.knative.dev/min-scale"], a["autoscaling.knative.dev/max-scale"], tc.min, tc.max)
		}
	}
	for _, tc := range []struct {
		name string
		doc  []byte
		want string
	}{
		{"negative replicas", doc("  replicas: -1\n", ""), "spec.replicas"},
		{"bad KEDA maximum", doc("", "  annotations: {scaledobject.kaito.sh/max-replicas: lots}\n"), "metadata.annotations[scaledobject.kaito.sh/max-replicas]"},
		{"no selector", []byte("apiVersion: kaito.sh/v1beta1\nkind: InferenceSet\nmetadata: {name: s}\nspec:\n  template:\n    inference: {preset: {name: p}}\n"), "spec.labelSelector"},
		{"no inference", []byte("apiVersion: kaito.sh/v1beta1\nkind: InferenceSet\nmetadata: {name: s}\nspec:\n  labelSelector: {matchLabels: {a: b}}\n  template: {}\n"), "spec.template.inference"},
		{"unknown version", []byte("apiVersion: kaito.sh/v9\nkind: InferenceSet\nmetadata: {name: s}\nspec: {}\n"), "apiVersion"},
	} {
		_, err := DecodeManifest(tc.doc)
		var fe *FieldsError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a refusal naming %s", tc.name, err, tc.want)
		}
	}
	if _, err := DecodeManifest(doc("  replicaz: 2\n", "")); err == nil || !strings.Contains(err.Error(), "replicaz") {
		t.Errorf("a misspelt field: %v, want it named", err)
	}
}
