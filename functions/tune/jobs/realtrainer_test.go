package jobs_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"math"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/publish"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/functions/tune/jobs"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/presets"
)

// The tuning Job's own job-run command line, exactly as jobs.Build writes it (parsed with job-run's
// flags), running the real Python trainer (transformers + peft, on CPU) on a tiny Phi-3-shaped
// model the test makes: job-run fetches the dataset over HTTP, the trainer trains and checkpoints,
// job-run uploads the checkpoints and the adapter's layer to an in-process registry and writes the
// summary; publish composes the image around the uploaded layer; the image pulled back loads with
// peft onto the base model and changes its answers.
//
// What differs from a pod, each because this machine is not one: the trainer's python is the ML
// environment's (hack/ml-env.sh) and its --model is the tiny model's directory (no Hugging Face
// here, so no --revision); the dataset URL is a local server's; the directories are temporary; the
// training config is the plan's with what a tiny CPU run needs laid on top (fp32, 16 steps, a
// short sequence); the output repository is the in-process registry's.
func TestRealTrainerThroughJobRun(t *testing.T) {
	py := testenv.MLPython(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tiny := testenv.TinyModel(t, py)

	ws, _ := testenv.Seed(t, "default")
	ws.Tuning.Method = kaito.MethodLoRA // QLoRA's 4-bit CPU path is the Python suite's
	// The eval set (kaito.AnnotationEvalData) rides the Job's command line to job-run, which
	// fetches it for the trainer's task scores: here, the tiny dataset once more.
	data := tiny.Serve(t)
	ws.Annotations = map[string]string{kaito.AnnotationEvalData: data}
	plan := testenv.Plan(t, ws)
	cfg, err := presets.ParseTrainingConfig([]byte(plan.TrainingConfig))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	results := filepath.Join(root, "results")
	cpu := presets.TrainingConfig{
		"ModelConfig":       {"torch_dtype": "float32", "device_map": "cpu"},
		"TrainingArguments": {"output_dir": results, "max_steps": 16, "learning_rate": 0.01, "logging_steps": 2, "bf16": false, "fp16": false, "save_strategy": "steps", "save_steps": 8, "seed": 0},
		"DatasetConfig":     {"max_seq_length": 64},
	}
	for k, v := range tiny.DatasetConfig {
		cpu["DatasetConfig"][k] = v
	}
	rendered, err := presets.Merge(cfg, cpu).Render()
	if err != nil {
		t.Fatal(err)
	}
	plan.TrainingConfig = string(rendered)

	ref := events.Ref{Namespace: "default", Name: ws.Name, Generation: 1}
	job := tune.Job{Name: tune.AttemptJobName(ref, 1), Ref: ref, Workspace: *ws, Plan: plan, Nodes: []string{"n0"}}
	opts := jobs.DefaultOptions()
	opts.TrainerImage, opts.WrapperImage = "example.azurecr.io/kaitoflow-trainer:test", "example.azurecr.io/kaitoflow/job-run:test"
	k8sJob, cm, err := jobs.Build(job, opts)
	if err != nil {
		t.Fatal(err)
	}
	c, trainer := testenv.JobRunOf(t, k8sJob.Spec.Template.Spec.Containers[0].Command)
	configFile := filepath.Join(root, presets.TrainingConfigKey)
	if err := os.WriteFile(configFile, []byte(cm.Data[presets.TrainingConfigKey]), 0o600); err != nil {
		t.Fatal(err)
	}
	if trainer[0] != "python" {
		t.Fatalf("the trainer is not python: %q", trainer)
	}
	trainer[0] = py
	trainer = replaceArg(t, trainer, "--model", tiny.Model)
	trainer = replaceArg(t, trainer, "--config", configFile)
	trainer = dropArg(trainer, "--revision")

	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	out, err := adapter.Rewrite(host, c.OutputImage)
	if err != nil {
		t.Fatal(err)
	}
	c.InputURLs = []string{data}
	c.Policy = netguard.AddressPolicy{Allow: []string{"127.0.0.1"}}
	c.DataDir, c.ResultsDir, c.TerminationLog = filepath.Join(root, "data"), results, filepath.Join(root, "termination-log")
	c.OutputImage, c.InsecureRegistry, c.PushSecret, c.Attempts = out.String(), true, "", 1
	c.Command = replaceArg(t, trainer, "--input-dir", c.DataDir)
	c.Env = testenv.TrainerEnv(t, root)
	var stdout bytes.Buffer
	c.Stdout = &stdout
	if err := jobrun.Run(ctx, c, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("job-run: %v\n%s", err, tail(stdout.String()))
	}

	var sum jobrun.Summary
	b, err := os.ReadFile(c.TerminationLog)
	if err != nil || json.Unmarshal(b, &sum) != nil {
		t.Fatalf("summary %q: %v", b, err)
	}
	if sum.Layer == nil || len(sum.Files) != 2 || len(sum.Datasets) != 1 {
		t.Fatalf("summary: layer %v files %v datasets %v", sum.Layer, sum.Files, sum.Datasets)
	}
	for _, m := range []string{"train_loss", "eval_loss", "perplexity"} {
		if v, ok := sum.Metrics[m]; !ok || math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
			t.Errorf("metric %s = %v (present %v) in %v", m, v, ok, sum.Metrics)
		}
	}
	// Task scores of generated answers, the new adapter's and the base model's, on the eval set.
	for _, m := range []string{events.MetricTaskRougeL, events.MetricTaskExactMatch, events.BasePrefix + events.MetricTaskRougeL} {
		if v, ok := sum.Metrics[m]; !ok || v < 0 || v > 1 {
			t.Errorf("metric %s = %v (present %v), want a score in [0, 1]: %v", m, v, ok, sum.Metrics)
		}
	}
	if !strings.Contains(stdout.String(), "--eval-data") || sum.Metrics[events.MetricTaskExamples] < 1 {
		t.Errorf("the trainer did not score the eval set (%v task examples):\n%s", sum.Metrics[events.MetricTaskExamples], tail(stdout.String()))
	}
	if got, want := sum.Metrics["perplexity"], math.Exp(sum.Metrics["eval_loss"]); math.Abs(got-want) > 1e-3*want {
		t.Errorf("perplexity %g, exp(eval_loss) %g", got, want)
	}
	if !strings.Contains(stdout.String(), "checkpoint") {
		t.Errorf("the trainer announced no checkpoint:\n%s", tail(stdout.String()))
	}

	// publish composes the image around the layer job-run uploaded.
	pub := publish.New(publish.RemotePusher{}, publish.RewriteRegistry(host), slog.New(slog.DiscardHandler))
	ev := events.Must(events.New("kaitoflow/tune", events.TuningCompleted, events.TuningCompleted, ref, events.TuningCompletedData{
		Workspace: *ws, Nodes: job.Nodes, Job: job.Name, Location: sum.Location, Files: sum.Files, Layer: sum.Layer,
		Metrics: sum.Metrics, Datasets: sum.Datasets, Plan: plan, Finished: time.Now().UTC()}, nil))
	outs, err := pub.Handle(ctx, ev)
	if err != nil || len(outs) != 1 || outs[0].Type() != events.ImagePushed {
		t.Fatalf("publish: %v %v", outs, err)
	}
	var pushed events.ImagePushedData
	if err := events.Data(outs[0], &pushed); err != nil {
		t.Fatal(err)
	}
	pulled := filepath.Join(root, "pulled")
	ir, err := name.ParseReference(pushed.Reference, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adapter.Pull(ir, pulled, adapter.AdapterLimits); err != nil {
		t.Fatal(err)
	}
	testenv.AssertAdapterChangesModel(t, py, tiny.Model, pulled)
}

func replaceArg(t *testing.T, args []string, flag, value string) []string {
	t.Helper()
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("no %s in %q", flag, args)
	}
	args[i+1] = value
	return args
}

func dropArg(args []string, flag string) []string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return slices.Delete(args, i, i+2)
	}
	return args
}

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}
