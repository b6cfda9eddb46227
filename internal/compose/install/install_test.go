package install

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in, err string
		objects       int
	}{
		{name: "two documents and an empty one", in: "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: a}\n", objects: 2},
		{name: "JSON", in: `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}`, objects: 1},
		{name: "no kind", in: "apiVersion: v1\nmetadata: {name: a}\n", err: "document 1: no kind or metadata.name"},
		{name: "no name", in: "apiVersion: v1\nkind: Namespace\n", err: "document 1: no kind or metadata.name"},
		{name: "nothing", in: "# only a comment\n", err: "no objects"},
		{name: "not YAML", in: "apiVersion: v1\nkind: [\n", err: "document 1"},
		{name: "too large", in: strings.Repeat("#", MaxRelease+1), err: "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Parse(strings.NewReader(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || len(objs) != tc.objects {
				t.Fatalf("%d objects, %v; want %d", len(objs), err, tc.objects)
			}
		})
	}
}

func TestPartOf(t *testing.T) {
	obj := func(labels map[string]string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{}
		u.SetKind("ConfigMap")
		u.SetName("x")
		u.SetLabels(labels)
		return u
	}
	core := map[string]string{"app.kubernetes.io/part-of": "kaitoflow", PartLabel: "core"}
	for _, tc := range []struct {
		name  string
		objs  []*unstructured.Unstructured
		part  string
		fails string
	}{
		{name: "one part", objs: []*unstructured.Unstructured{obj(core), obj(core)}, part: "core"},
		{name: "not kaitoflow's", objs: []*unstructured.Unstructured{obj(map[string]string{PartLabel: "core"})}, fails: "not a kaitoflow release"},
		{name: "two parts", objs: []*unstructured.Unstructured{obj(core), obj(map[string]string{"app.kubernetes.io/part-of": "kaitoflow", PartLabel: "webhook"})},
			fails: "one part"},
		{name: "no part", objs: []*unstructured.Unstructured{obj(map[string]string{"app.kubernetes.io/part-of": "kaitoflow"})}, fails: "one part"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			part, err := partOf(tc.objs)
			if tc.fails != "" {
				if err == nil || !strings.Contains(err.Error(), tc.fails) {
					t.Fatalf("err %v, want %q", err, tc.fails)
				}
				return
			}
			if err != nil || part != tc.part {
				t.Fatalf("part %q, %v; want %q", part, err, tc.part)
			}
		})
	}
}

// A release file is operator input: any bytes give objects with a kind and a name, or an error.
func FuzzParse(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: x\n"))
	f.Add([]byte(`{"kind":"A","metadata":{"name":"b"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, err := Parse(strings.NewReader(string(b)))
		if err != nil {
			return
		}
		for _, u := range objs {
			if u.GetKind() == "" || u.GetName() == "" {
				t.Fatalf("an object without kind or name: %v", u.Object)
			}
		}
	})
}
