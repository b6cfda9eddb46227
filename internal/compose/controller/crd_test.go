package controller

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
)

// The CRD's schema and kaito.Workspace must not drift apart: every field the decoder knows is in
// the schema (a field missing there would be pruned by the API server, silently), down to the
// core/v1 types the schema leaves open.
func TestCRDSchemaCoversTheWorkspaceType(t *testing.T) {
	b, err := os.ReadFile("../../../deploy/knative/crd/workspaces.kaito.sh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(b, &crd); err != nil {
		t.Fatal(err)
	}
	// Kaito's versions, as Kaito serves them: both served, v1beta1 stored, with their columns.
	want := []struct {
		name    string
		storage bool
		columns string
	}{
		{"v1alpha1", false, "INSTANCE RESOURCEREADY INFERENCEREADY JOBSTARTED WORKSPACESUCCEEDED WORKSPACEREADY AGE"},
		{"v1beta1", true, "INSTANCE RESOURCEREADY INFERENCEREADY JOBSTARTED WORKSPACESUCCEEDED TARGETNODECOUNT STATE AGE"},
	}
	if len(crd.Spec.Versions) != len(want) {
		t.Fatalf("versions %+v", crd.Spec.Versions)
	}
	if !slices.Equal(crd.Spec.Names.ShortNames, []string{"wk", "wks"}) {
		t.Errorf("short names %v, want Kaito's wk, wks", crd.Spec.Names.ShortNames)
	}
	for i, w := range want {
		v := crd.Spec.Versions[i]
		if v.Name != w.name || !v.Served || v.Storage != w.storage || v.Subresources == nil || v.Subresources.Status == nil {
			t.Errorf("version %d: %s served %v storage %v, want %s stored %v with a status subresource", i, v.Name, v.Served, v.Storage, w.name, w.storage)
		}
		var cols []string
		for _, c := range v.AdditionalPrinterColumns {
			if c.Priority == 0 {
				cols = append(cols, strings.ToUpper(c.Name))
			}
		}
		if got := strings.Join(cols, " "); got != w.columns {
			t.Errorf("%s printer columns %s, want %s", v.Name, got, w.columns)
		}
		// One schema for both: the None conversion then loses nothing.
		if !reflect.DeepEqual(v.Schema, crd.Spec.Versions[0].Schema) {
			t.Errorf("%s's schema differs from %s's", v.Name, crd.Spec.Versions[0].Name)
		}
		cover(t, "", reflect.TypeOf(kaito.Workspace{}), *v.Schema.OpenAPIV3Schema)
	}
	if GVR("").Version != "v1beta1" {
		t.Errorf("the controller watches %s, not the storage version", GVR("").Version)
	}
}

func cover(t *testing.T, path string, typ reflect.Type, s apiextensionsv1.JSONSchemaProps) {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if s.XPreserveUnknownFields != nil && *s.XPreserveUnknownFields {
		return // left open on purpose: a core/v1 type the API server validates where it is used
	}
	switch typ.Kind() {
	case reflect.Slice:
		if s.Type != "array" || s.Items == nil || s.Items.Schema == nil {
			t.Errorf("%s: the type is a list, the schema says %q", path, s.Type)
			return
		}
		cover(t, path+"[]", typ.Elem(), *s.Items.Schema)
		return
	case reflect.Map:
		if s.Type != "object" || s.AdditionalProperties == nil {
			t.Errorf("%s: the type is a map, the schema has no additionalProperties", path)
		}
		return
	case reflect.Struct:
		if typ.PkgPath() == "time" || typ.Name() == "Time" {
			return
		}
	default:
		return
	}
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := strings.Split(f.Tag.Get("json"), ",")[0]
		if tag == "-" || !f.IsExported() {
			continue
		}
		if tag == "" && f.Anonymous {
			cover(t, path, f.Type, s) // inlined
			continue
		}
		if tag == "metadata" && path == "" {
			continue
		}
		p, ok := s.Properties[tag]
		if !ok {
			t.Errorf("%s.%s: in kaito.Workspace, not in the CRD schema (the API server would prune it)", path, tag)
			continue
		}
		cover(t, path+"."+tag, f.Type, p)
	}
}
