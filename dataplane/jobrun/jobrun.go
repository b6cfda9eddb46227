// Package jobrun is job-run (cmd/job-run), the tuning Job's entrypoint wrapper: it fetches the
// dataset, runs the trainer as a child process (forwarding signals), and on success uploads the
// adapter's layer to the output repository and writes a summary to the container's termination
// message. There is no sidecar waiting for a marker file: the Job ends when the trainer does, and a
// failed trainer uploads nothing.
package jobrun

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Summary is what the wrapper writes to the termination message on success: where the adapter
// went and what the run measured. Kubernetes keeps at most 4 KiB of it, so it carries scalar
// metrics only.
type Summary struct {
	Location string               `json:"location"`
	Files    []events.AdapterFile `json:"files"`
	Layer    *events.Blob         `json:"layer,omitempty"`
	Metrics  map[string]float64   `json:"metrics,omitempty"`
	// Datasets are the sha256 digests of the fetched dataset files, in input order.
	Datasets []string `json:"datasets,omitempty"`
}

// AdapterFiles are what the trainer leaves in the results directory and the image carries.
var AdapterFiles = []string{"adapter_config.json", "adapter_model.safetensors"}

// Config is one run.
type Config struct {
	DataDir, ResultsDir string
	InputURLs           []string
	InputImage          string
	OutputImage         string
	// PushSecret is a kubernetes.io/dockerconfigjson file with the output registry's credentials.
	PushSecret string
	// InsecureRegistry talks plain HTTP to the registries (tests, local registries only).
	InsecureRegistry bool
	// Policy is the address policy datasets are fetched, and registries reached, under.
	Policy netguard.AddressPolicy
	// OperatorRegistry says the registries are the operator's own stand-in (up's embedded
	// registry, a rewrite), not the workspace's choice: they are reached without the policy.
	OperatorRegistry bool
	// registries is the guarded transport every registry call of a run shares (its connections
	// too), made once by Run.
	registries     http.RoundTripper
	TerminationLog string
	Command        []string
	// Attempts at fetching each URL before giving up.
	Attempts int
	// Reporter, when set, receives the trainer's progress at most every ReportInterval.
	Reporter Reporter
	// Env is added to the trainer's environment.
	Env []string
	// Stdout receives the trainer's output (os.Stdout when nil: the pod's log); Stderr its
	// errors (os.Stderr when nil).
	Stdout, Stderr io.Writer
	// FetchBestEffort logs and skips datasets that cannot be fetched instead of failing (the
	// sim trainer, which reads none, on an offline machine).
	FetchBestEffort bool
	// CheckpointTag names the run's checkpoints (CheckpointTag); empty keeps none. KeepCheckpoints
	// of them stay in the registry (DefaultKeepCheckpoints when zero). A run that finds one of its
	// own continues from the newest: it is fetched into the results directory and the trainer
	// gets --resume-from DIR.
	CheckpointTag   string
	KeepCheckpoints int
	// CompareImage is the adapter serving now: pulled (with the output's credentials) and given
	// to the trainer as --compare-adapter DIR, to score beside the new one on the same held-out
	// rows. A pull that fails is logged and the run goes on unscored against it: the promotion
	// policy then holds the new adapter, saying so.
	CompareImage string
	// EvalURLs are the workspace's eval set (kaito.AnnotationEvalData): fetched like the dataset,
	// into the results volume beside it (the trainer reads every file of the data directory as
	// training rows), and given to the trainer as --eval-data DIR for its task scores.
	EvalURLs []string
}

// evalDir is where the eval set goes: the results volume, as the compared adapter does.
func (c Config) evalDir() string { return filepath.Join(c.ResultsDir, ".eval-data") }

// exitOutOfGPUMemory is the trainer's exit code for running out of GPU memory (the trainer contract).
var exitOutOfGPUMemory = int(presets.Contract().Exit.OOM)

// ExitError carries the trainer's exit code.
type ExitError struct{ Code int }

func (e ExitError) Error() string { return fmt.Sprintf("trainer exited with code %d", e.Code) }

// Run fetches, trains, uploads and summarises. It returns ExitError with the trainer's code when
// the trainer fails, and other errors when the wrapper's own work fails (after writing the reason
// to the termination log).
func Run(ctx context.Context, c Config, log *slog.Logger) error {
	if len(c.Command) == 0 {
		return errors.New("job-run: no trainer command after --")
	}
	if c.Attempts <= 0 {
		c.Attempts = 4
	}
	c.registries = netguard.Transport(c.Policy)
	datasets, err := fetch(ctx, c, log)
	if err != nil {
		if !c.FetchBestEffort {
			return c.fail(fmt.Errorf("fetch dataset: %w", err))
		}
		log.Warn("job-run: dataset not fetched; continuing (best effort)", "err", err)
	}
	out := c.Stdout
	if out == nil {
		out = os.Stdout
	}
	command, resumed, cleanup, err := c.trainerCommand(ctx, log)
	if err != nil {
		return c.fail(err)
	}
	defer cleanup()
	ckpts := newCheckpoints(ctx, c, resumed, log)
	errOut := c.Stderr
	if errOut == nil {
		errOut = os.Stderr
	}
	code := runTrainer(ctx, command, c.Env, out, errOut, tee{rep: c.Reporter, ckpts: ckpts, from: resumed}, log)
	// The trainer has ended: its newest checkpoint is what the next pod of this run needs, so the
	// upload in flight finishes first — unless the run succeeded, or ran out of GPU memory (the
	// next attempt is planned again and starts afresh).
	ckpts.wait(code == 0 || code == exitOutOfGPUMemory)
	if code != 0 {
		return ExitError{Code: code}
	}
	s, err := summarize(ctx, c, log)
	if err != nil {
		return c.fail(err)
	}
	s.Datasets = datasets
	if resumed > 0 {
		// Carried with the metrics to tuning.completed and the image: the run is the planned
		// steps, the ones before this step done by an earlier attempt.
		s.Metrics["resumed_from_step"] = float64(resumed)
	}
	c.deleteCheckpoints(ctx, log)
	b, err := json.Marshal(s)
	if err != nil {
		return c.fail(err)
	}
	if c.TerminationLog != "" {
		if err := os.WriteFile(c.TerminationLog, b, 0o644); err != nil {
			log.Warn("write termination message", "err", err)
		}
	}
	log.Info("job-run: done", "summary", s) // an object in JSON logs, not JSON inside a string
	return nil
}

// trainerCommand is the trainer's command for this pod: resuming from the run's newest
// checkpoint when an earlier pod left one, and scoring the serving adapter beside the new one when
// asked (cleanup removes what it pulled). resumed is the checkpoint's step.
func (c Config) trainerCommand(ctx context.Context, log *slog.Logger) (command []string, resumed int, cleanup func(), err error) {
	command, cleanup = c.Command, func() {}
	dir, step, err := c.restore(ctx)
	switch {
	case err != nil:
		return nil, 0, nil, fmt.Errorf("checkpoints: %w", err)
	case step > 0:
		log.Info("job-run: resuming from this run's newest checkpoint", "step", step, "dir", dir)
		command, resumed = append(slices.Clip(command), "--resume-from", dir), step
	}
	if len(c.EvalURLs) > 0 {
		// The user asked for these rows: one that cannot be fetched fails the run before the GPU
		// time is spent, as the dataset does.
		if err := os.RemoveAll(c.evalDir()); err != nil {
			return nil, 0, nil, err
		}
		field := func(i int) string { return fmt.Sprintf("metadata.annotations[%s][%d]", kaito.AnnotationEvalData, i) }
		_, err := c.fetchURLs(ctx, c.EvalURLs, c.evalDir(), field, log)
		switch {
		case err == nil:
			command = append(slices.Clip(command), "--eval-data", c.evalDir())
			// The eval set is not the run's output: it never stays beside the adapter on an output volume.
			prev := cleanup
			cleanup = func() { prev(); _ = os.RemoveAll(c.evalDir()) }
		case c.FetchBestEffort:
			log.Warn("job-run: eval set not fetched; the held-out rows are scored instead (best effort)", "err", err)
		default:
			return nil, 0, nil, fmt.Errorf("fetch eval set: %w", err)
		}
	}
	if c.CompareImage != "" {
		dir, err := c.pullCompare(ctx)
		if err != nil {
			log.Warn("job-run: the serving adapter is not scored beside the new one", "image", c.CompareImage, "err", err)
		} else {
			command = append(slices.Clip(command), "--compare-adapter", dir)
			prev := cleanup
			cleanup = func() { prev(); _ = os.RemoveAll(dir) }
		}
	}
	return command, resumed, cleanup, nil
}

// deleteCheckpoints deletes what the run no longer needs once the adapter is stored: every other
// run's checkpoints, and, on an output volume, its own. In a registry the run's newest ones stay
// for publish, which makes each a servable adapter image and deletes the checkpoint.
func (c Config) deleteCheckpoints(ctx context.Context, log *slog.Logger) {
	if repo, ok, _ := c.checkpointRepo(); ok {
		if _, err := c.pruneCheckpoints(ctx, repo, c.keep(), true); err != nil {
			log.Warn("job-run: checkpoints not deleted after the run", "err", err)
		}
	} else if c.CheckpointTag != "" {
		if err := removeLocal(c.ResultsDir); err != nil {
			log.Warn("job-run: checkpoints not deleted after the run", "err", err)
		}
	}
}

// pullCompare fetches the adapter to compare with into the results directory.
func (c Config) pullCompare(ctx context.Context) (string, error) {
	ref, err := name.ParseReference(c.CompareImage, c.nameOptions()...)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(c.ResultsDir, ".compare-adapter")
	// A pod killed before it cleaned up left one on the results volume: never mix the two.
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if _, err := adapter.Pull(ref, dir, adapter.AdapterLimits, append(c.remoteOptions(), remote.WithContext(ctx))...); err != nil {
		return "", err
	}
	return dir, nil
}

// fail records the wrapper's own failure reason where Kubernetes shows it, in one line.
func (c Config) fail(err error) error {
	if c.TerminationLog != "" {
		_ = os.WriteFile(c.TerminationLog, []byte("kaitoflow job-run: "+strings.ReplaceAll(err.Error(), "\n", " ")), 0o644)
	}
	return err
}

func fetch(ctx context.Context, c Config, log *slog.Logger) ([]string, error) {
	digests, err := c.fetchURLs(ctx, c.InputURLs, c.DataDir, func(i int) string { return fmt.Sprintf("tuning.input.urls[%d]", i) }, log)
	if err != nil {
		return digests, err
	}
	if c.InputImage != "" {
		if err := pullData(ctx, c, log); err != nil {
			return digests, fmt.Errorf("tuning.input.image %s: %w", c.InputImage, err)
		}
	}
	return digests, nil
}

// fetchURLs downloads urls into dir under the address policy, retrying what may pass later, and
// returns their digests; an error names the URL by field(i).
func (c Config) fetchURLs(ctx context.Context, urls []string, dir string, field func(int) string, log *slog.Logger) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var digests []string
	client := netguard.Client(c.Policy, 0)
	for i, raw := range urls {
		if err := c.Policy.CheckURL(raw); err != nil {
			return digests, fmt.Errorf("%s: %w", field(i), err)
		}
		u, _ := url.Parse(raw)
		dst := filepath.Join(dir, fmt.Sprintf("%02d-%s", i, safeName(path.Base(u.Path))))
		var err error
		for attempt := 1; attempt <= c.Attempts; attempt++ {
			var sum string
			var n int64
			if sum, n, err = download(ctx, client, raw, dst); err == nil {
				log.Info("job-run: fetched", "url", u.Redacted(), "bytes", n, "sha256", sum)
				digests = append(digests, "sha256:"+sum)
				break
			}
			if netguard.Refused(err) || errors.Is(err, errPermanent) {
				return digests, fmt.Errorf("%s: %w", field(i), err)
			}
			log.Warn("job-run: fetch failed, retrying", "url", u.Redacted(), "attempt", attempt, "err", err)
			select {
			case <-ctx.Done():
				return digests, ctx.Err()
			case <-time.After(time.Duration(attempt*attempt) * time.Second):
			}
		}
		if err != nil {
			return digests, fmt.Errorf("%s: %w", field(i), err)
		}
	}
	return digests, nil
}

var errPermanent = errors.New("permanent")

// Download bounds: a dataset file is at most MaxDatasetBytes (the preflight's limit, so what it
// admitted fits), and a transfer that receives less than StallBytes in StallTimeout is abandoned —
// a server that answers and then trickles (or stops) would otherwise hold the GPU node until the
// Job's deadline. There is no bound on the whole transfer: a large file on a slow link is
// legitimate, 64 KiB in two minutes is not a link.
const (
	MaxDatasetBytes = 10 << 30
	StallTimeout    = 2 * time.Minute
	StallBytes      = 64 << 10
)

func download(ctx context.Context, client *http.Client, raw, dst string) (string, int64, error) {
	return downloadWithin(ctx, client, raw, dst, MaxDatasetBytes, StallTimeout)
}

func downloadWithin(ctx context.Context, client *http.Client, raw, dst string, maxBytes int64, stall time.Duration) (string, int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(stall, func() { cancel(fmt.Errorf("less than %d KiB in %s", StallBytes>>10, stall)) })
	defer idle.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", 0, withCause(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err := fmt.Errorf("HTTP %s", resp.Status)
		if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
			err = fmt.Errorf("%w: %w", errPermanent, err)
		}
		return "", 0, err
	}
	if resp.ContentLength > maxBytes {
		return "", 0, fmt.Errorf("%w: %d bytes is over the %d-byte limit", errPermanent, resp.ContentLength, maxBytes)
	}
	f, err := os.Create(dst + ".part")
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	// One byte past the limit tells a body that is too long from one that is exactly the limit.
	// The stall timer restarts only once StallBytes more have arrived: a byte a minute is a stall.
	var since int64
	body := &progressReader{r: io.LimitReader(resp.Body, maxBytes+1), onRead: func(n int) {
		if since += int64(n); since >= StallBytes {
			since = 0
			idle.Reset(stall)
		}
	}}
	n, err := io.Copy(io.MultiWriter(f, h), body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		err = withCause(ctx, err)
	case n > maxBytes:
		err = fmt.Errorf("%w: the body is over the %d-byte limit", errPermanent, maxBytes)
	case resp.ContentLength >= 0 && n != resp.ContentLength:
		err = fmt.Errorf("got %d of %d bytes", n, resp.ContentLength)
	}
	if err != nil {
		_ = os.Remove(dst + ".part")
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, os.Rename(dst+".part", dst)
}

// withCause says why a transfer was cancelled when the stall timer did it.
func withCause(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return fmt.Errorf("%w (%w)", err, cause)
	}
	return err
}

// progressReader calls onRead with the size of every read that returned bytes.
type progressReader struct {
	r      io.Reader
	onRead func(n int)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.onRead(n)
	}
	return n, err
}

func safeName(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r < 0x20 {
			return '_'
		}
		return r
	}, s)
	if s == "" || s == "." || s == ".." || s == "/" {
		return "dataset"
	}
	return s
}

// pullData extracts the image's /data directory (Kaito's layout for dataset images).
func pullData(ctx context.Context, c Config, log *slog.Logger) error {
	ref, err := name.ParseReference(c.InputImage, c.nameOptions()...)
	if err != nil {
		return err
	}
	n, err := adapter.Pull(ref, c.DataDir, adapter.DataLimits, append(c.remoteOptions(), remote.WithContext(ctx))...)
	log.Info("job-run: pulled dataset image", "image", c.InputImage, "files", n)
	return err
}

func runTrainer(ctx context.Context, argv, env []string, out, errOut io.Writer, t tee, log *slog.Logger) int {
	cmd := exec.Command(argv[0], argv[1:]...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stderr, cmd.Stdin = errOut, os.Stdin
	// An os.Pipe rather than StdoutPipe: Wait must not close the reading end before the tee has
	// read the trainer's last lines.
	stdout, w, err := os.Pipe()
	if err != nil {
		return 127
	}
	defer stdout.Close()
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		log.Error("job-run: start trainer", "err", err)
		return 127
	}
	teed := make(chan struct{})
	go func() {
		defer close(teed)
		t.run(ctx, stdout, out, ReportInterval, time.Now, log)
	}()
	// Forward SIGTERM and SIGINT: the kubelet's stop, or the Job's deadline, reaches the trainer,
	// which can save what it has before the grace period ends.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stop := ctx.Done()
	for {
		select {
		case s := <-sigs:
			log.Info("job-run: forwarding signal to the trainer", "signal", s.String())
			_ = cmd.Process.Signal(s)
		case <-stop:
			// Once: a closed channel is always ready, and the trainer needs its grace period,
			// not a stream of signals.
			stop = nil
			_ = cmd.Process.Signal(syscall.SIGTERM)
		case err := <-done:
			<-teed
			if err == nil {
				return 0
			}
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
					return 128 + int(st.Signal())
				}
				return ee.ExitCode()
			}
			return 1
		}
	}
}

func summarize(ctx context.Context, c Config, log *slog.Logger) (*Summary, error) {
	s := &Summary{Location: c.ResultsDir, Metrics: map[string]float64{}}
	for _, f := range AdapterFiles {
		b, err := os.Open(filepath.Join(c.ResultsDir, f))
		if err != nil {
			return nil, fmt.Errorf("the trainer succeeded but left no %s: %w", f, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, b)
		b.Close()
		if err != nil {
			return nil, err
		}
		s.Files = append(s.Files, events.AdapterFile{Path: f, Size: n, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil))})
	}
	if b, err := os.ReadFile(filepath.Join(c.ResultsDir, "metrics.json")); err == nil {
		var m map[string]any
		if json.Unmarshal(b, &m) == nil {
			for k, v := range m {
				if f, ok := v.(float64); ok {
					s.Metrics[k] = f
				}
			}
		}
	}
	if c.OutputImage == "" {
		return s, nil // output to a volume: the files stay there
	}
	ref, err := name.ParseReference(c.OutputImage, c.nameOptions()...)
	if err != nil {
		return nil, fmt.Errorf("tuning.output.image %q: %w", c.OutputImage, err)
	}
	layer, err := adapter.Layer(c.ResultsDir, s.Files)
	if err != nil {
		return nil, err
	}
	if err := remote.WriteLayer(ref.Context(), layer, append(c.remoteOptions(), remote.WithContext(ctx))...); err != nil {
		return nil, fmt.Errorf("upload the adapter to %s: %w", ref.Context(), err)
	}
	blob, err := adapter.Describe(layer)
	if err != nil {
		return nil, err
	}
	s.Location, s.Layer = ref.Context().String(), &blob
	log.Info("job-run: adapter layer uploaded", "repository", s.Location, "digest", blob.Digest, "bytes", blob.Size)
	return s, nil
}

func (c Config) nameOptions() []name.Option {
	if c.InsecureRegistry {
		return []name.Option{name.Insecure}
	}
	return nil
}

func (c Config) remoteOptions() []remote.Option {
	// The registries a workspace names are reached through the address policy, as its datasets are.
	var opts []remote.Option
	if !c.OperatorRegistry {
		tr := c.registries
		if tr == nil { // a Config not started by Run
			tr = netguard.Transport(c.Policy)
		}
		opts = append(opts, remote.WithTransport(tr))
	}
	if c.PushSecret != "" {
		opts = append(opts, remote.WithAuthFromKeychain(registryauth.DockerConfigFile(c.PushSecret)))
	}
	return opts
}
