package api

import (
	"errors"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/internal/status"
	"github.com/kaitoflow/kaitoflow/presets"
)

// maxConfigMapBytes bounds a ConfigMap's data: its content (a training or inference config) rides
// in the workspace's events beside the workspace (kaito.MaxWorkspaceBytes) within JetStream's
// 1 MiB message. The API server's own limit, 1 MiB, would be admitted here and fail later.
const maxConfigMapBytes = 256 << 10

// ConfigMapResult is the body of a successful ConfigMap submit.
type ConfigMapResult struct {
	ConfigMap status.ConfigMap `json:"configMap"`
	// Unchanged is true when the same data was already stored.
	Unchanged bool `json:"unchanged"`
	DryRun    bool `json:"dryRun,omitempty"`
}

// DecodeConfigMap decodes a v1 ConfigMap manifest (YAML or JSON) strictly and validates what the
// API server would: the name, the namespace, the data keys and the size. binaryData is refused:
// no Kaito ConfigMap carries any.
func DecodeConfigMap(doc []byte, defaultNamespace string) (*corev1.ConfigMap, field.ErrorList, error) {
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(doc, &cm); err != nil {
		return nil, nil, fmt.Errorf("decode ConfigMap: %w", err)
	}
	if cm.Namespace == "" {
		cm.Namespace = defaultNamespace
	}
	var errs field.ErrorList
	if cm.APIVersion != "v1" || cm.Kind != "ConfigMap" {
		errs = append(errs, field.Invalid(field.NewPath("apiVersion"), cm.APIVersion+"/"+cm.Kind, "want v1 ConfigMap"))
	}
	errs = append(errs, apivalidation.ValidateObjectMeta(&cm.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))...)
	size := 0
	for k, v := range cm.Data {
		for _, msg := range validation.IsConfigMapKey(k) {
			errs = append(errs, field.Invalid(field.NewPath("data").Key(k), k, msg))
		}
		size += len(k) + len(v)
	}
	if size > maxConfigMapBytes {
		errs = append(errs, field.TooLong(field.NewPath("data"), "", maxConfigMapBytes))
	}
	if len(cm.BinaryData) > 0 {
		errs = append(errs, field.Forbidden(field.NewPath("binaryData"), "not supported: tuning.config and inference.config read data"))
	}
	return &cm, errs, nil
}

func (s *Server) submitConfigMap(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	cm, errs, err := DecodeConfigMap(body, namespace(r))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, Problem{Error: err.Error()})
		return
	}
	if len(errs) > 0 {
		writeInvalid(w, "ConfigMap", cm.Namespace, cm.Name, errs)
		return
	}
	rec := status.ConfigMap{Namespace: cm.Namespace, Name: cm.Name, Data: cm.Data}
	if r.URL.Query().Get("dryRun") == "true" {
		writeJSON(w, http.StatusOK, ConfigMapResult{ConfigMap: rec, DryRun: true})
		return
	}
	stored, changed, err := s.Store.PutConfigMap(r.Context(), rec)
	if err != nil {
		s.Log.Error("store ConfigMap", "configmap", cm.Namespace+"/"+cm.Name, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
		return
	}
	code := http.StatusCreated
	if !changed {
		code = http.StatusOK
	}
	writeJSON(w, code, ConfigMapResult{ConfigMap: *stored, Unchanged: !changed})
}

func (s *Server) listConfigMaps(w http.ResponseWriter, r *http.Request) {
	l, err := s.Store.ConfigMaps(r.Context(), listNamespace(r))
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
		return
	}
	if l == nil {
		l = []status.ConfigMap{}
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *Server) getConfigMap(w http.ResponseWriter, r *http.Request) {
	cm, err := s.Store.ConfigMap(r.Context(), namespace(r), r.PathValue("name"))
	switch {
	case errors.Is(err, presets.ErrConfigMapNotFound):
		writeJSON(w, http.StatusNotFound, Problem{Error: err.Error()})
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, Problem{Error: err.Error()})
	default:
		writeJSON(w, http.StatusOK, cm)
	}
}
