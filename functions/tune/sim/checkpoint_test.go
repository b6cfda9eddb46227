package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

// A run is stopped part way (the kubelet's SIGTERM when its node goes), after job-run has uploaded
// its checkpoints to the output repository (an in-process OCI registry) and pruned all but the
// newest two. The next pod of the same plan fetches the newest one, the trainer (the sim, through
// the same job-run) continues from its step to the planned 100, and once the adapter is stored the
// checkpoints are deleted. A run of another plan continues none.
func TestCheckpointsAreUploadedPrunedAndResumedFrom(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(stdlog.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	output := host + "/adapters/phi-3:0.0.1"
	repo, err := name.NewRepository(host+"/adapters/phi-3", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tag := jobrun.CheckpointTag("default", "ws", 1, "plan-a")
	pod := 0
	config := func(tag string) jobrun.Config {
		pod++ // a new pod: nothing left on disk
		results := filepath.Join(dir, fmt.Sprintf("results-%d", pod))
		return jobrun.Config{
			DataDir: filepath.Join(dir, "data"), ResultsDir: results, TerminationLog: filepath.Join(dir, fmt.Sprintf("termination-%d", pod)),
			OutputImage: output, InsecureRegistry: true, CheckpointTag: tag, KeepCheckpoints: 2,
			Policy: netguard.AddressPolicy{Allow: []string{"127.0.0.1"}}, // --allow-host, as the Job passes it
			Env:    []string{TrainerEnv + "=1"},
			Command: []string{self, "--results", results, "--delay", "6s", "--ref", "default/ws/1",
				"--preset", "phi-3-mini-128k-instruct", "--method", "qlora", "--dtype", "bfloat16", "--batch", "4", "--seq", "2048"},
			Stdout: io.Discard,
		}
	}
	checkpointsOf := func(tag string) []string {
		tags, err := remote.List(repo)
		if err != nil {
			return nil
		}
		return slices.DeleteFunc(tags, func(s string) bool { return !strings.HasPrefix(s, tag+"-s") })
	}
	checkpoints := func() []string { return checkpointsOf(tag) }
	// stopAt60 runs job-run with tag until its checkpoint at step 60 is in the registry, then stops
	// it as the kubelet does when the node goes.
	stopAt60 := func(tag string) {
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- jobrun.Run(ctx, config(tag), slog.New(slog.DiscardHandler)) }()
		for deadline := time.Now().Add(20 * time.Second); !slices.Contains(checkpointsOf(tag), tag+"-s60"); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no checkpoint at step 60 in the registry; tags %v", checkpointsOf(tag))
			}
		}
		stop()
		var exit jobrun.ExitError
		if err := <-done; !errors.As(err, &exit) {
			t.Fatalf("the stopped run returned %v", err)
		}
	}

	stopAt60(tag)
	// The newest two stay: 40 and 60, or 60 and 80 if the run got one further before the
	// signal reached it.
	kept := checkpoints()
	newest := 60
	if slices.Contains(kept, tag+"-s80") {
		newest = 80
	}
	want := []string{fmt.Sprintf("%s-s%d", tag, newest-20), fmt.Sprintf("%s-s%d", tag, newest)}
	if slices.Sort(kept); !slices.Equal(kept, want) {
		t.Fatalf("checkpoints left in the registry: %v; want %v", kept, want)
	}

	if err := jobrun.Run(context.Background(), config(tag), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("termination-%d", pod)))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"steps":100`, fmt.Sprintf(`"resumed_from_step":%d`, newest)} {
		if !strings.Contains(string(sum), want) {
			t.Errorf("summary %s\nwant %s", sum, want)
		}
	}
	// The run's newest two stay for publish, which makes them servable adapters and deletes
	// them (functions/publish tests that); deleted here as publish would.
	kept = checkpoints()
	if slices.Sort(kept); !slices.Equal(kept, []string{tag + "-s60", tag + "-s80"}) {
		t.Errorf("checkpoints left after the adapter was stored: %v; want steps 60 and 80 for publish", kept)
	}
	for _, c := range kept {
		desc, err := remote.Head(repo.Tag(c))
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Delete(repo.Digest(desc.Digest.String())); err != nil {
			t.Fatal(err)
		}
		_ = remote.Delete(repo.Tag(c)) // a registry that keeps the tag of a deleted manifest
	}

	// A re-planned attempt (another plan, so another tag) continues none of them: it deletes
	// them and starts from step 0.
	stopAt60(tag)
	other := jobrun.CheckpointTag("default", "ws", 1, "plan-b")
	if err := jobrun.Run(context.Background(), config(other), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if sum, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("termination-%d", pod))); strings.Contains(string(sum), "resumed_from_step") {
		t.Errorf("another plan's run resumed: %s", sum)
	}
	// The first plan's are gone; the new run's newest two stay for publish.
	left := checkpointsOf(other)
	if slices.Sort(left); len(checkpoints()) != 0 || !slices.Equal(left, []string{other + "-s60", other + "-s80"}) {
		t.Errorf("checkpoints left: %v and %v", checkpoints(), left)
	}
}
