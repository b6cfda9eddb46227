package deploy_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kaitoflow/kaitoflow/internal/compose/pipeline"
)

// The release: ko (the build pinned by tools/ko; hack/ko.sh builds it and .ci/run names it in
// KAITOFLOW_KO) resolves deploy/knative into manifests that name kaitoflow's images (its own and
// chat-proxy's) by digest everywhere, pushed to a registry. Stand-ins, both named: the registry
// is go-containerregistry's in-process one, and the base image is one this test makes (an empty
// linux filesystem), since nothing can be pulled here; the build, the push and the resolution are
// ko's own.
func TestReleaseWithKo(t *testing.T) {
	ko := os.Getenv("KAITOFLOW_KO")
	if ko == "" {
		if os.Getenv("KAITOFLOW_REQUIRE_KO") != "" {
			t.Fatal("KAITOFLOW_REQUIRE_KO is set but KAITOFLOW_KO does not name ko (hack/ko.sh prints its path)")
		}
		t.Skip("KAITOFLOW_KO is not set: KAITOFLOW_KO=$(hack/ko.sh) go test ./deploy -run Release")
	}
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	base := pushBase(t, host+"/base:latest")

	var stream bytes.Buffer
	var parts []object
	for _, dir := range append([]string{"knative"}, optionalParts()...) {
		parts = append(parts, load(t, dir)...)
	}
	for _, o := range parts {
		stream.WriteString("---\n")
		stream.Write(o.doc)
	}
	in := filepath.Join(t.TempDir(), "deploy.yaml")
	if err := os.WriteFile(in, stream.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// -B: the image is <repo>/kaitoflow, as hack/release.sh names it.
	cmd := exec.CommandContext(ctx, ko, "resolve", "-f", in, "-B", "--platform", "linux/"+runtime.GOARCH, "--sbom", "none")
	cmd.Dir = ".." // the module root, where .ko.yaml is
	cmd.Env = append(os.Environ(), "KO_DOCKER_REPO="+host, "KO_DEFAULTBASEIMAGE="+base, "KOCACHE="+t.TempDir(), "KAITOFLOW_VERSION=v0.0.0-test")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ko resolve: %v\n%s", err, stderr.String())
	}
	if bytes.Contains(out, []byte("ko://")) {
		t.Fatalf("ko resolve left ko:// references:\n%s", out)
	}

	// Every reference to kaitoflow's images is one ko pushed, by digest: each function's own, the
	// CLI's (the controller and the ingress adapters), job-run's and chat-proxy's (the ConfigMap's
	// wrapper and proxy images).
	ownImages := append([]string{"kaitoflow", "chat-proxy", "job-run"}, pipeline.Names()...)
	resolved := parseObjects(t, "release.yaml", out)
	refs := map[string][]string{}
	for _, o := range resolved {
		for _, ref := range imageRefs(o.u) {
			refs[ref] = append(refs[ref], o.String())
		}
	}
	images := map[string]string{} // repository → the digest reference
	for ref, where := range refs {
		if !strings.Contains(ref, host) {
			continue // a third party's (vLLM's)
		}
		repo, _, ok := strings.Cut(strings.TrimPrefix(ref, host+"/"), "@sha256:")
		if !ok || !slices.Contains(ownImages, repo) {
			t.Errorf("%v name %s, not an image ko pushed by digest", where, ref)
			continue
		}
		if images[repo] != "" && images[repo] != ref {
			t.Errorf("two %s images: %s and %s", repo, images[repo], ref)
		}
		images[repo] = ref
	}
	for _, repo := range ownImages {
		if images[repo] == "" {
			t.Errorf("no %s image in the resolved manifests", repo)
		}
	}
	if t.Failed() {
		t.Fatalf("resolved manifests:\n%s", out)
	}
	if n := len(refs[images["kaitoflow"]]); n < 3 {
		t.Errorf("kaitoflow's image is named %d times, want the controller and the ingress adapters: %v", n, refs[images["kaitoflow"]])
	}

	// Each image runs its binary at /ko-app/<its name>, where the manifests and the generated pods
	// call it: kaitoflow's answers `version`, the others their usage, which names them.
	for _, repo := range ownImages {
		entrypoint, arg, says := "/ko-app/"+repo, "--help", repo
		if repo == "kaitoflow" {
			arg, says = "version", "kaitoflow "
		}
		ref, err := name.ParseReference(images[repo])
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(ref)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if got := cf.Config.Entrypoint; len(got) != 1 || got[0] != entrypoint {
			t.Errorf("%s: entrypoint %v, want [%s]", repo, got, entrypoint)
		}
		if runtime.GOOS == "linux" {
			bin := extract(t, img, strings.TrimPrefix(entrypoint, "/"))
			v, err := exec.CommandContext(ctx, bin, arg).CombinedOutput()
			if err != nil || !strings.Contains(string(v), says) {
				t.Errorf("%s %s: %v: %s", entrypoint, arg, err, v)
			}
		}
	}
	for _, o := range resolved {
		for _, c := range commands(o.u) {
			if repo, ok := strings.CutPrefix(c, "/ko-app/"); ok && !slices.Contains(ownImages, repo) {
				t.Errorf("%s runs %s, which no kaitoflow image has", o, c)
			}
		}
	}

	// The release passes what the source manifests pass.
	checkManifests(t, resolved)
	dryRunApply(t, resolved)
}

// pushBase pushes an empty linux image for this machine's architecture to ref and returns ref.
func pushBase(t *testing.T, ref string) string {
	t.Helper()
	cf, err := empty.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	img, err := mutate.ConfigFile(empty.Image, cf)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

// imageRefs are an object's container images and any ConfigMap value that names an image.
func imageRefs(u *unstructured.Unstructured) []string {
	var refs []string
	if u.GetKind() == "ConfigMap" {
		data, _, _ := unstructured.NestedStringMap(u.Object, "data")
		for k, v := range data {
			if strings.HasSuffix(k, "_IMAGE") {
				refs = append(refs, v)
			}
		}
		return refs
	}
	for _, c := range containers(u) {
		if img, ok := c["image"].(string); ok {
			refs = append(refs, img)
		}
	}
	return refs
}

// commands are the first elements of an object's containers' commands.
func commands(u *unstructured.Unstructured) []string {
	var out []string
	for _, c := range containers(u) {
		if cmd, ok := c["command"].([]any); ok && len(cmd) > 0 {
			if s, ok := cmd[0].(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// containers finds every container and init container in an object, at any depth (a Knative
// Service's template, a Deployment's, a Job's).
func containers(u *unstructured.Unstructured) []map[string]any {
	var out []map[string]any
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, child := range x {
				if list, ok := child.([]any); ok && (k == "containers" || k == "initContainers") {
					for _, c := range list {
						if m, ok := c.(map[string]any); ok {
							out = append(out, m)
						}
					}
					continue
				}
				walk(child)
			}
		case []any:
			for _, child := range x {
				walk(child)
			}
		}
	}
	walk(u.Object)
	return out
}

// extract writes the file at path in img's filesystem to a temporary executable and returns it.
func extract(t *testing.T, img v1.Image, path string) string {
	t.Helper()
	fs := mutate.Extract(img)
	defer fs.Close()
	tr := tar.NewReader(fs)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("the image has no %s", path)
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(h.Name, "/") != path {
			continue
		}
		out := filepath.Join(t.TempDir(), filepath.Base(path))
		f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, tr); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return out
	}
}
