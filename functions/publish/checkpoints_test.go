package publish

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
)

// The checkpoints job-run kept of a successful run become servable adapters beside the adapter:
// each under <tag>-g<generation>-s<step>, a manifest of its own (pruning checkpoints by digest never
// takes it), with its eval loss; the checkpoints go, another generation's stay, and a redelivery
// reports the same ones.
func TestCheckpointsBecomeServableAdapters(t *testing.T) {
	job, dir, files := seedJob(t)
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	repo, err := name.NewRepository(host + "/image_name_here")
	if err != nil {
		t.Fatal(err)
	}
	// What job-run uploads: checkpoints of this generation (two plans: a re-planned attempt's
	// too) and one of another generation, which is not this run's.
	upload := func(ws string, gen int64, plan string, step int, loss string) {
		t.Helper()
		ann := map[string]string{jobrun.AnnotationCheckpointStep: strconv.Itoa(step)}
		if loss != "" {
			ann[jobrun.AnnotationCheckpointEvalLoss] = loss
		}
		img, err := adapter.BuildImage(dir, files, time.Unix(int64(step), 0), ann)
		if err != nil {
			t.Fatal(err)
		}
		tag := repo.Tag(fmt.Sprintf("%s-s%d", jobrun.CheckpointTag(job.Ref.Namespace, ws, gen, plan), step))
		if err := remote.Write(tag, img); err != nil {
			t.Fatal(err)
		}
	}
	upload(job.Ref.Name, job.Ref.Generation, "p", 60, "1.25")
	upload(job.Ref.Name, job.Ref.Generation, "p", 80, "1.125")
	upload(job.Ref.Name, job.Ref.Generation+1, "p", 20, "")
	// Another workspace pushing to the same repository and tag: its checkpoints are its own.
	upload("another", job.Ref.Generation, "p", 60, "0.5")

	f := New(RemotePusher{}, RewriteRegistry(host), nil)
	var got [][]string
	for range 2 {
		in := events.Must(events.New("test", events.TuningCompleted, events.TuningCompleted, job.Ref, events.TuningCompletedData{
			Workspace: job.Workspace, Job: "j", Location: dir, Files: files, Finished: time.Unix(1000, 0)}, nil))
		out, err := f.Handle(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		var d events.ImagePushedData
		if len(out) != 1 || events.Data(out[0], &d) != nil {
			t.Fatalf("out %v", out)
		}
		var line []string
		for _, c := range d.Checkpoints {
			loss := "-"
			if c.EvalLoss != nil {
				loss = strconv.FormatFloat(*c.EvalLoss, 'g', -1, 64)
			}
			if !strings.HasPrefix(c.Image, host+"/image_name_here@sha256:") {
				t.Errorf("checkpoint %d's image %q is not by digest", c.Step, c.Image)
			}
			// It is an adapter image the serving side pulls as any other.
			ref, _ := name.ParseReference(c.Image)
			if n, err := adapter.Pull(ref, t.TempDir(), adapter.AdapterLimits); err != nil || n == 0 {
				t.Errorf("pull checkpoint %d: %d files, %v", c.Step, n, err)
			}
			line = append(line, fmt.Sprintf("%d:%s", c.Step, loss))
		}
		got = append(got, line)
	}
	want := []string{"60:1.25", "80:1.125"}
	if !slices.Equal(got[0], want) || !slices.Equal(got[1], want) {
		t.Fatalf("checkpoints %v, then %v on redelivery; want %v", got[0], got[1], want)
	}
	tags, err := remote.List(repo)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{ServableTag(repo.Tag("0.0.1"), job.Ref, 60), ServableTag(repo.Tag("0.0.1"), job.Ref, 80)} {
		if !strings.HasPrefix(want, "0.0.1-") || !strings.HasSuffix(want, "-g1-s"+want[len(want)-2:]) {
			t.Errorf("servable tag %q", want)
		}
		if !slices.Contains(tags, want) {
			t.Errorf("tags %v lack %s", tags, want)
		}
	}
	prefix := jobrun.GenerationCheckpoints(job.Ref.Namespace, job.Ref.Name, job.Ref.Generation)
	if slices.ContainsFunc(tags, func(s string) bool { return strings.HasPrefix(s, prefix) }) {
		t.Errorf("this run's checkpoints are still tagged: %v", tags)
	}
	if !slices.ContainsFunc(tags, func(s string) bool {
		return strings.HasPrefix(s, jobrun.GenerationCheckpoints(job.Ref.Namespace, job.Ref.Name, job.Ref.Generation+1))
	}) {
		t.Errorf("another generation's checkpoint was taken: %v", tags)
	}
	if !slices.ContainsFunc(tags, func(s string) bool {
		return strings.HasPrefix(s, jobrun.GenerationCheckpoints(job.Ref.Namespace, "another", job.Ref.Generation))
	}) {
		t.Errorf("another workspace's checkpoint was taken: %v", tags)
	}
}
