package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"log/slog"
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
	"github.com/kaitoflow/kaitoflow/functions/publish"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
)

// writeAdapter writes an adapter of size bytes (random weights: they do not compress, like real
// ones) and returns its file list.
func writeAdapter(b *testing.B, dir string, size int64) []events.AdapterFile {
	b.Helper()
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(`{"peft_type":"LORA","r":64}`), 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "adapter_model.safetensors"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		b.Fatal(err)
	}
	f.Close()
	return []events.AdapterFile{{Path: "adapter_config.json"}, {Path: "adapter_model.safetensors", Size: size}}
}

func completed(b *testing.B, image, dir string, files []events.AdapterFile, layer *events.Blob) events.TuningCompletedData {
	b.Helper()
	ws := kaito.Workspace{Tuning: &kaito.TuningSpec{Method: "qlora", Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-128k-instruct"}},
		Output: &kaito.DataDestination{Image: image, ImagePushSecret: "push"}}}
	ws.Name = "bench"
	return events.TuningCompletedData{Workspace: ws, Job: "bench-tuning-1", Location: dir, Files: files, Layer: layer}
}

// BenchmarkPublish pushes a 200 MB adapter through publish's fallback path (the adapter built and
// uploaded from files) against go-containerregistry's remote.Write of the same layer, in the same
// run, and times the compose path (the layer already in the registry, as the Job leaves it) for a
// 1 MB and a 200 MB adapter: it must not grow with the adapter.
func BenchmarkPublish(b *testing.B) {
	// Separate registries: blobs are content-addressed, and one registry would answer "already
	// have it" to the second push of the same layer.
	newRegistry := func() string {
		srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
		b.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	host, baseHost := newRegistry(), newRegistry()
	ctx := context.Background()
	big := b.TempDir()
	bigFiles := writeAdapter(b, big, 200<<20)
	small := b.TempDir()
	smallFiles := writeAdapter(b, small, 1<<20)
	f := publish.New(publish.RemotePusher{}, publish.RewriteRegistry(host), slog.New(slog.DiscardHandler))

	// Warm-up: the first 200 MB through the process pays for growing the heap and the registry's
	// buffers, whichever path goes first; neither timed path should.
	warm, err := adapter.Layer(big, bigFiles)
	if err != nil {
		b.Fatal(err)
	}
	warmRef, _ := name.NewRepository(newRegistry()+"/warmup", name.Insecure)
	if err := remote.WriteLayer(warmRef, warm); err != nil {
		b.Fatal(err)
	}

	for i := 0; b.Loop(); i++ {
		// publish, fallback path: build from the files and push the image.
		ev := events.Must(events.New("bench", events.TuningCompleted, events.TuningCompleted, events.Ref{Namespace: "default", Name: fmt.Sprintf("fallback%d", i), Generation: 1},
			completed(b, fmt.Sprintf("r.azurecr.io/fallback%d:1", i), big, bigFiles, nil), nil))
		start := time.Now()
		if _, err := f.Handle(ctx, ev); err != nil {
			b.Fatal(err)
		}
		fallback := time.Since(start)

		// Baseline: remote.Write of the same layer.
		layer, err := adapter.Layer(big, bigFiles)
		if err != nil {
			b.Fatal(err)
		}
		// The baseline runs second: the adapter file is as warm in the page cache for it as for
		// publish.
		ref, _ := name.NewRepository(fmt.Sprintf("%s/baseline%d", baseHost, i), name.Insecure)
		start = time.Now()
		if err := remote.WriteLayer(ref, layer); err != nil {
			b.Fatal(err)
		}
		base := time.Since(start)

		compose := map[string]time.Duration{}
		for _, c := range []struct {
			label string
			dir   string
			files []events.AdapterFile
		}{{"1 MB", small, smallFiles}, {"200 MB", big, bigFiles}} {
			repo := fmt.Sprintf("compose%d-%s", i, strings.ReplaceAll(c.label, " ", ""))
			target, _ := name.NewRepository(host+"/"+strings.ToLower(repo), name.Insecure)
			l, err := adapter.Layer(c.dir, c.files)
			if err != nil {
				b.Fatal(err)
			}
			if err := remote.WriteLayer(target, l); err != nil { // the Job's upload
				b.Fatal(err)
			}
			blob, _ := adapter.Describe(l)
			ev := events.Must(events.New("bench", events.TuningCompleted, events.TuningCompleted, events.Ref{Namespace: "default", Name: repo, Generation: 1},
				completed(b, "r.azurecr.io/"+repo+":1", "", c.files, &blob), nil))
			start := time.Now()
			if _, err := f.Handle(ctx, ev); err != nil {
				b.Fatal(err)
			}
			compose[c.label] = time.Since(start)
		}
		b.ReportMetric(base.Seconds()/fallback.Seconds(), "fallback-vs-remote.Write")
		b.ReportMetric(compose["200 MB"].Seconds()/compose["1 MB"].Seconds(), "compose-200MB-vs-1MB")
		b.Logf("\n200 MB adapter\ttime\nremote.Write of the layer (baseline)\t%s\npublish, fallback path (build + push + provenance)\t%s\nratio baseline/publish\t%.2f\ncompose path, 1 MB adapter\t%s\ncompose path, 200 MB adapter\t%s",
			base.Round(time.Millisecond), fallback.Round(time.Millisecond), base.Seconds()/fallback.Seconds(),
			compose["1 MB"].Round(10*time.Microsecond), compose["200 MB"].Round(10*time.Microsecond))
	}
}
