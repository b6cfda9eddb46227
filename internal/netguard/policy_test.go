package netguard

import (
	"net/netip"
	"testing"
)

func TestAddressPolicyAllowList(t *testing.T) {
	p := AddressPolicy{Allow: []string{"10.20.0.0/16", "datasets.internal"}}
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"http://10.20.1.1/d.parquet", true},
		{"http://10.21.1.1/d.parquet", false},
		{"http://datasets.internal/d.parquet", true},
		{"http://127.0.0.1/d.parquet", false},
		{"https://unresolvable.example/d.parquet", true}, // resolution is the preflight's job
	} {
		if err := p.CheckURL(tc.url); (err == nil) != tc.ok {
			t.Errorf("CheckURL(%s) = %v, want ok=%v", tc.url, err, tc.ok)
		}
	}
	if err := p.CheckAddr(netip.MustParseAddr("20.1.2.3")); err != nil {
		t.Errorf("public address refused: %v", err)
	}
}
