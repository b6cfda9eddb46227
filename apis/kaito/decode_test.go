package kaito

import (
	"os"
	"testing"

	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

// FuzzDecodeManifest: no manifest, a Workspace or an InferenceSet, panics the decoder, the
// conversion or the validator.
func FuzzDecodeManifest(f *testing.F) {
	f.Add([]byte(base))
	if seed, err := os.ReadFile(seedPath); err == nil {
		f.Add(seed)
	}
	f.Add([]byte("{}"))
	f.Add([]byte("resource: {count: -1}\ntuning: {input: {urls: ['http://[::1]']}}"))
	f.Add([]byte("inference: {adapters: [{source: {}, strength: 'x'}]}"))
	if set, err := os.ReadFile("testdata/kaito-inferenceset/kaito_inferenceset_phi_4_mini.yaml"); err == nil {
		f.Add(set)
	}
	f.Add([]byte("kind: InferenceSet\napiVersion: kaito.sh/v1beta1\nspec: {replicas: -3, nodeCountLimit: 1, template: {resource: {partition: {}}}}"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		w, err := DecodeManifest(doc)
		if err != nil {
			return
		}
		_ = w.Validate(netguard.AddressPolicy{Allow: []string{"10.0.0.0/8"}})
	})
}
