package assembly

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/kaitoflow/kaitoflow/internal/kubeerr"
	"github.com/kaitoflow/kaitoflow/presets"
)

// ClusterConfigMaps reads ConfigMaps from the API server: Kaito's tuning.config and
// inference.config each name one in the workspace's namespace.
func ClusterConfigMaps(client interface {
	ConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error)
}) presets.ConfigSource {
	return func(ctx context.Context, namespace, name string) (map[string]string, error) {
		cm, err := client.ConfigMap(ctx, namespace, name)
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
func ClusterSecrets(client interface {
	Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
}) presets.SecretSource {
	return func(ctx context.Context, namespace, name string) (map[string][]byte, error) {
		s, err := client.Secret(ctx, namespace, name)
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("Secret %s/%s: %w", namespace, name, presets.ErrSecretNotFound)
		}
		if err != nil {
			return nil, kubeerr.WorkspaceSecret(fmt.Errorf("read Secret %s/%s: %w", namespace, name, err), "presetOptions.modelAccessSecret", namespace, name)
		}
		return s.Data, nil
	}
}
