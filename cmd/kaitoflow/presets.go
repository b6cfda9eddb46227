package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision/aks"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/presets"
)

func newPresets(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "presets", Short: "The model presets and GPU SKUs kaitoflow knows"}
	cmd.AddCommand(newPresetsList(g), newPresetsShow(g))
	return cmd
}

func newPresetsList(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list [-o json|yaml]",
		Short: "List the model presets",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			c, err := presets.Default()
			if err != nil {
				return err
			}
			switch output {
			case "json", "yaml":
				return printObjects(g.out, c.Models, output, false)
			case "":
			default:
				return fmt.Errorf("-o %q: want json or yaml", output)
			}
			tw := tabwriter.NewWriter(g.out, 0, 0, 3, ' ', 0)
			fmt.Fprintln(tw, "NAME\tPARAMS\tCONTEXT\tTUNING\tHUGGING FACE\tLICENSE")
			for _, m := range c.Models {
				fmt.Fprintf(tw, "%s\t%.1fB\t%d\t%v\t%s\t%s\n", m.Name, float64(m.Parameters)/1e9, m.MaxContext, m.Tuning, m.HuggingFace, m.License)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "json or yaml: every preset's record, for scripts")
	return cmd
}

func newPresetsShow(g *globals) *cobra.Command {
	var hubURL, output string
	show := &cobra.Command{
		Use:   "show NAME [-o json|yaml]",
		Short: "Show a preset and where it fits: tuning with lora and qlora, and serving, on every SKU",
		Long: `show describes a preset: a catalog model, one of Kaito's presets read from the Hugging Face
Hub, or any Hugging Face repository id (owner/name[@revision]), whose config.json and weight files
are read from the Hub (with $HF_TOKEN, for gated models).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "" && output != "json" && output != "yaml" {
				return fmt.Errorf("-o %q: want json or yaml", output)
			}
			c, err := presets.Default()
			if err != nil {
				return err
			}
			m, ref, err := c.Resolve(args[0])
			if err != nil {
				return err
			}
			if ref != nil {
				hm, err := cliHub(hubURL).Model(cmd.Context(), ref.Repo, ref.Revision, os.Getenv("HF_TOKEN"))
				if err != nil {
					return fmt.Errorf("read %s from the Hugging Face Hub: %w", ref.Repo, err)
				}
				if m, err = presets.ModelFromHub(ref, hm); err != nil {
					return err
				}
			}
			if output != "" {
				return printObjects(g.out, []presetShown{{Model: m, Fits: fits(c, m)}}, output, true)
			}
			a := m.Architecture
			fmt.Fprintf(g.out, "%s\n  Hugging Face:  %s @ %s\n  parameters:    %.2fB\n  architecture:  %s, %d layers, hidden %d, intermediate %d, "+
				"%d heads (%d KV), vocab %d\n  max context:   %d tokens (KV cache %d KiB/token in 16-bit)\n  LoRA targets:  %s\n  tuning:        "+
				"%v\n  license:       %s\n  inference:     %s (tuning: presets/trainer, built by hack/release.sh)\n\n",
				m.Name, m.HuggingFace, m.Revision, float64(m.Parameters)/1e9, a.Family, a.Layers, a.HiddenSize, a.IntermediateSize, a.Heads, a.KVHeads, a.Vocab,
				m.MaxContext, a.KVBytesPerToken()>>10, strings.Join(m.LoRATargets, ", "), m.Tuning, m.License, presets.InferenceImage)
			return fitTable(g.out, c, m)
		},
	}
	show.Flags().StringVar(&hubURL, "hub-url", "", "the Hugging Face Hub or a mirror (default https://huggingface.co)")
	show.Flags().StringVarP(&output, "output", "o", "", "json or yaml: the preset's record and its plan (or why none fits) on every SKU, for scripts")
	return show
}

// presetShown is `presets show -o json|yaml`: the preset, and where it fits.
type presetShown struct {
	Model *presets.Model `json:"model"`
	Fits  []skuFit       `json:"fits"`
}

// skuFit is where a preset fits on one SKU: each plan, or why there is none.
type skuFit struct {
	SKU   presets.SKU                      `json:"sku"`
	QLoRA planOrWhy[presets.TuningPlan]    `json:"qlora"`
	LoRA  planOrWhy[presets.TuningPlan]    `json:"lora"`
	Serve planOrWhy[presets.InferencePlan] `json:"serve"`
}

// planOrWhy is a plan, or the fit check's refusal.
type planOrWhy[P any] struct {
	Plan    *P     `json:"plan,omitempty"`
	Refused string `json:"refused,omitempty"`
}

func planned[P any](p *P, err error) planOrWhy[P] {
	if err != nil {
		return planOrWhy[P]{Refused: err.Error()}
	}
	return planOrWhy[P]{Plan: p}
}

// fits plans m on every SKU by price: tuning with qlora and lora, and serving.
func fits(c *presets.Catalog, m *presets.Model) []skuFit {
	var out []skuFit
	for _, s := range c.SKUsByPrice() {
		out = append(out, skuFit{SKU: s,
			QLoRA: planned(c.PlanTuningFor(m, "qlora", s.Name, presets.Overrides{})),
			LoRA:  planned(c.PlanTuningFor(m, "lora", s.Name, presets.Overrides{})),
			Serve: planned(c.PlanInferenceFor(m, s.Name, 0, 0))})
	}
	return out
}

// fitTable prints where m fits: tuning with qlora and lora, and serving, on every SKU by price.
func fitTable(out io.Writer, c *presets.Catalog, m *presets.Model) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SKU\tGPUS\tQLORA\tLORA\tSERVE (max model len)\t$/H")
	tuning := func(f planOrWhy[presets.TuningPlan]) string {
		if p := f.Plan; p != nil {
			return fmt.Sprintf("%.1f GiB b%d×%d %s", p.Estimate.PerGPUGiB, p.BatchSize, p.SeqLen, p.DType)
		}
		return "no"
	}
	for _, f := range fits(c, m) {
		serve, s := "no", f.SKU
		if p := f.Serve.Plan; p != nil {
			serve = fmt.Sprintf("%d %s", p.MaxModelLen, p.DType)
		}
		fmt.Fprintf(tw, "%s\t%d× %s %.0fG\t%s\t%s\t%s\t%.2f\n", s.Name, s.GPUs, s.GPU, s.MemoryGiB, tuning(f.QLoRA), tuning(f.LoRA), serve, s.PricePerHour)
	}
	return tw.Flush()
}

// cliHub reads models from the Hugging Face Hub (or the mirror at url) for the commands that plan
// without a server.
func cliHub(url string) *presets.Hub {
	return &presets.Hub{BaseURL: url, Client: &http.Client{Timeout: 30 * time.Second}}
}

func newPlan(g *globals) *cobra.Command {
	var files []string
	var trainingConfig, hubURL, subscription, location string
	var showConfig, spot bool
	var output string
	cmd := &cobra.Command{
		Use:   "plan -f FILE [-o json|yaml]",
		Short: "Say what would be provisioned and trained for each workspace, and why, without doing it",
		Long: `plan runs the fit check provision runs on workspace.requested: which SKU (the cheapest that
fits when resource.instanceType is empty), which precision (fp16 on GPUs without bf16), which batch
and sequence length, how much GPU memory that needs — or why it cannot fit. It needs no server.
--training-config FILE stands in for the ConfigMap a workspace names in tuning.config. With
--subscription and --location it reads the region's vCPU quota with your Azure credentials (the
Azure CLI's login, environment variables or a managed identity), as provision does for aks: a SKU
without quota is passed over, or refused with the numbers.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return errors.New("-f FILE is required")
			}
			c, err := presets.Default()
			if err != nil {
				return err
			}
			planner, err := cliPlanner(c, hubURL, trainingConfig, subscription, location, spot)
			if err != nil {
				return err
			}
			if output != "" && output != "json" && output != "yaml" {
				return fmt.Errorf("-o %q: want json or yaml", output)
			}
			results, err := planFiles(cmd.Context(), cmd.InOrStdin(), planner, files)
			if err != nil {
				return err
			}
			if err := printPlans(g.out, results, output, showConfig); err != nil {
				return err
			}
			if slices.ContainsFunc(results, func(r planResult) bool { return r.Plan == nil }) {
				return exitError{code: exitFailed}
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVarP(&files, "filename", "f", nil, "manifest file(s); - reads stdin")
	cmd.Flags().StringVarP(&output, "output", "o", "", "json or yaml: each workspace's plan (or why it is refused), for scripts; exits 1 as without")
	cmd.Flags().StringVar(&trainingConfig, "training-config", "", "training_config.yaml standing in for the tuning.config ConfigMap")
	cmd.Flags().BoolVar(&showConfig, "show-config", false, "print the training_config.yaml the tuning Job would mount")
	cmd.Flags().StringVar(&subscription, "subscription", "", "with --location: check the region's vCPU quota in this Azure subscription")
	cmd.Flags().StringVar(&location, "location", "", "with --subscription: the region whose vCPU quota to check (eastus, …)")
	cmd.Flags().BoolVar(&spot, "spot", false, "with --location: spot pools, which count against the region's low-priority vCPUs only")
	cmd.Flags().StringVar(&hubURL, "hub-url", "", "the Hugging Face Hub or a mirror, for models that are not presets (default https://huggingface.co)")
	return cmd
}

// cliPlanner is the planner `plan` runs without a server: models read from the Hub (or the mirror
// at hubURL), trainingConfig standing in for a workspace's tuning.config, and the region's quota
// when a subscription and location are given.
func cliPlanner(c *presets.Catalog, hubURL, trainingConfig, subscription, location string, spot bool) (*presets.Planner, error) {
	// Models that are not presets are read from the Hub; a gated one with the workstation's
	// $HF_TOKEN standing in for the workspace's modelAccessSecret.
	planner := &presets.Planner{Catalog: c, Hub: cliHub(hubURL),
		Secrets: func(context.Context, string, string) (map[string][]byte, error) {
			return map[string][]byte{presets.ModelAccessSecretKey: []byte(os.Getenv("HF_TOKEN"))}, nil
		}}
	if subscription != "" || location != "" {
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("azure credential for the quota check: %w", err)
		}
		if planner.Quota, err = aks.NewQuota(subscription, location, spot, cred, nil); err != nil {
			return nil, err
		}
	}
	if trainingConfig != "" {
		doc, err := os.ReadFile(trainingConfig)
		if err != nil {
			return nil, err
		}
		planner.Configs = func(context.Context, string, string) (map[string]string, error) {
			return map[string]string{presets.TrainingConfigKey: string(doc)}, nil
		}
	}
	return planner, nil
}

// planResult is what plan says of one workspace: the plan, or why there is none.
type planResult struct {
	Workspace string `json:"workspace,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	// What is tuned or served: "qlora phi-3-mini-128k-instruct", "serve phi-4".
	What  string       `json:"what,omitempty"`
	Nodes int          `json:"nodes,omitempty"`
	Plan  *events.Plan `json:"plan,omitempty"`
	// Error is why the document is no manifest; Invalid the manifest's field errors; Refused why
	// the fit check refuses it.
	Error   string   `json:"error,omitempty"`
	Invalid []string `json:"invalid,omitempty"`
	Refused string   `json:"refused,omitempty"`
}

// planFiles runs the fit check on every document of the files (- is stdin).
func planFiles(ctx context.Context, stdin io.Reader, planner *presets.Planner, files []string) ([]planResult, error) {
	results := []planResult{}
	for _, f := range files {
		b, err := readFile(stdin, f)
		if err != nil {
			return nil, err
		}
		docs, err := kaito.SplitYAML(b)
		if err != nil {
			return nil, err
		}
		for _, d := range docs {
			results = append(results, planOne(ctx, planner, d))
		}
	}
	return results, nil
}

// planOne runs the fit check on one manifest.
func planOne(ctx context.Context, planner *presets.Planner, doc []byte) planResult {
	ws, err := kaito.DecodeManifest(doc)
	if err != nil {
		return planResult{Error: err.Error()}
	}
	r := planResult{Workspace: ws.Name, Namespace: ws.Namespace, Nodes: ws.NodeCount()}
	if errs := ws.Validate(netguard.AddressPolicy{}); len(errs) > 0 {
		for _, e := range errs {
			r.Invalid = append(r.Invalid, e.Error())
		}
		return r
	}
	if planner.Configs != nil && ws.Tuning != nil && ws.Tuning.Config == "" {
		// --training-config applies even when the manifest names no ConfigMap yet.
		ws.Tuning.Config = "training-config"
	}
	p, err := planner.Plan(ctx, ws)
	if err != nil {
		if pe, ok := events.AsPermanent(err); ok {
			r.Refused = pe.Reason + ": " + pe.Err.Error()
		} else {
			r.Refused = err.Error()
		}
		return r
	}
	r.Plan, r.What = p, "serve "+ws.PresetName()
	if ws.Tuning != nil {
		r.What = ws.Tuning.Method + " " + ws.PresetName()
	}
	return r
}

// printPlans prints the plans as -o says: json or yaml, else as text.
func printPlans(out io.Writer, results []planResult, output string, showConfig bool) error {
	if output != "" {
		return printObjects(out, results, output, false)
	}
	for _, r := range results {
		printPlan(out, r, showConfig)
	}
	return nil
}

// printPlan prints a plan, or why there is none, as plan does without -o.
func printPlan(out io.Writer, r planResult, showConfig bool) {
	switch {
	case r.Error != "":
		fmt.Fprintf(out, "%s\n\n", r.Error)
		return
	case len(r.Invalid) > 0:
		fmt.Fprintf(out, "%s: invalid\n", r.Workspace)
		for _, e := range r.Invalid {
			fmt.Fprintf(out, "  %s\n", e)
		}
		fmt.Fprintln(out)
		return
	case r.Refused != "":
		fmt.Fprintf(out, "%s: refused, nothing would be provisioned\n  %s\n\n", r.Workspace, r.Refused)
		return
	}
	p := r.Plan
	fmt.Fprintf(out, "%s: %s on %s × %d\n", r.Workspace, r.What, p.InstanceType, r.Nodes)
	if p.DType != "" {
		fmt.Fprintf(out, "  fits: ~%.1f GiB per GPU of %.0f GiB, %s\n", p.EstimatedGiBPerGPU, p.GPUMemoryGiB, p.DType)
	}
	if p.BatchSize > 0 {
		fmt.Fprintf(out, "  run:  batch %d, sequence %d, gradient checkpointing %v, LoRA r=%d\n", p.BatchSize, p.SeqLen, p.GradientCheckpointing, p.LoRARank)
	}
	if p.MaxModelLen > 0 {
		fmt.Fprintf(out, "  serve: vllm %s\n", strings.Join(p.RuntimeArgs, " "))
	}
	fmt.Fprintln(out, "  why:")
	for _, r := range p.Reasons {
		fmt.Fprintf(out, "    - %s\n", r)
	}
	if showConfig && p.TrainingConfig != "" {
		fmt.Fprintf(out, "  training_config.yaml:\n    %s\n", strings.ReplaceAll(strings.TrimSpace(p.TrainingConfig), "\n", "\n    "))
	}
	fmt.Fprintln(out)
}
