package jobs

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/tune"
	"github.com/kaitoflow/kaitoflow/internal/golden"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/presets"
)

// checkJobGolden compares the Job and ConfigMap Build makes for run with testdata/name.
func checkJobGolden(t *testing.T, name string, run func(*testing.T) (*kaito.Workspace, *events.Plan), changes ...func(*tune.Job)) {
	t.Helper()
	job := seedRun(t, "default")
	ws, plan := run(t)
	job.Workspace, job.Plan = *ws, plan
	for _, c := range changes {
		c(&job)
	}
	j, cm, err := Build(job, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	delete(j.Annotations, AnnotationRun) // the run's JSON is the input, not the output
	var docs []string
	for _, o := range []any{cm, j} {
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	golden.Check(t, name, []byte(strings.Join(docs, "---\n")))
}

// Every branch of Build the seed does not take, each with its golden Job.
func TestJobGoldenBranches(t *testing.T) {
	seed := func(t *testing.T) (*kaito.Workspace, *events.Plan) {
		job := seedRun(t, "default")
		return &job.Workspace, job.Plan
	}
	pvc := &corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "dolly"}}
	for _, tc := range []struct {
		golden string
		change func(*kaito.Workspace)
	}{
		// A data image: job-run pulls it into the data directory, with its pull secrets and the
		// preset's, each once.
		{"job-input-image.yaml", func(ws *kaito.Workspace) {
			ws.Tuning.Input = &kaito.DataSource{Image: "example.azurecr.io/datasets/dolly:1", ImagePullSecrets: []string{"data-pull", "shared-pull"}}
			ws.Tuning.Preset.ImagePullSecrets = []string{"preset-pull", "shared-pull"}
		}},
		// A data volume: mounted read-only as the data directory; job-run fetches nothing.
		{"job-input-volume.yaml", func(ws *kaito.Workspace) { ws.Tuning.Input = &kaito.DataSource{Volume: pvc} }},
		// A results volume: the adapter stays there; nothing is pushed, no push secret mounted.
		{"job-output-volume.yaml", func(ws *kaito.Workspace) {
			ws.Tuning.Output = &kaito.DataDestination{Volume: &corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "adapters"}}}
		}},
		// An output image without a push secret (ACR with the node's or workload identity): no
		// Secret volume naming nothing.
		{"job-output-image-no-secret.yaml", func(ws *kaito.Workspace) { ws.Tuning.Output.ImagePushSecret = "" }},
		// A gated model: the token from presetOptions.modelAccessSecret's HF_TOKEN key and the
		// Secret's name for the trainer's message; the weights cached on the workspace's claim.
		{"job-model-access.yaml", func(ws *kaito.Workspace) {
			ws.Tuning.Preset.ModelAccessSecret = "hf-token"
			ws.Annotations = map[string]string{kaito.AnnotationWeightsCache: "model-weights"}
		}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			checkJobGolden(t, tc.golden, func(t *testing.T) (*kaito.Workspace, *events.Plan) {
				ws, plan := seed(t)
				tc.change(ws)
				return ws, plan
			})
		})
	}

	// A node with several GPUs where the model fits one: one training process per GPU.
	t.Run("job-multi-gpu.yaml", func(t *testing.T) {
		checkJobGolden(t, "job-multi-gpu.yaml", func(t *testing.T) (*kaito.Workspace, *events.Plan) {
			ws, _ := seed(t)
			ws.Resource.InstanceType = "Standard_NC96ads_A100_v4"
			plan := testenv.Plan(t, ws)
			if plan.GPUs != 4 || plan.TrainingProcesses != 4 {
				t.Fatalf("plan: %d GPUs, %d processes; want 4 and 4", plan.GPUs, plan.TrainingProcesses)
			}
			return ws, plan
		})
	})

	// A second attempt after the node was lost: its own Job name and attempt label, and job-run
	// resumes from the generation's newest checkpoint.
	t.Run("job-resumed-attempt.yaml", func(t *testing.T) {
		checkJobGolden(t, "job-resumed-attempt.yaml", seed, func(j *tune.Job) {
			j.Attempt, j.Resume, j.Name = 2, true, tune.AttemptJobName(j.Ref, 2)
		})
	})

	// A next generation while an earlier one serves: job-run pulls the serving adapter for the
	// trainer to score beside the new one.
	t.Run("job-compared.yaml", func(t *testing.T) {
		checkJobGolden(t, "job-compared.yaml", seed, func(j *tune.Job) {
			j.Compare = &events.ComparedAdapter{Generation: 1, Reference: "example.azurecr.io/adapters/phi-3@sha256:" + strings.Repeat("ab", 32)}
		})
	})

	// An eval set (kaito.AnnotationEvalData): job-run fetches it beside the dataset for the
	// trainer's task scores.
	t.Run("job-eval-set.yaml", func(t *testing.T) {
		checkJobGolden(t, "job-eval-set.yaml", seed, func(j *tune.Job) {
			j.Workspace.Annotations = map[string]string{kaito.AnnotationEvalData: "https://example.com/eval/qa.jsonl,https://example.com/eval/more.parquet"}
		})
	})

	// tuning.config: the user's ConfigMap merged into the plan's training config, which the run's
	// own ConfigMap carries to the trainer.
	t.Run("job-tuning-config.yaml", func(t *testing.T) {
		checkJobGolden(t, "job-tuning-config.yaml", func(t *testing.T) (*kaito.Workspace, *events.Plan) {
			ws, _ := seed(t)
			ws.Tuning.Config = "phi-3-qlora-params"
			cat, err := presets.Default()
			if err != nil {
				t.Fatal(err)
			}
			user := "training_config:\n  LoraConfig:\n    r: 16\n    lora_alpha: 32\n  TrainingArguments:\n    num_train_epochs: 2\n    learning_rate: 0.00015\n"
			planner := &presets.Planner{Catalog: cat, Configs: func(_ context.Context, ns, name string) (map[string]string, error) {
				if ns != "default" || name != "phi-3-qlora-params" {
					t.Errorf("read ConfigMap %s/%s", ns, name)
				}
				return map[string]string{presets.TrainingConfigKey: user}, nil
			}}
			plan, err := planner.Plan(context.Background(), ws)
			if err != nil {
				t.Fatal(err)
			}
			return ws, plan
		})
	})
}

// The pipeline's private dataset hosts reach the pod's job-run, which fetches under the same
// policy provision checked the URLs with.
func TestJobRunAdmitsThePipelinesHosts(t *testing.T) {
	o := testOptions()
	o.AllowHosts = []string{"datasets.internal", "10.0.0.0/8"}
	j, _, err := Build(seedRun(t, "default"), o)
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(j.Spec.Template.Spec.Containers[0].Command, " ")
	if !strings.Contains(args, "--allow-host datasets.internal --allow-host 10.0.0.0/8") {
		t.Errorf("job-run's arguments: %s", args)
	}
}
