package netguard

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestClientRefusesInternalAddressesAtConnect(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) }))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":"):]

	tests := []struct {
		name   string
		policy AddressPolicy
		url    string
		ok     bool
	}{
		// "localhost" is a name: only the dialer learns it is 127.0.0.1.
		{"name resolving to loopback", AddressPolicy{}, "http://localhost" + port, false},
		{"literal loopback", AddressPolicy{}, srv.URL, false},
		{"allowed by CIDR", AddressPolicy{Allow: []string{"127.0.0.0/8", "::1"}}, "http://localhost" + port, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := Client(tc.policy, 5*time.Second).Get(tc.url)
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				resp.Body.Close()
				return
			}
			if err == nil {
				resp.Body.Close()
				t.Fatal("connected to an internal address")
			}
			if !Refused(err) {
				t.Fatalf("refused for the wrong reason: %v", err)
			}
		})
	}
}

func TestClientRefusesRedirectToMetadata(t *testing.T) {
	srv := httptest.NewServer(http.RedirectHandler("http://169.254.169.254/metadata/identity/oauth2/token", http.StatusFound))
	defer srv.Close()
	c := Client(AddressPolicy{Allow: []string{"127.0.0.1"}}, 5*time.Second)
	resp, err := c.Get(srv.URL)
	if err == nil {
		resp.Body.Close()
		t.Fatal("followed a redirect to the metadata service")
	}
	if !strings.Contains(err.Error(), "link-local") {
		t.Fatalf("unexpected error: %v", err)
	}
}
