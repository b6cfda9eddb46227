package assembly

import (
	"context"
	"fmt"

	"github.com/kaitoflow/kaitoflow/internal/kubeclient"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/internal/kubeerr"
	"github.com/kaitoflow/kaitoflow/presets"
)

// ClusterConfigMaps reads ConfigMaps from the API server: Kaito's tuning.config and
// inference.config each name one in the workspace's namespace.
func ClusterConfigMaps(client *kubeclient.Client) presets.ConfigSource {
	return func(ctx context.Context, namespace, name string) (map[string]string, error) {
		cm, err := client.ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("ConfigMap %s/%s: %w", namespace, name, presets.ErrConfigMapNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("read ConfigMap %s/%s: %w", namespace, name, err)
		}
		return cm.Data, nil
	}
}

// ClusterSecrets reads Secrets from the API server: presetOptions.modelAccessSecret, for the
// planner's requests to the Hugging Face Hub.
func ClusterSecrets(client *kubeclient.Client) presets.SecretSource {
	return func(ctx context.Context, namespace, name string) (map[string][]byte, error) {
		s, err := client.Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("Secret %s/%s: %w", namespace, name, presets.ErrSecretNotFound)
		}
		if err != nil {
			return nil, kubeerr.WorkspaceSecret(fmt.Errorf("read Secret %s/%s: %w", namespace, name, err), "presetOptions.modelAccessSecret", namespace, name)
		}
		return s.Data, nil
	}
}
