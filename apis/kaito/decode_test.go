package kaito

import (
	"os"
	"testing"

	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

// FuzzDecodeWorkspace: no manifest panics the decoder or the validator.
func FuzzDecodeWorkspace(f *testing.F) {
	f.Add([]byte(base))
	if seed, err := os.ReadFile(seedPath); err == nil {
		f.Add(seed)
	}
	f.Add([]byte("{}"))
	f.Add([]byte("resource: {count: -1}\ntuning: {input: {urls: ['http://[::1]']}}"))
	f.Add([]byte("inference: {adapters: [{source: {}, strength: 'x'}]}"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		w, err := DecodeWorkspace(doc)
		if err != nil {
			return
		}
		_ = w.Validate(netguard.AddressPolicy{Allow: []string{"10.0.0.0/8"}})
	})
}
