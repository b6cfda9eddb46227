package registryauth

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

func resource(t *testing.T, host string) authn.Resource {
	t.Helper()
	r, err := name.NewRegistry(host, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDockerConfig(t *testing.T) {
	kc, err := DockerConfig([]byte(`{"auths":{"myacr.azurecr.io":{"auth":"dXNlcjpwYXNz"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := kc.Resolve(resource(t, "myacr.azurecr.io"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := a.Authorization()
	if cfg.Username != "user" || cfg.Password != "pass" {
		t.Errorf("got %+v", cfg)
	}
	if a, _ := kc.Resolve(resource(t, "other.example.com")); a != authn.Anonymous {
		t.Error("credentials offered to another registry")
	}
	if _, err := DockerConfig([]byte("{not json")); err == nil {
		t.Error("bad secret accepted")
	}
}

func TestACRExchange(t *testing.T) {
	var exchanges atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/oauth2/exchange" || r.ParseForm() != nil || r.Form.Get("grant_type") != "access_token" || r.Form.Get("access_token") == "" {
			http.Error(w, "bad exchange", http.StatusBadRequest)
			return
		}
		exchanges.Add(1)
		_, _ = w.Write([]byte(`{"refresh_token":"acr-refresh-token"}`))
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	a := &ACR{Credential: &azfake.TokenCredential{}, Suffixes: []string{host}, Scheme: "http"}
	for range 2 {
		auth, err := a.Resolve(resource(t, host))
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ := auth.Authorization()
		if cfg.Username != acrUser || cfg.Password != "acr-refresh-token" {
			t.Fatalf("got %+v", cfg)
		}
	}
	if exchanges.Load() != 1 {
		t.Errorf("%d exchanges, want 1 (cached)", exchanges.Load())
	}
	if auth, _ := a.Resolve(resource(t, "docker.io")); auth != authn.Anonymous {
		t.Error("an Entra token was offered to a registry that is not ACR")
	}

}
