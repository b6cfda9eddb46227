package publish

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/golden"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
)

func seedJob(t *testing.T) (tune.Job, string, []events.AdapterFile) {
	t.Helper()
	doc, err := os.ReadFile("../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := kaito.DecodeWorkspace(doc)
	if err != nil {
		t.Fatal(err)
	}
	job := tune.Job{Name: "j", Ref: events.Ref{Namespace: "default", Name: ws.Name, Generation: 1}, Workspace: *ws}
	dir := t.TempDir()
	files, err := tunesim.WriteAdapter(dir, job)
	if err != nil {
		t.Fatal(err)
	}
	return job, dir, files
}

var created = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// The adapter image is a generated manifest: its exact bytes (and so its digest) are pinned.
func TestAdapterImageGolden(t *testing.T) {
	_, dir, files := seedJob(t)
	img, err := adapter.BuildImage(dir, files, created, map[string]string{AnnotationBaseModel: "phi-3-mini-128k-instruct"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "adapter-manifest.json", indent(t, raw))
	golden.Check(t, "adapter-config.json", indent(t, cfg))

	again, err := adapter.BuildImage(dir, files, created, map[string]string{AnnotationBaseModel: "phi-3-mini-128k-instruct"})
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("the same adapter built twice has two digests: %s %s", d1, d2)
	}
}

func indent(t *testing.T, b []byte) []byte {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	return append(out, '\n')
}

func TestHandlePushesAndRedeliveryIsIdempotent(t *testing.T) {
	job, dir, files := seedJob(t)
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	f := New(RemotePusher{}, RewriteRegistry(host), nil)
	// The same outcome, observed twice: tune emits tuning.completed again after a restart, with
	// another event time (the bus keeps the first; a copy may still arrive). The run's finish
	// time, not the event's, dates the image, so both deliveries push the same digest.
	finished := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	var digests []string
	for i := range 2 {
		in, err := events.New("test", events.TuningCompleted, events.TuningCompleted, job.Ref, events.TuningCompletedData{
			Workspace: job.Workspace, Job: "j", Location: dir, Files: files, Finished: finished,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		in.SetTime(finished.Add(time.Duration(i+1) * time.Minute))
		out, err := f.Handle(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 1 || out[0].Type() != events.ImagePushed {
			t.Fatalf("out %v", out)
		}
		var d events.ImagePushedData
		if err := events.Data(out[0], &d); err != nil {
			t.Fatal(err)
		}
		if d.Tag != "0.0.1" || !strings.HasPrefix(d.Reference, host+"/image_name_here@sha256:") || d.Size <= 0 {
			t.Errorf("image.pushed %+v", d)
		}
		digests = append(digests, d.Digest)
	}
	if digests[0] != digests[1] {
		t.Errorf("redelivery pushed a different digest: %v", digests)
	}
	ref, _ := name.ParseReference(host+"/image_name_here:0.0.1", name.Insecure)
	desc, err := remote.Head(ref)
	if err != nil || desc.Digest.String() != digests[0] {
		t.Fatalf("tag points at %v (%v), want %s", desc, err, digests[0])
	}
}

func TestHandleClassifiesRegistryErrors(t *testing.T) {
	job, dir, files := seedJob(t)
	// A registry that refuses every push with 401: permanent, retrying will not grant access.
	reg := httptest.NewServer(httpStatus(401))
	defer reg.Close()
	f := New(RemotePusher{}, RewriteRegistry(strings.TrimPrefix(reg.URL, "http://")), nil)
	in := events.Must(events.New("test", events.TuningCompleted, events.TuningCompleted, job.Ref, events.TuningCompletedData{Workspace: job.Workspace, Location: dir, Files: files}, nil))
	_, err := f.Handle(context.Background(), in)
	if _, ok := events.AsPermanent(err); !ok {
		t.Errorf("401 should be permanent, got %v", err)
	}
}

// countingRegistry records the blob digests uploaded to it.
type countingRegistry struct {
	h       http.Handler
	mu      sync.Mutex
	uploads []string
}

func (c *countingRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads/") {
		c.mu.Lock()
		c.uploads = append(c.uploads, r.URL.Query().Get("digest"))
		c.mu.Unlock()
	}
	c.h.ServeHTTP(w, r)
}

func TestComposeMovesNoAdapterBytesAndAttachesProvenance(t *testing.T) {
	job, dir, files := seedJob(t)
	reg := &countingRegistry{h: registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true))}
	srv := httptest.NewServer(reg)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	target, _ := RewriteRegistry(host)(job.Workspace.Tuning.Output.Image)

	// The Job's wrapper uploads the layer, as in a cluster.
	layer, err := adapter.Layer(dir, files)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(target.Context(), layer); err != nil {
		t.Fatal(err)
	}
	blob, _ := adapter.Describe(layer)
	reg.mu.Lock()
	reg.uploads = nil
	reg.mu.Unlock()

	f := New(RemotePusher{}, RewriteRegistry(host), nil)
	in := events.Must(events.New("test", events.TuningCompleted, events.TuningCompleted, job.Ref, events.TuningCompletedData{
		Workspace: job.Workspace, Job: "j", Location: target.Context().String(), Files: files, Layer: &blob, // no local files
		Metrics: map[string]float64{"train_loss": 1.02},
	}, nil))
	out, err := f.Handle(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	reg.mu.Lock()
	for _, d := range reg.uploads {
		if d == blob.Digest {
			t.Error("the adapter layer was uploaded again")
		}
	}
	reg.mu.Unlock()
	var pushed events.ImagePushedData
	if err := events.Data(out[0], &pushed); err != nil {
		t.Fatal(err)
	}
	digest, _ := name.NewDigest(pushed.Reference, name.Insecure)
	img, err := remote.Image(digest)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	if m.Layers[0].Digest.String() != blob.Digest || m.Annotations[AnnotationMetrics] != `{"train_loss":1.02}` || m.Annotations["org.opencontainers.image.revision"] != blob.Digest {
		t.Errorf("manifest %+v", m)
	}
	// The training record is listed by the referrers API.
	idx, err := remote.Referrers(digest)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].ArtifactType != ProvenanceType {
		t.Fatalf("referrers %+v", im.Manifests)
	}
	rec, err := remote.Image(digest.Context().Digest(im.Manifests[0].Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := rec.Layers()
	rc, _ := ls[0].Uncompressed()
	b, _ := io.ReadAll(rc)
	var tr TrainingRecord
	if err := json.Unmarshal(b, &tr); err != nil || tr.Job != "j" || tr.Layer.Digest != blob.Digest || tr.Spec.Tuning.Method != "qlora" {
		t.Errorf("training record %s: %v", b, err)
	}
}

// basicAuth is a registry that wants user/password (as ACR with an admin user or token does).
type basicAuth struct {
	h          http.Handler
	user, pass string
}

func (b basicAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if u, p, ok := r.BasicAuth(); !ok || u != b.user || p != b.pass {
		w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
		return
	}
	b.h.ServeHTTP(w, r)
}

func TestPushWithTheWorkspaceSecret(t *testing.T) {
	job, dir, files := seedJob(t)
	srv := httptest.NewServer(basicAuth{h: registry.New(registry.Logger(log.New(io.Discard, "", 0))), user: "kaitoflow", pass: "s3cret-push-token"})
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	in := events.Must(events.New("test", events.TuningCompleted, events.TuningCompleted, job.Ref, events.TuningCompletedData{Workspace: job.Workspace, Location: dir, Files: files}, nil))
	for _, tc := range []struct {
		name, secret string
		ok           bool
	}{
		{"right secret", `{"auths":{"` + host + `":{"username":"kaitoflow","password":"s3cret-push-token"}}}`, true},
		{"wrong secret", `{"auths":{"` + host + `":{"username":"kaitoflow","password":"nope"}}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := New(RemotePusher{}, RewriteRegistry(host), nil).WithKeychain(func(context.Context, *kaito.Workspace) (authn.Keychain, error) {
				return registryauth.DockerConfig([]byte(tc.secret))
			})
			_, err := f.Handle(context.Background(), in)
			if tc.ok && err != nil {
				t.Fatalf("push: %v", err)
			}
			if !tc.ok {
				if _, perm := events.AsPermanent(err); !perm {
					t.Fatalf("an auth failure must fail the workspace: %v", err)
				}
				if strings.Contains(err.Error(), "nope") {
					t.Error("the secret leaked into the error")
				}
			}
		})
	}
}

// pushNothing is a Pusher that fails the test if anything is pushed.
type pushNothing struct{ t *testing.T }

func (p pushNothing) Push(_ context.Context, ref name.Reference, _ v1.Image, _ ...remote.Option) error {
	p.t.Errorf("pushed %s", ref)
	return nil
}

// With tuning.output.volumeSource the Job wrote the adapter to the volume: publish pushes
// nothing and announces kaitoflow.adapter.stored naming the volume, with the run's files and
// metrics.
func TestVolumeOutputIsAnnounced(t *testing.T) {
	job, dir, files := seedJob(t)
	job.Workspace.Tuning.Output = &kaito.DataDestination{Volume: &corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "adapters"}}}
	in, err := events.New("test", events.TuningCompleted, events.TuningCompleted, job.Ref, events.TuningCompletedData{
		Workspace: job.Workspace, Nodes: []string{"n0"}, Job: "j", Location: dir, Files: files, Metrics: map[string]float64{"eval_loss": 1.3},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := New(pushNothing{t}, nil, nil).Handle(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Type() != events.AdapterStored {
		t.Fatalf("out %v", out)
	}
	var d events.AdapterStoredData
	if err := events.Data(out[0], &d); err != nil {
		t.Fatal(err)
	}
	if d.Volume == nil || d.Volume.PersistentVolumeClaim == nil || d.Volume.PersistentVolumeClaim.ClaimName != "adapters" ||
		len(d.Files) != len(files) || d.Metrics["eval_loss"] != 1.3 || len(d.Nodes) != 1 {
		t.Errorf("adapter.stored %+v", d)
	}
}

// A registry that accepts and never answers cannot hold a publish past its push timeout: the
// step fails (retryably: the next delivery may meet a registry that answers) instead of being
// kept alive by its heartbeats forever; and a registry the workspace names on an internal
// address is refused at connect time, whatever name it was given by.
func TestPushHasADeadlineAndTheAddressPolicy(t *testing.T) {
	job, dir, files := seedJob(t)
	tarpit := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer tarpit.Close()
	in := events.Must(events.New("test", events.TuningCompleted, events.TuningCompleted, job.Ref, events.TuningCompletedData{Workspace: job.Workspace, Location: dir, Files: files}, nil))
	f := New(RemotePusher{}, RewriteRegistry(strings.TrimPrefix(tarpit.URL, "http://")), nil).WithPushTimeout(300 * time.Millisecond)
	start := time.Now()
	_, err := f.Handle(context.Background(), in)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("push to a tarpit: %v", err)
	}
	if _, ok := events.AsPermanent(err); ok {
		t.Errorf("a timeout is worth a retry: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the push was held %s", took)
	}

	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	guarded := RemotePusher{Options: []remote.Option{remote.WithTransport(netguard.Transport(netguard.AddressPolicy{}))}}
	_, err = New(guarded, RewriteRegistry(strings.TrimPrefix(reg.URL, "http://")), nil).Handle(context.Background(), in)
	if !netguard.Refused(err) {
		t.Fatalf("a push to a loopback registry through the policy: %v", err)
	}
}
