package testenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Seed returns the seed workspace (Kaito's fine-tuning guide's manifest) in namespace, with the
// plan provision's fit check makes for it.
func Seed(t testing.TB, namespace string) (*kaito.Workspace, *events.Plan) {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(root, "examples", "fine-tuning", "kaito_workspace_tuning_phi_3.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ws, err := kaito.DecodeWorkspace(doc)
	if err != nil {
		t.Fatal(err)
	}
	ws.Namespace = namespace
	return ws, Plan(t, ws)
}

// Plan is provision's plan for ws with the built-in catalog and no ConfigMaps.
func Plan(t testing.TB, ws *kaito.Workspace) *events.Plan {
	t.Helper()
	cat, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	plan, err := (&presets.Planner{Catalog: cat}).Plan(context.Background(), ws)
	if err != nil {
		t.Fatal(err)
	}
	return plan
}

// Adapter writes a small but well-formed PEFT adapter (adapter_config.json and a
// safetensors file with a valid header) into dir and describes its files, as job-run would.
func Adapter(t testing.TB, dir string) []events.AdapterFile {
	t.Helper()
	header := []byte(`{"__metadata__":{"format":"pt"}}`)
	var out []events.AdapterFile
	for _, f := range []struct {
		name string
		b    []byte
	}{
		{"adapter_config.json", []byte(`{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["qkv_proj","o_proj"],"base_model_name_or_path":"microsoft/Phi-3-mini-128k-instruct"}`)},
		{"adapter_model.safetensors", append([]byte{byte(len(header)), 0, 0, 0, 0, 0, 0, 0}, header...)},
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.b, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(f.b)
		out = append(out, events.AdapterFile{Path: f.name, Size: int64(len(f.b)), Digest: "sha256:" + hex.EncodeToString(sum[:])})
	}
	return out
}

// Registry starts an in-process OCI registry (go-containerregistry's), a stand-in for ACR, and
// returns its host:port.
func Registry(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// PushAdapter pushes the Adapter files as publish lays them out, plus a file naming tag (so each
// tag is another adapter), to host/repo:tag and returns the image's digest reference.
func PushAdapter(t testing.TB, host, repo, tag string) string {
	t.Helper()
	dir := t.TempDir()
	files := Adapter(t, dir)
	note := []byte("adapter " + tag + "\n")
	if err := os.WriteFile(filepath.Join(dir, "README.md"), note, 0o644); err != nil {
		t.Fatal(err)
	}
	files = append(files, events.AdapterFile{Path: "README.md", Size: int64(len(note))})
	return PushAdapterFiles(t, host, repo, tag, dir, files)
}

// PushAdapterFiles pushes files of dir as publish lays an adapter image out (Kaito's layout) to
// host/repo:tag and returns the image's digest reference.
func PushAdapterFiles(t testing.TB, host, repo, tag, dir string, files []events.AdapterFile) string {
	t.Helper()
	img, err := adapter.BuildImage(dir, files, time.Unix(0, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return ref.Context().Digest(d.String()).String()
}
