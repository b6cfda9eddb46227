// Package registryauth finds registry credentials without static passwords where it can: a
// kubernetes.io/dockerconfigjson Secret (the workspace's imagePushSecret), and for ACR an Entra ID
// token (workload or managed identity) exchanged for an ACR refresh token.
package registryauth

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/kubeerr"
)

// DockerConfig is a keychain over dockerconfigjson bytes (a Secret's .dockerconfigjson).
func DockerConfig(b []byte) (authn.Keychain, error) {
	cf := configfile.New("")
	if err := cf.LoadFromReader(bytes.NewReader(b)); err != nil {
		return nil, fmt.Errorf("parse dockerconfigjson: %w", err)
	}
	return dockerConfig{cf: cf}, nil
}

// DockerConfigFile is a keychain over a mounted dockerconfigjson file, read when used.
func DockerConfigFile(path string) authn.Keychain { return dockerConfigFile(path) }

// DockerConfigFiles is a keychain over several mounted dockerconfigjson files: the first that has
// credentials for the registry answers; with none (or no files) the pull is anonymous.
func DockerConfigFiles(paths ...string) authn.Keychain {
	chains := make([]authn.Keychain, len(paths))
	for i, p := range paths {
		chains[i] = dockerConfigFile(p)
	}
	return authn.NewMultiKeychain(chains...)
}

type dockerConfigFile string

func (p dockerConfigFile) Resolve(r authn.Resource) (authn.Authenticator, error) {
	b, err := os.ReadFile(string(p))
	if err != nil {
		return nil, fmt.Errorf("read registry secret: %w", err)
	}
	kc, err := DockerConfig(b)
	if err != nil {
		return nil, err
	}
	return kc.Resolve(r)
}

type dockerConfig struct{ cf *configfile.ConfigFile }

func (d dockerConfig) Resolve(r authn.Resource) (authn.Authenticator, error) {
	ac, err := d.cf.GetAuthConfig(r.RegistryStr())
	if err != nil {
		return nil, err
	}
	if ac.Username == "" && ac.Password == "" && ac.IdentityToken == "" && ac.RegistryToken == "" {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: ac.Username, Password: ac.Password, IdentityToken: ac.IdentityToken,
		RegistryToken: ac.RegistryToken}), nil
}

// acrUser is the user name ACR expects with a refresh token obtained by exchange.
const acrUser = "00000000-0000-0000-0000-000000000000"

// ACR exchanges an Entra ID access token for an ACR refresh token (POST /oauth2/exchange), so the
// identity the function runs as (workload identity, managed identity) pushes with no password.
// Refresh tokens are cached per registry until shortly before they expire.
type ACR struct {
	Credential azcore.TokenCredential
	HTTP       *http.Client
	// Suffixes are the registry host suffixes this applies to; ".azurecr.io" when empty.
	Suffixes []string
	// Scheme is "https" unless a test says otherwise.
	Scheme string

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	token   string
	expires time.Time
}

// acrTokenLifetime is how long ACR refresh tokens are trusted here (ACR issues them for 3 hours).
const acrTokenLifetime = 2 * time.Hour

// Resolve implements authn.Keychain.
func (a *ACR) Resolve(r authn.Resource) (authn.Authenticator, error) {
	host := r.RegistryStr()
	suffixes := a.Suffixes
	if len(suffixes) == 0 {
		suffixes = []string{".azurecr.io"}
	}
	match := false
	for _, s := range suffixes {
		if strings.HasSuffix(host, s) || host == s {
			match = true
		}
	}
	if !match || a.Credential == nil {
		return authn.Anonymous, nil
	}
	a.mu.Lock()
	c, ok := a.cache[host]
	a.mu.Unlock()
	if ok && time.Now().Before(c.expires) {
		return authn.FromConfig(authn.AuthConfig{Username: acrUser, Password: c.token}), nil
	}
	refresh, err := a.exchange(host)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	if a.cache == nil {
		a.cache = map[string]cached{}
	}
	a.cache[host] = cached{token: refresh, expires: time.Now().Add(acrTokenLifetime)}
	a.mu.Unlock()
	return authn.FromConfig(authn.AuthConfig{Username: acrUser, Password: refresh}), nil
}

// exchange trades an Entra ID token for the registry's refresh token (ACR's /oauth2/exchange).
func (a *ACR) exchange(host string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := a.Credential.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{"https://containerregistry.azure.net/.default"}})
	if err != nil {
		return "", fmt.Errorf("entra token for %s: %w", host, err)
	}
	scheme := a.Scheme
	if scheme == "" {
		scheme = "https"
	}
	form := url.Values{"grant_type": {"access_token"}, "service": {host}, "access_token": {tok.Token}}
	client := a.HTTP
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, scheme+"://"+host+"/oauth2/exchange", strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("acr token exchange with %s: %w", host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("acr token exchange with %s: HTTP %s (does the identity have AcrPull, or AcrPush to push, on the registry?)", host, resp.Status)
	}
	var out struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil || out.RefreshToken == "" {
		return "", fmt.Errorf("acr token exchange with %s: no refresh token in the answer", host)
	}
	return out.RefreshToken, nil
}

// Secrets reads a workspace's imagePushSecret from the cluster and, for ACR, adds Entra ID
// credentials: the secret's entry wins where it has one.
type Secrets struct {
	// Read reads the Secret namespace/name as publish's identity (nil: no imagePushSecret is
	// read). A function rather than a client, so that this package, which chat-proxy links for
	// pulling adapters, links no Kubernetes client.
	Read func(ctx context.Context, namespace, name string) (*corev1.Secret, error)
	ACR  *ACR
}

// For returns the keychain to push the adapter of ws with.
func (s Secrets) For(ctx context.Context, ws *kaito.Workspace) (authn.Keychain, error) {
	var chains []authn.Keychain
	if out := ws.Tuning.Output; out != nil && out.ImagePushSecret != "" && s.Read != nil {
		ns := ws.Namespace
		if ns == "" {
			ns = kaito.DefaultNamespace
		}
		sec, err := s.Read(ctx, ns, out.ImagePushSecret)
		switch {
		case apierrors.IsNotFound(err):
			return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.output.imagePushSecret: secret %s/%s not found", ns, out.ImagePushSecret)
		case err != nil:
			return nil, kubeerr.WorkspaceSecret(fmt.Errorf("read secret %s/%s: %w", ns, out.ImagePushSecret, err), "tuning.output.imagePushSecret",
				ns, out.ImagePushSecret)
		}
		b, ok := sec.Data[corev1.DockerConfigJsonKey]
		if !ok {
			return nil, events.Permanentf(events.ReasonInvalidWorkspace,
				"tuning.output.imagePushSecret: secret %s/%s has no %s (want type kubernetes.io/dockerconfigjson)",
				ns, out.ImagePushSecret, corev1.DockerConfigJsonKey)
		}
		kc, err := DockerConfig(b)
		if err != nil {
			return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.output.imagePushSecret %s/%s: %v", ns, out.ImagePushSecret, err)
		}
		chains = append(chains, kc)
	}
	if s.ACR != nil {
		chains = append(chains, s.ACR)
	}
	return authn.NewMultiKeychain(chains...), nil
}

// AdapterKeychain signs in to an adapter's registry with the docker config files of its pull
// secrets and, with acrIdentity, to an Azure Container Registry with the pod's workload identity.
func AdapterKeychain(secrets []string, acrIdentity bool) (authn.Keychain, error) {
	keychain := DockerConfigFiles(secrets...)
	if !acrIdentity {
		return keychain, nil
	}
	// The workload identity webhook injected the federated token and the client id.
	cred, err := azidentity.NewWorkloadIdentityCredential(nil)
	if err != nil {
		return nil, fmt.Errorf("ACR identity: workload identity: %w (is the pod labelled azure.workload.identity/use and its ServiceAccount "+
			"annotated with a client id?)", err)
	}
	return authn.NewMultiKeychain(keychain, &ACR{Credential: cred}), nil
}
