package presets

import (
	"errors"
	"strings"
	"testing"
)

// A misspelt preset or SKU is answered with the name it was probably meant to be; a name far from
// every candidate is not given a guess.
func TestDidYouMean(t *testing.T) {
	cat, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		lookup func() error
		want   string
	}{
		{func() error { _, _, err := cat.Resolve("phi-3-mini-128k-instrct"); return err }, "did you mean phi-3-mini-128k-instruct?"},
		{func() error { _, err := cat.SKU("Standard_NC6s_v9"); return err }, "did you mean Standard_NC6s_v3?"},
		{func() error { _, err := cat.SKU("standard_nc24ads_a100_v4x"); return err }, "did you mean Standard_NC24ads_A100_v4?"},
		{func() error { _, _, err := cat.Resolve("something-else-entirely"); return err }, ""},
		{func() error { _, err := cat.SKU(strings.Repeat("Standard_NC6s_v3", 1000)); return err }, ""},
	} {
		err := tc.lookup()
		if !errors.Is(err, ErrUnknown) {
			t.Fatalf("%v: not ErrUnknown", err)
		}
		if got := err.Error(); (tc.want == "") != !strings.Contains(got, "did you mean") || (tc.want != "" && !strings.Contains(got, tc.want)) {
			t.Errorf("%s: want %q", got, tc.want)
		}
	}
	if d := editDistance("kitten", "sitting"); d != 3 {
		t.Errorf("editDistance(kitten, sitting) = %d", d)
	}
}
