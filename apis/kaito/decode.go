package kaito

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// maxManifestBytes bounds a manifest the decoder reads: one JetStream message (1 MiB by
// default) carries it, so a larger one is a mistake, not a workspace.
const maxManifestBytes = 1 << 20

// DecodeWorkspace reads one Workspace manifest, YAML or JSON. Unknown fields are an error naming
// the field: a misspelt "instancetype" silently ignored would provision the default SKU.
func DecodeWorkspace(doc []byte) (*Workspace, error) {
	j, err := manifestJSON(doc, "workspace")
	if err != nil {
		return nil, err
	}
	return decodeStrict[Workspace](j, "workspace")
}

// manifestJSON is a manifest within maxManifestBytes, YAML or JSON, as JSON.
func manifestJSON(doc []byte, what string) ([]byte, error) {
	if len(doc) > maxManifestBytes {
		return nil, fmt.Errorf("manifest of %d bytes exceeds the %d byte limit", len(doc), maxManifestBytes)
	}
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", what, err)
	}
	return j, nil
}

// decodeStrict reads JSON into a T as the API server would: field names match case-sensitively
// (encoding/json alone would quietly take "instancetype" for "instanceType"), and a duplicate or
// unknown field is an error naming it.
func decodeStrict[T any](j []byte, what string) (*T, error) {
	var v T
	strict, err := kjson.UnmarshalStrict(j, &v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", what, err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("decode %s: %w", what, errors.Join(strict...))
	}
	return &v, nil
}

// DecodeManifest reads one Kaito manifest as the workspace kaitoflow runs: a Workspace as it is,
// or an InferenceSet as the inference workspace it is served as (InferenceSet.Workspace), once its
// own fields are valid (a *FieldsError names those that are not).
func DecodeManifest(doc []byte) (*Workspace, error) {
	j, err := manifestJSON(doc, "manifest")
	if err != nil {
		return nil, err
	}
	apiVersion, kind := kindOf(j)
	if kind != KindInferenceSet {
		return decodeStrict[Workspace](j, "workspace") // converted once, not again by DecodeWorkspace
	}
	if !slices.Contains(APIVersions(), apiVersion) {
		return nil, &FieldsError{Kind: kind, Errs: field.ErrorList{field.NotSupported(field.NewPath("apiVersion"), apiVersion, APIVersions())}}
	}
	s, err := decodeStrict[InferenceSet](j, "inferenceset")
	if err != nil {
		return nil, err
	}
	if errs := s.Validate(); len(errs) > 0 {
		return nil, &FieldsError{Kind: kind, Namespace: s.Namespace, Name: s.Name, Errs: errs}
	}
	return s.Workspace(), nil
}

// FieldsError is a manifest refused for its fields.
type FieldsError struct {
	Kind, Namespace, Name string
	Errs                  field.ErrorList
}

func (e *FieldsError) Error() string {
	return fmt.Sprintf("%s %s: %s", e.Kind, e.Name, FieldErrors(e.Errs))
}

// SplitYAML splits a multi-document YAML stream into its non-empty documents.
func SplitYAML(stream []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("split YAML documents: %w", err)
		}
		var probe map[string]any
		if err := yaml.Unmarshal(doc, &probe); err == nil && len(probe) == 0 {
			continue // only comments or whitespace
		}
		docs = append(docs, doc)
	}
}

// FieldErrors formats a validation result as one message per line.
func FieldErrors(errs field.ErrorList) string {
	lines := make([]string, len(errs))
	for i, e := range errs {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}
