// Package publishpart builds the publish function: the adapter's push, and the credentials it
// signs in to the workspace's registry with.
package publishpart

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/functions/publish"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// Part builds publish: the pusher and the keychain it signs in with.
func Part() assembly.Part { return assembly.StepPart(publish.Name, publish.Types, handler) }

func handler(_ context.Context, b *assembly.Builder) (runtime.Handler, error) {
	var resolve publish.Resolver
	if b.Config.Registry != "" {
		resolve = publish.RewriteRegistry(b.Config.Registry)
	}
	// The registry a workspace names is reached through the address policy; a rewrite points at
	// the operator's own stand-in (the embedded registry), which is not the workspace's choice.
	pusher := publish.RemotePusher{Options: []remote.Option{remote.WithTransport(netguard.Transport(b.Config.Policy))}}
	if b.Config.Registry != "" {
		pusher = publish.RemotePusher{}
	}
	f := publish.New(pusher, resolve, b.Log)
	switch {
	case b.Config.PushKeychain != nil:
		return f.WithKeychain(b.Config.PushKeychain), nil
	case b.Config.Registry != "":
		// A stand-in registry (the embedded one, a rewrite) takes anonymous pushes.
		return f, nil
	case b.Config.Cluster != nil:
		// In a cluster: the workspace's imagePushSecret, and Entra ID for ACR.
		c, err := b.Kube(assembly.IdentityPublish)
		if err != nil {
			return nil, err
		}
		var acr *registryauth.ACR
		if cred, err := b.Credential(); err == nil {
			acr = &registryauth.ACR{Credential: cred}
		}
		return f.WithKeychain(registryauth.Secrets{ACR: acr, Read: func(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
			return c.Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
		}}.For), nil
	}
	// The workspace's own registry from a workstation: the local Docker login.
	return f.WithKeychain(func(context.Context, *kaito.Workspace) (authn.Keychain, error) { return authn.DefaultKeychain, nil }), nil
}
