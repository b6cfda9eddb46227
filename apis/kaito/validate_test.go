package kaito

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

const seedPath = "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"

func TestSeedManifestValidates(t *testing.T) {
	doc, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	w, err := DecodeWorkspace(doc)
	if err != nil {
		t.Fatalf("decode seed: %v", err)
	}
	if errs := w.Validate(netguard.AddressPolicy{}); len(errs) > 0 {
		t.Fatalf("seed manifest refused:\n%s", FieldErrors(errs))
	}
	if got, want := w.Tuning.Method, MethodQLoRA; got != want {
		t.Errorf("method = %q, want %q", got, want)
	}
	if got, want := w.InstanceType(), "Standard_NC6s_v3"; got != want {
		t.Errorf("instanceType = %q, want %q", got, want)
	}
	if got := w.Resource.LabelSelector.MatchLabels["app"]; got != "tuning-phi-3" {
		t.Errorf("labelSelector app = %q", got)
	}
	if got := w.PresetName(); got != "phi-3-mini-128k-instruct" {
		t.Errorf("preset = %q", got)
	}
	if got := w.Tuning.Output.ImagePushSecret; got != "ACR_REGISTRY_SECRET_HERE" {
		t.Errorf("imagePushSecret = %q", got)
	}
}

// base is a valid tuning manifest; each case below breaks it in one way.
const base = `apiVersion: kaito.sh/v1alpha1
kind: Workspace
metadata:
  name: ws
resource:
  instanceType: Standard_NC24ads_A100_v4
  labelSelector:
    matchLabels:
      app: ws
tuning:
  preset:
    name: phi-3-mini-128k-instruct
  method: lora
  input:
    urls: ["https://example.com/data.parquet"]
  output:
    image: example.azurecr.io/adapter:1
    imagePushSecret: push
`

func TestValidateRefusesBadManifests(t *testing.T) {
	tests := []struct {
		name      string
		old, new  string // replace old with new in base
		wantField string
		wantMsg   string
	}{
		{"no name", "  name: ws\n", "", "metadata.name", "Required"},
		{"name not DNS-1123", "name: ws", "name: WS_1", "metadata.name", "RFC 1123"},
		{"name too long", "name: ws", "name: " + strings.Repeat("a", 200), "metadata.name", "may not be more than 63"},
		{"bad namespace", "  name: ws\n", "  name: ws\n  namespace: Bad.NS\n", "metadata.namespace", "RFC 1123"},
		{"wrong apiVersion", "kaito.sh/v1alpha1", "kaito.sh/v9", "apiVersion", "Unsupported"},
		{"wrong kind", "kind: Workspace", "kind: Pod", "kind", "Unsupported"},
		{"no labelSelector", "  labelSelector:\n    matchLabels:\n      app: ws\n", "", "resource.labelSelector", "Required"},
		{"bad selector", "    matchLabels:\n      app: ws\n", "    matchExpressions:\n    - {key: app, operator: Sideways}\n", "resource.labelSelector", "not a valid"},
		{"zero count", "  instanceType:", "  count: 0\n  instanceType:", "resource.count", "at least 1"},
		{"not an Azure SKU", "Standard_NC24ads_A100_v4", "p4d.24xlarge", "resource.instanceType", "Azure VM size"},
		{"bad method", "method: lora", "method: dora", "tuning.method", "Unsupported"},
		{"no method", "  method: lora\n", "", "tuning.method", "Required"},
		{"no preset", "  preset:\n    name: phi-3-mini-128k-instruct\n", "", "tuning.preset.name", "Required"},
		{"two inputs", `urls: ["https://example.com/data.parquet"]`, "urls: [\"https://example.com/d\"]\n    image: example.azurecr.io/data:1", "tuning.input", "exactly one"},
		{"no input", "  input:\n    urls: [\"https://example.com/data.parquet\"]\n", "", "tuning.input", "Required"},
		{"no push secret", "    imagePushSecret: push\n", "", "tuning.output.imagePushSecret", "Required"},
		{"two outputs", "    imagePushSecret: push\n", "    imagePushSecret: push\n    volumeSource: {emptyDir: {}}\n", "tuning.output", "exactly one"},
		{"no output", "  output:\n    image: example.azurecr.io/adapter:1\n    imagePushSecret: push\n", "", "tuning.output", "Required"},
		{"bad output image", "example.azurecr.io/adapter:1", "https://example.azurecr.io/adapter:1", "tuning.output.image", "image reference"},
		{"file URL", "https://example.com/data.parquet", "file:///etc/passwd", "tuning.input.urls[0]", "only http and https"},
		{"gopher URL", "https://example.com/data.parquet", "gopher://example.com/1", "tuning.input.urls[0]", "only http and https"},
		{"loopback IP", "https://example.com/data.parquet", "http://127.0.0.1:8080/x", "tuning.input.urls[0]", "loopback"},
		{"localhost", "https://example.com/data.parquet", "http://localhost/x", "tuning.input.urls[0]", "loopback"},
		{"IPv6 loopback", "https://example.com/data.parquet", "http://[::1]/x", "tuning.input.urls[0]", "loopback"},
		{"metadata service", "https://example.com/data.parquet", "http://169.254.169.254/metadata/identity", "tuning.input.urls[0]", "link-local"},
		{"private 10/8", "https://example.com/data.parquet", "http://10.0.0.4/x", "tuning.input.urls[0]", "private"},
		{"private 192.168", "https://example.com/data.parquet", "https://192.168.1.1/x", "tuning.input.urls[0]", "private"},
		{"unspecified", "https://example.com/data.parquet", "http://0.0.0.0/x", "tuning.input.urls[0]", "unspecified"},
		{"IPv4-mapped IPv6 loopback", "https://example.com/data.parquet", "http://[::ffff:127.0.0.1]/x", "tuning.input.urls[0]", "loopback"},
		{"CGNAT", "https://example.com/data.parquet", "http://100.64.0.10/x", "tuning.input.urls[0]", "carrier-grade"},
		{"output registry on loopback", "example.azurecr.io/adapter:1", "127.0.0.1:4222/x/y:z", "tuning.output.image", "loopback"},
		{"input image on a private address", `urls: ["https://example.com/data.parquet"]`, "image: 10.0.0.5:5000/data:1", "tuning.input.image", "private"},
		{"preset image on localhost", "    name: phi-3-mini-128k-instruct\n", "    name: phi-3-mini-128k-instruct\n    presetOptions:\n      image: localhost:5000/phi:1\n", "tuning.preset.presetOptions.image", "loopback"},
		{"credentials in URL", "https://example.com/data.parquet", "https://u:p@example.com/x", "tuning.input.urls[0]", "credentials"},
		{"bad model access secret", "    name: phi-3-mini-128k-instruct\n", "    name: phi-3-mini-128k-instruct\n    presetOptions:\n      modelAccessSecret: HF_Token\n", "tuning.preset.presetOptions.modelAccessSecret", "not a Secret name"},
		{"bad weights cache", "  name: ws\n", "  name: ws\n  annotations:\n    kaitoflow.io/weights-cache: Weights/Cache\n", "metadata.annotations[kaitoflow.io/weights-cache]", "not a PersistentVolumeClaim name"},
		{"bad serving pool", "  name: ws\n", "  name: ws\n  annotations:\n    kaitoflow.io/serving-pool: Phi3_Pool\n", "metadata.annotations[kaitoflow.io/serving-pool]", "not a service name"},
		{"bad serving pool size", "  name: ws\n", "  name: ws\n  annotations:\n    kaitoflow.io/serving-pool-size: \"100\"\n", "metadata.annotations[kaitoflow.io/serving-pool-size]", "from 1 to 64"},
		{"serving pool without labels", "  name: ws\nresource:\n  instanceType: Standard_NC24ads_A100_v4\n  labelSelector:\n    matchLabels:\n      app: ws\n",
			"  name: ws\n  annotations:\n    kaitoflow.io/serving-pool: phi3\nresource:\n  instanceType: Standard_NC24ads_A100_v4\n", "resource.labelSelector.matchLabels", "serving pool"},
		{"v1beta1 GPU partition", "  labelSelector:\n", "  partition:\n    mode: mig\n    profile: 1g.10gb\n  labelSelector:\n", "resource.partition", "not supported"},
		{"multi-node tuning", "  instanceType:", "  count: 2\n  instanceType:", "resource.count", "multiple nodes"},
		{"tuning and inference", "tuning:\n", "inference:\n  preset:\n    name: phi-3-mini-4k-instruct\ntuning:\n", "inference", "cannot both"},
		{"eval data on loopback", "  name: ws\n", "  name: ws\n  annotations:\n    kaitoflow.io/eval-data: http://127.0.0.1/eval.jsonl\n",
			"metadata.annotations[kaitoflow.io/eval-data]", "loopback"},
		{"eval data without URLs", "  name: ws\n", "  name: ws\n  annotations:\n    kaitoflow.io/eval-data: \" , \"\n",
			"metadata.annotations[kaitoflow.io/eval-data]", "comma-separated URLs"},
		{"eval data of 9 URLs", "  name: ws\n", "  name: ws\n  annotations:\n    kaitoflow.io/eval-data: " +
			strings.TrimSuffix(strings.Repeat("https://example.com/e.jsonl,", 9), ",") + "\n", "metadata.annotations[kaitoflow.io/eval-data]", "must have at most 8"},
		// Each part within its own limit, the whole over what every event of the pipeline carries.
		{"workspace over 256 KiB", "  name: ws\n", "  name: ws\n  annotations:\n    note: " + strings.Repeat("n", 200<<10) + "\n", "workspace", "262144"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(base, tc.old) {
				t.Fatalf("test bug: %q not in base", tc.old)
			}
			doc := strings.Replace(base, tc.old, tc.new, 1)
			if tc.wantField == "workspace" {
				doc = strings.Replace(doc, `urls: ["https://example.com/data.parquet"]`, `urls: [`+longURLs(100)+`]`, 1)
			}
			w, err := DecodeWorkspace([]byte(doc))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			errs := w.Validate(netguard.AddressPolicy{})
			for _, e := range errs {
				if e.Field == tc.wantField && strings.Contains(e.Error(), tc.wantMsg) {
					return
				}
			}
			t.Errorf("want an error on %s containing %q, got:\n%s", tc.wantField, tc.wantMsg, FieldErrors(errs))
		})
	}
}

func TestValidateNeitherTuningNorInference(t *testing.T) {
	w, err := DecodeWorkspace([]byte("apiVersion: kaito.sh/v1alpha1\nkind: Workspace\nmetadata: {name: x}\nresource: {labelSelector: {matchLabels: {a: b}}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	errs := w.Validate(netguard.AddressPolicy{})
	if len(errs) != 1 || errs[0].Field != "tuning" {
		t.Fatalf("got %v", errs)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	doc := strings.NewReplacer("method: lora", "method: dora", "https://example.com/data.parquet", "http://10.1.2.3/x", "    imagePushSecret: push\n", "").Replace(base)
	w, err := DecodeWorkspace([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	errs := w.Validate(netguard.AddressPolicy{})
	if len(errs) != 3 {
		t.Fatalf("want 3 errors, got %d:\n%s", len(errs), FieldErrors(errs))
	}
}

func TestDecodeRefusesUnknownFields(t *testing.T) {
	doc := strings.Replace(base, "instanceType:", "instancetype:", 1)
	if _, err := DecodeWorkspace([]byte(doc)); err == nil || !strings.Contains(err.Error(), "instancetype") {
		t.Fatalf("want an error naming instancetype, got %v", err)
	}
}

func TestSplitYAML(t *testing.T) {
	stream := "# leading comment\n---\n" + base + "---\n# only a comment\n---\n" + strings.Replace(base, "name: ws", "name: ws2", 1)
	docs, err := SplitYAML([]byte(stream))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 {
		t.Fatalf("want 2 documents, got %d", len(docs))
	}
	w, err := DecodeWorkspace(docs[1])
	if err != nil || w.Name != "ws2" {
		t.Fatalf("second document: %v %v", w, err)
	}
}

// With an output mapping, a namespace's workspaces push only under its prefixes: one team cannot
// overwrite another's tags through a shared registry identity.
func TestOutputRepositoriesPerNamespace(t *testing.T) {
	p := netguard.AddressPolicy{Outputs: map[string][]string{"team-a": {"acr.azurecr.io/team-a"}, "*": {"acr.azurecr.io/shared/"}}}
	for _, tc := range []struct {
		ns, image string
		ok        bool
	}{
		{"team-a", "acr.azurecr.io/team-a/adapter:1", true},
		{"team-a", "acr.azurecr.io/team-a/deep/adapter@sha256:" + strings.Repeat("a", 64), true},
		{"team-a", "acr.azurecr.io/team-b/adapter:1", false},
		{"team-a", "acr.azurecr.io/team-ab/adapter:1", false}, // a prefix ends at a path boundary
		{"team-b", "acr.azurecr.io/team-a/adapter:1", false},
		{"team-b", "acr.azurecr.io/shared/team-b:1", true},
	} {
		doc := strings.Replace(strings.Replace(base, "example.azurecr.io/adapter:1", tc.image, 1), "  name: ws\n", "  name: ws\n  namespace: "+tc.ns+"\n", 1)
		w, err := DecodeWorkspace([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		errs := w.Validate(p)
		if ok := len(errs) == 0; ok != tc.ok {
			t.Errorf("%s pushing to %s: %v, want ok=%v", tc.ns, tc.image, errs, tc.ok)
		}
		if !tc.ok && (len(errs) != 1 || errs[0].Field != "tuning.output.image") {
			t.Errorf("%s pushing to %s: want one error on tuning.output.image, got %v", tc.ns, tc.image, errs)
		}
	}
}

// longURLs is n dataset URLs of about 1 KiB each, as a YAML flow sequence's items.
func longURLs(n int) string {
	urls := make([]string, n)
	for i := range urls {
		urls[i] = fmt.Sprintf("%q", fmt.Sprintf("https://example.com/%04d/%s.parquet", i, strings.Repeat("d", 1000)))
	}
	return strings.Join(urls, ", ")
}

// An eval set of URLs the address policy admits is accepted, and read back in order.
func TestEvalDataAnnotation(t *testing.T) {
	w, err := DecodeWorkspace([]byte(strings.Replace(base, "  name: ws\n",
		"  name: ws\n  annotations:\n    kaitoflow.io/eval-data: https://example.com/a.jsonl, https://example.com/b.parquet\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if errs := w.Validate(netguard.AddressPolicy{}); len(errs) > 0 {
		t.Fatalf("refused: %v", errs)
	}
	if got := w.EvalDataURLs(); !slices.Equal(got, []string{"https://example.com/a.jsonl", "https://example.com/b.parquet"}) {
		t.Errorf("EvalDataURLs = %v", got)
	}
}
