package jobrun

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/presets"
)

// CheckpointPrefix starts the line the trainer prints once a checkpoint directory is complete
// (presets/trainer): {"step": N, "path": DIR}.
var CheckpointPrefix = presets.Contract().Prefixes.Checkpoint

// uploadTimeout bounds one checkpoint's upload and pruning.
const uploadTimeout = 15 * time.Minute

// DefaultKeepCheckpoints is how many of a generation's checkpoints stay in the registry.
const DefaultKeepCheckpoints = 2

// CheckpointTag is the tag prefix of a run's checkpoints in its output repository: "ckpt-", a hash
// of namespace/name (a repository may hold many workspaces' adapters; a tag holds at most 128
// characters), the generation and a hash of plan (what fixes the run's shape: its training config,
// SKU and processes). A checkpoint continues only the run that saved it: a pod started again with
// the same plan (its node lost, a failure the Job retries) resumes, a re-planned attempt starts
// afresh. Each checkpoint is the tag plus "-s" and its step.
func CheckpointTag(namespace, name string, generation int64, plan string) string {
	ws := sha256.Sum256([]byte(namespace + "/" + name))
	p := sha256.Sum256([]byte(plan))
	return fmt.Sprintf("%s%s-g%d-p%s", checkpointPrefix, hex.EncodeToString(ws[:])[:10], generation, hex.EncodeToString(p[:])[:8])
}

const checkpointPrefix = "ckpt-"

// workspaceTags is the part of tag every checkpoint of the workspace shares, whatever the
// generation and plan.
func workspaceTags(tag string) string {
	if i := strings.Index(tag, "-g"); i > 0 {
		return tag[:i+1]
	}
	return tag
}

// AnnotationCheckpointStep on a checkpoint's manifest is its training step, and
// AnnotationCheckpointEvalLoss its eval_loss on the held-out rows (when the trainer evaluated it).
const (
	AnnotationCheckpointStep     = "kaitoflow.io/checkpoint-step"
	AnnotationCheckpointEvalLoss = "kaitoflow.io/checkpoint-eval-loss"
)

// GenerationCheckpoints is the tag prefix every checkpoint of a workspace generation's runs
// shares, whatever their plan: what publish looks for to make them servable.
func GenerationCheckpoints(namespace, name string, generation int64) string {
	tag := CheckpointTag(namespace, name, generation, "")
	return tag[:strings.LastIndex(tag, "-p")+1]
}

// checkpoints keeps a run's checkpoints outside its node: each one the trainer announces is
// uploaded to the output repository as an image tagged CheckpointTag-s<step>, one at a time and
// newest first (a checkpoint announced while another uploads replaces any still waiting), and
// all but the newest Keep are deleted. Without an output image the checkpoints stay where the
// trainer wrote them (the output volume), and only their steps are recorded.
type checkpoints struct {
	c   Config
	log *slog.Logger

	mu       sync.Mutex
	waiting  *checkpointLine
	running  bool
	done     sync.WaitGroup
	uploaded int // the newest step stored
	// cancel stops the upload in flight: nobody needs it once the run succeeded or will be
	// planned again.
	ctx    context.Context
	cancel context.CancelFunc
}

func newCheckpoints(ctx context.Context, c Config, resumed int, log *slog.Logger) *checkpoints {
	// Not cancelled with the run: a stopped run (its node draining, the kubelet's SIGTERM) is
	// exactly when its newest checkpoint must still reach the registry, within the grace period.
	uctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &checkpoints{c: c, log: log, uploaded: resumed, ctx: uctx, cancel: cancel}
}

type checkpointLine struct {
	Step int    `json:"step"`
	Path string `json:"path"`
	// EvalLoss is the checkpoint's eval_loss on the held-out rows, when the trainer evaluated
	// it before saving.
	EvalLoss *float64 `json:"eval_loss,omitempty"`
}

func (c Config) checkpointRepo() (name.Repository, bool, error) {
	if c.OutputImage == "" || c.CheckpointTag == "" {
		return name.Repository{}, false, nil
	}
	ref, err := name.ParseReference(c.OutputImage, c.nameOptions()...)
	if err != nil {
		return name.Repository{}, false, fmt.Errorf("tuning.output.image %q: %w", c.OutputImage, err)
	}
	return ref.Context(), true, nil
}

// saved is called for each checkpoint line; it never blocks the trainer's output.
func (k *checkpoints) saved(cl checkpointLine) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.waiting = &cl
	if k.running {
		return
	}
	k.running = true
	k.done.Add(1)
	go k.drain(k.ctx)
}

func (k *checkpoints) drain(ctx context.Context) {
	defer k.done.Done()
	for {
		k.mu.Lock()
		cl := k.waiting
		k.waiting = nil
		if cl == nil {
			k.running = false
			k.mu.Unlock()
			return
		}
		k.mu.Unlock()
		sctx, cancel := context.WithTimeout(ctx, uploadTimeout)
		err := k.store(sctx, *cl)
		cancel()
		if err != nil {
			k.log.Warn("job-run: checkpoint not stored; the next one is tried", "step", cl.Step, "err", err)
			continue
		}
		k.mu.Lock()
		k.uploaded = max(k.uploaded, cl.Step)
		k.mu.Unlock()
	}
}

// newest is the step of the newest checkpoint stored so far (0: none).
func (k *checkpoints) newest() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.uploaded
}

// wait lets the upload in flight finish (the trainer has ended: its last checkpoint is the one
// a next attempt needs); with abandon, it is cancelled first.
func (k *checkpoints) wait(abandon bool) {
	if abandon {
		k.cancel()
	}
	k.done.Wait()
	k.cancel()
}

func (k *checkpoints) store(ctx context.Context, cl checkpointLine) error {
	repo, ok, err := k.c.checkpointRepo()
	if err != nil || !ok {
		return err
	}
	files, err := checkpointFiles(cl.Path)
	if err != nil {
		return err
	}
	annotations := map[string]string{AnnotationCheckpointStep: strconv.Itoa(cl.Step)}
	if cl.EvalLoss != nil {
		annotations[AnnotationCheckpointEvalLoss] = strconv.FormatFloat(*cl.EvalLoss, 'g', -1, 64)
	}
	img, err := adapter.BuildImage(cl.Path, files, time.Now(), annotations)
	if err != nil {
		return err
	}
	tag := repo.Tag(fmt.Sprintf("%s-s%d", k.c.CheckpointTag, cl.Step))
	opts := append(k.c.remoteOptions(), remote.WithContext(ctx))
	if err := remote.Write(tag, img, opts...); err != nil {
		return fmt.Errorf("upload checkpoint %s: %w", tag, err)
	}
	k.log.Info("job-run: checkpoint uploaded", "tag", tag.String(), "step", cl.Step, "files", len(files))
	_, err = k.c.pruneCheckpoints(ctx, repo, k.c.keep(), false)
	return err
}

func (c Config) keep() int {
	if c.KeepCheckpoints <= 0 {
		return DefaultKeepCheckpoints
	}
	return c.KeepCheckpoints
}

// checkpointFiles are the regular files of a checkpoint directory: transformers writes them flat
// (adapter, optimizer and scheduler state, RNG states, trainer_state.json).
func checkpointFiles(dir string) ([]events.AdapterFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	var files []events.AdapterFile
	for _, e := range entries {
		if e.Type().IsRegular() {
			files = append(files, events.AdapterFile{Path: e.Name()})
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("checkpoint %s has no files", dir)
	}
	return files, nil
}

// storedCheckpoints lists the workspace's checkpoint tags in repo.
func (c Config) storedCheckpoints(ctx context.Context, repo name.Repository) ([]string, error) {
	tags, err := remote.List(repo, append(c.remoteOptions(), remote.WithContext(ctx))...)
	if gone(err) {
		return nil, nil // no repository yet: no checkpoints
	}
	if err != nil {
		return nil, fmt.Errorf("list checkpoints in %s: %w", repo, err)
	}
	return slices.DeleteFunc(tags, func(t string) bool { return !strings.HasPrefix(t, workspaceTags(c.CheckpointTag)) }), nil
}

// steps are the steps of this run's checkpoints among tags, in order.
func (c Config) steps(tags []string) []int {
	var steps []int
	for _, t := range tags {
		rest, ok := strings.CutPrefix(t, c.CheckpointTag+"-s")
		if n, err := strconv.Atoi(rest); ok && err == nil {
			steps = append(steps, n)
		}
	}
	slices.Sort(steps)
	return steps
}

// pruneCheckpoints deletes all but the newest keep of this run's checkpoints (keep 0: all), and
// with others, every other checkpoint of the workspace: an earlier generation's, or a plan no
// attempt will continue. It returns the steps of this run's checkpoints it kept, oldest first.
func (c Config) pruneCheckpoints(ctx context.Context, repo name.Repository, keep int, others bool) ([]int, error) {
	tags, err := c.storedCheckpoints(ctx, repo)
	if err != nil {
		return nil, err
	}
	steps := c.steps(tags)
	cut := max(len(steps)-keep, 0)
	var del []string
	for _, s := range steps[:cut] {
		del = append(del, fmt.Sprintf("%s-s%d", c.CheckpointTag, s))
	}
	if others {
		for _, t := range tags {
			if !strings.HasPrefix(t, c.CheckpointTag+"-s") {
				del = append(del, t)
			}
		}
	}
	opts := append(c.remoteOptions(), remote.WithContext(ctx))
	for _, t := range del {
		tag := repo.Tag(t)
		// By digest: the distribution spec deletes manifests, and registries (ACR among them)
		// need not accept a tag there.
		desc, err := remote.Head(tag, opts...)
		if err != nil {
			return nil, fmt.Errorf("prune checkpoint %s: %w", tag, err)
		}
		if err := remote.Delete(repo.Digest(desc.Digest.String()), opts...); err != nil {
			return nil, fmt.Errorf("prune checkpoint %s: %w", tag, err)
		}
		// A registry that keeps tags apart from their manifests (ggcr's own) still lists the
		// tag: delete it too. Where the manifest took its tags with it, the tag is already gone.
		if err := remote.Delete(tag, opts...); err != nil && !gone(err) {
			return nil, fmt.Errorf("prune checkpoint tag %s: %w", tag, err)
		}
	}
	return steps[cut:], nil
}

// restore fetches the run's newest checkpoint into the results directory and returns its
// directory and step (step 0: there is none, and the run starts from the beginning). Checkpoints
// of the workspace that no run will continue are deleted first. With no output image the
// checkpoints are where the trainer wrote them (the output volume), kept only while the marker
// file says they are this run's.
func (c Config) restore(ctx context.Context) (string, int, error) {
	repo, ok, err := c.checkpointRepo()
	if err != nil || c.CheckpointTag == "" {
		return "", 0, err
	}
	if !ok {
		return c.restoreLocal()
	}
	steps, err := c.pruneCheckpoints(ctx, repo, c.keep(), true)
	if err != nil {
		return "", 0, err
	}
	if len(steps) == 0 {
		return "", 0, nil
	}
	step := steps[len(steps)-1]
	dir := filepath.Join(c.ResultsDir, fmt.Sprintf("checkpoint-%d", step))
	tag := repo.Tag(fmt.Sprintf("%s-s%d", c.CheckpointTag, step))
	if _, err := adapter.Pull(tag, dir, adapter.DataLimits, append(c.remoteOptions(), remote.WithContext(ctx))...); err != nil {
		return "", 0, fmt.Errorf("fetch checkpoint %s: %w", tag, err)
	}
	return dir, step, nil
}

// checkpointMarker, in a results volume, names the run whose checkpoint directories are there.
const checkpointMarker = ".kaitoflow-checkpoints"

// restoreLocal is restore for checkpoints on the output volume: another run's are removed (the
// marker names another tag), this run's newest is continued.
func (c Config) restoreLocal() (string, int, error) {
	marker := filepath.Join(c.ResultsDir, checkpointMarker)
	if b, err := os.ReadFile(marker); err != nil || strings.TrimSpace(string(b)) != c.CheckpointTag {
		if err := removeLocal(c.ResultsDir); err != nil {
			return "", 0, err
		}
		if err := os.MkdirAll(c.ResultsDir, 0o755); err != nil {
			return "", 0, err
		}
		return "", 0, os.WriteFile(marker, []byte(c.CheckpointTag+"\n"), 0o644)
	}
	return newestLocal(c.ResultsDir)
}

// removeLocal deletes the checkpoint directories under dir and their marker.
func removeLocal(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "checkpoint-") {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := os.Remove(filepath.Join(dir, checkpointMarker)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// newestLocal is the newest checkpoint-<step> directory under dir holding a trainer_state.json
// (transformers writes it last).
func newestLocal(dir string) (string, int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", 0, err
	}
	best, step := "", 0
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "checkpoint-")
		n, err := strconv.Atoi(rest)
		if !ok || err != nil || !e.IsDir() || n <= step {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "trainer_state.json")); err == nil {
			best, step = filepath.Join(dir, e.Name()), n
		}
	}
	return best, step, nil
}

// gone reports a registry's 404: the repository or manifest is not there (any more).
func gone(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == 404
}
