package status

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/kvjson"
	"github.com/kaitoflow/kaitoflow/presets"
)

// ConfigMapBucket is the KV bucket of the ConfigMaps submitted in the embedded mode, where there is
// no API server to keep them: Kaito's docs ship a ConfigMap and the Workspace naming it
// (tuning.config, inference.config) in one file.
const ConfigMapBucket = "kaitoflow-configmaps"

// ConfigMap is a stored ConfigMap: what tuning.config and inference.config read.
type ConfigMap struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Data      map[string]string `json:"data,omitempty"`
	Created   time.Time         `json:"created"`
	Updated   time.Time         `json:"updated"`
}

// PutConfigMap stores cm, as kubectl apply would: created keeps its first value, the data is
// replaced. changed is false when the same data was already stored.
func (s *Store) PutConfigMap(ctx context.Context, cm ConfigMap) (stored *ConfigMap, changed bool, err error) {
	stored, err = kvjson.Update(ctx, s.configMaps, Key(cm.Namespace, cm.Name), func(cur *ConfigMap, exists bool) (bool, error) {
		if exists && maps.Equal(cur.Data, cm.Data) {
			changed = false
			return false, nil
		}
		now := time.Now().UTC()
		created := cur.Created
		if !exists {
			created = now
		}
		*cur = ConfigMap{Namespace: cm.Namespace, Name: cm.Name, Data: cm.Data, Created: created, Updated: now}
		changed = true
		return true, nil
	})
	return stored, changed, err
}

// ConfigMap returns namespace/name, or an error wrapping presets.ErrConfigMapNotFound.
func (s *Store) ConfigMap(ctx context.Context, namespace, name string) (*ConfigMap, error) {
	cm, _, err := kvjson.Get[ConfigMap](ctx, s.configMaps, Key(namespace, name))
	if errors.Is(err, kvjson.ErrNotFound) {
		return nil, fmt.Errorf("ConfigMap %s/%s: %w", namespace, name, presets.ErrConfigMapNotFound)
	}
	return cm, err
}

// ConfigMaps lists the ConfigMaps of namespace ("" for all), sorted by namespace and name.
func (s *Store) ConfigMaps(ctx context.Context, namespace string) ([]ConfigMap, error) {
	return kvjson.List[ConfigMap](ctx, s.configMaps, keyFilter(namespace))
}

// ConfigMapData is a presets.ConfigSource over the stored ConfigMaps: tuning.config and
// inference.config resolve in the embedded mode as they do against an API server.
func (s *Store) ConfigMapData(ctx context.Context, namespace, name string) (map[string]string, error) {
	cm, err := s.ConfigMap(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return cm.Data, nil
}
