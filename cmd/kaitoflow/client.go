package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/util/jsonpath"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/compose/api"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

func (g *globals) client() *api.Client {
	return &api.Client{BaseURL: g.server, Namespace: cmp.Or(g.namespace, kaito.DefaultNamespace), Token: g.token, HTTP: &http.Client{}}
}

// getWorkspace reads one workspace from the API, or from the cluster with --kubeconfig/--context.
func (g *globals) getWorkspace(ctx context.Context, cluster clusterFlags, name string) (*status.Workspace, error) {
	src, err := g.workspaces(cluster)
	if err != nil {
		return nil, err
	}
	return src.Get(ctx, name)
}

func newSubmit(g *globals) *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "submit -f FILE",
		Short: "Submit Kaito Workspace manifests (multi-document YAML or JSON; - for stdin)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return errors.New("-f FILE is required")
			}
			_, err := g.submitFiles(cmd.Context(), cmd.InOrStdin(), files)
			return err
		},
	}
	cmd.Flags().StringSliceVarP(&files, "filename", "f", nil, "manifest file(s); - reads stdin")
	return cmd
}

// submitFiles submits every document of files and returns the submitted workspaces' names.
// ConfigMaps go first, so the workspaces naming them (tuning.config, inference.config) find
// them. The server validates every document first (it knows which private hosts it admits), so a
// file with one bad document starts nothing.
func (g *globals) submitFiles(ctx context.Context, stdin io.Reader, files []string) ([]string, error) {
	configMaps, workspaces, err := readDocuments(stdin, files)
	if err != nil {
		return nil, err
	}
	c := g.client()
	if err := g.dryRun(ctx, c, configMaps, workspaces); err != nil {
		return nil, err
	}
	for _, d := range configMaps {
		res, err := c.SubmitConfigMap(ctx, d.doc, false)
		if err != nil {
			fmt.Fprintln(g.err, err)
			return nil, exitError{code: exitFailed}
		}
		verb := "configured"
		if res.Unchanged {
			verb = "unchanged"
		}
		fmt.Fprintf(g.out, "configmap/%s %s (namespace %s)\n", res.ConfigMap.Name, verb, res.ConfigMap.Namespace)
	}
	var names []string
	for _, d := range workspaces {
		res, err := c.Submit(ctx, d.doc, false)
		if err != nil {
			fmt.Fprintln(g.err, err)
			return names, exitError{code: exitFailed}
		}
		w := res.Workspace
		verb := "submitted"
		if res.Unchanged {
			verb = "unchanged"
		}
		fmt.Fprintf(g.out, "workspace.kaito.sh/%s %s (namespace %s, generation %d)\n", w.Name, verb, w.Namespace, w.Generation)
		names = append(names, w.Name)
	}
	return names, nil
}

// document is one document of the files given; n numbers it in the order given, for error
// messages.
type document struct {
	n   int
	doc []byte
}

// readDocuments splits files into their documents, ConfigMaps apart from workspaces.
func readDocuments(stdin io.Reader, files []string) (configMaps, workspaces []document, err error) {
	for _, f := range files {
		b, err := readFile(stdin, f)
		if err != nil {
			return nil, nil, err
		}
		d, err := kaito.SplitYAML(b)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f, err)
		}
		for _, doc := range d {
			n := len(configMaps) + len(workspaces) + 1
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err == nil && tm.APIVersion == "v1" && tm.Kind == "ConfigMap" {
				configMaps = append(configMaps, document{n, doc})
			} else {
				workspaces = append(workspaces, document{n, doc})
			}
		}
	}
	return configMaps, workspaces, nil
}

// dryRun has the server check every document, and reports each one it refuses: a file with one
// bad document starts nothing.
func (g *globals) dryRun(ctx context.Context, c *api.Client, configMaps, workspaces []document) error {
	bad := false
	check := func(d document, err error) error {
		var apiErr *api.APIError
		if !errors.As(err, &apiErr) {
			return err
		}
		fmt.Fprintf(g.err, "document %d: %v\n", d.n, err)
		bad = true
		return nil
	}
	for _, d := range configMaps {
		if _, err := c.SubmitConfigMap(ctx, d.doc, true); err != nil {
			if err := check(d, err); err != nil {
				return err
			}
		}
	}
	for _, d := range workspaces {
		if _, err := c.Submit(ctx, d.doc, true); err != nil {
			if err := check(d, err); err != nil {
				return err
			}
		}
	}
	if bad {
		return exitError{code: exitFailed}
	}
	return nil
}

func readFile(stdin io.Reader, name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(stdin)
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	return b, nil
}

// getConfigMaps prints the ConfigMaps submitted in the embedded mode as kubectl does:
// NAME DATA AGE, or the objects with -o yaml|json.
func (g *globals) getConfigMaps(ctx context.Context, c *api.Client, names []string, format string, allNS bool) error {
	var list []status.ConfigMap
	if len(names) == 1 {
		if allNS {
			return errors.New("a ConfigMap NAME is looked up in one namespace: use -n, not -A")
		}
		cm, err := c.ConfigMap(ctx, names[0])
		if err != nil {
			return err
		}
		list = []status.ConfigMap{*cm}
	} else {
		l, err := c.ConfigMaps(ctx, allNS)
		if err != nil {
			return err
		}
		list = l
	}
	switch format {
	case "json", "yaml":
		return printObjects(g.out, list, format, len(names) == 1)
	case "", "wide":
	default:
		return fmt.Errorf("-o %q: want yaml, json or wide", format)
	}
	tw := tabwriter.NewWriter(g.out, 0, 0, 3, ' ', 0)
	cols := "NAME\tDATA\tAGE"
	if allNS {
		cols = "NAMESPACE\t" + cols
	}
	fmt.Fprintln(tw, cols)
	for _, cm := range list {
		row := fmt.Sprintf("%s\t%d\t%s", cm.Name, len(cm.Data), age(time.Since(cm.Created)))
		if allNS {
			row = cm.Namespace + "\t" + row
		}
		fmt.Fprintln(tw, row)
	}
	return tw.Flush()
}

// printResources prints Kubernetes objects as kubectl does: one object, or several as a List, in
// JSON or YAML; TYPE/NAME lines (-o name); or a JSONPath template over the same object
// (-o jsonpath='{.status.endpoint}').
func printResources(out io.Writer, objects []kaito.Workspace, format string, single bool) error {
	if format == "name" {
		for _, o := range objects {
			fmt.Fprintf(out, "workspace.%s/%s\n", kaito.Group, o.Name)
		}
		return nil
	}
	var v any = map[string]any{"apiVersion": "v1", "kind": "List", "metadata": map[string]any{}, "items": objects}
	if single {
		v = objects[0]
	}
	tmpl, ok := strings.CutPrefix(format, "jsonpath=")
	if !ok {
		return printObjects(out, []any{v}, format, true)
	}
	jp := jsonpath.New("output").AllowMissingKeys(true)
	if err := jp.Parse(tmpl); err != nil {
		return fmt.Errorf("-o jsonpath: %w", err)
	}
	data, err := jsonData(v)
	if err != nil {
		return err
	}
	if err := jp.Execute(out, data); err != nil {
		return fmt.Errorf("-o jsonpath: %w", err)
	}
	_, err = fmt.Fprintln(out)
	return err
}

// jsonData is v as JSON's generic values (maps, slices, strings, numbers), what jsonpath walks.
func jsonData(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var data any
	return data, json.Unmarshal(b, &data)
}

// printObjects prints list, or its one element, as JSON or YAML.
func printObjects[T any](out io.Writer, list []T, format string, single bool) error {
	var v any = list
	if single {
		v = list[0]
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
	}
	_, err = out.Write(append(bytes.TrimRight(b, "\n"), '\n'))
	return err
}

// age prints a duration the way kubectl's AGE column does.
func age(d time.Duration) string { return duration.HumanDuration(d) }

func newWatch(g *globals) *cobra.Command {
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "watch NAME",
		Short: "Follow a workspace through the pipeline until it is Ready or Failed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := g.workspaces(cluster)
			if err != nil {
				return err
			}
			return g.watch(cmd.Context(), src, args[0])
		},
	}
	cluster.register(cmd.Flags())
	return cmd
}

// watch prints a workspace's timeline until it is Ready (nil) or Failed (exit 1).
func (g *globals) watch(ctx context.Context, src workspaceSource, name string) error {
	tl := newTimeline(g.out)
	var final *status.Workspace
	err := src.Watch(ctx, name, func(w status.Workspace) bool {
		tl.print(w)
		if w.Phase.Terminal() {
			final = &w
			return false
		}
		return true
	})
	if err != nil {
		return err
	}
	if final == nil {
		return nil
	}
	if final.Phase == status.Deleted {
		fmt.Fprintf(g.out, "\nworkspace %s deleted\n", final.Name)
		return nil
	}
	fmt.Fprintln(g.out)
	for _, s := range final.Steps {
		fmt.Fprintf(g.out, "  %-10s %8s\n", s.Name, s.Duration(time.Now()).Round(time.Millisecond))
	}
	printAttempts(g.out, *final)
	if final.Phase == status.Failed {
		fmt.Fprintf(g.out, "\n%s: %s: %s\n", tl.paint(sgrRed, "workspace "+final.Name+" Failed"), final.Failure.Reason, final.Failure.Message)
		return exitError{code: exitFailed}
	}
	// This generation's time: its timeline's, not the workspace's since its first generation.
	ready := fmt.Sprintf("workspace %s Ready in %s", final.Name, final.Updated.Sub(timelineStart(*final)).Round(time.Millisecond))
	fmt.Fprintf(g.out, "\n%s: %s\n", tl.paint(sgrGreen, ready), final.Endpoint)
	return nil
}

// printAttempts prints the generation's tuning attempts, when there was more than one, and the GPU
// time the workspace has held.
func printAttempts(out io.Writer, w status.Workspace) {
	if len(w.Attempts) > 1 {
		fmt.Fprintln(out)
		for _, a := range w.Attempts {
			fmt.Fprintf(out, "  attempt %d  %-26s batch %-3d seq %-5d %7.2f GPU-min  %s\n", a.Attempt, a.InstanceType, a.BatchSize, a.SeqLen,
				a.GPUSeconds/60, cmp.Or(a.Outcome, "Running"))
		}
	}
	if w.GPU != nil {
		fmt.Fprintf(out, "\n  GPU time held: %.2f GPU-min (tuning %.2f, serving %.2f)\n", w.GPU.Minutes(), w.GPU.TuningSeconds/60, w.GPU.ServingSeconds/60)
	}
}

// timelineStart is when the generation's timeline began: its first event, else its record's creation.
func timelineStart(w status.Workspace) time.Time {
	if len(w.Events) > 0 {
		return w.Events[0].Time
	}
	return w.Created
}

// timeline prints a workspace's events as they arrive. On a terminal a tuning run's progress is
// redrawn in place (one line that moves, not a line per report) and, unless NO_COLOR is set or
// TERM is dumb, what failed is red, what is waiting yellow and what is ready green.
type timeline struct {
	out     io.Writer
	printed map[string]bool
	// tty redraws progress in place; colour adds SGR colours.
	tty, colour bool
	// progressShown: the last line printed is a progress report, redrawn by the next one.
	progressShown bool
	// width is the terminal's, in columns (0: unknown): a progress line is cut to fit one row, as
	// the redraw moves up one row only.
	width int
}

// newTimeline is a timeline on out, with a terminal's redraw and colour when out is one.
func newTimeline(out io.Writer) *timeline {
	tty := isTerminal(out)
	t := &timeline{out: out, printed: map[string]bool{}, tty: tty, colour: tty && wantsColour(os.Getenv)}
	if f, ok := out.(*os.File); ok && tty {
		t.width, _, _ = term.GetSize(int(f.Fd()))
	}
	return t
}

// wantsColour follows the conventions: NO_COLOR set to anything turns colour off (no-color.org),
// and so does a terminal that says it has none.
func wantsColour(getenv func(string) string) bool {
	term := getenv("TERM")
	return getenv("NO_COLOR") == "" && term != "" && term != "dumb"
}

// SGR colours: red for failures and dead letters, yellow for holds and retries, green for ready.
const (
	sgrRed    = "\x1b[31m"
	sgrYellow = "\x1b[33m"
	sgrGreen  = "\x1b[32m"
	sgrBold   = "\x1b[1m"
	sgrReset  = "\x1b[0m"
	// Up one line and clear it: the previous progress line is overwritten.
	redrawLine = "\x1b[1A\x1b[2K"
)

func (t *timeline) paint(sgr, s string) string {
	if !t.colour || sgr == "" {
		return s
	}
	return sgr + s + sgrReset
}

// colourOf is an event type's colour on a terminal.
func colourOf(typ string) string {
	switch typ {
	case events.WorkspaceFailed:
		return sgrRed
	case events.TuningRetrying, events.AdapterHeld, events.AdapterCanary:
		return sgrYellow
	case events.InferenceReady, events.AdapterPromoted:
		return sgrGreen
	}
	return ""
}

// print prints the header once, then the events not printed yet.
func (t *timeline) print(w status.Workspace) {
	// The header once, though the first report may have no events yet (no event has this id).
	const header = ""
	if !t.printed[header] {
		t.printed[header] = true
		fmt.Fprintln(t.out, t.paint(sgrBold, fmt.Sprintf("workspace %s/%s generation %d", w.Namespace, w.Name, w.Generation)))
	}
	t.events(w)
}

// events prints the generation's events not printed yet, each with the time since its first.
func (t *timeline) events(w status.Workspace) {
	start := timelineStart(w)
	for _, e := range w.Events {
		if t.printed[e.ID] {
			continue
		}
		t.printed[e.ID] = true
		progress := e.Type == events.TuningProgress
		if t.tty && progress && t.progressShown {
			fmt.Fprint(t.out, redrawLine)
		}
		t.progressShown = progress
		line := fmt.Sprintf("  +%-9s %s %-20s %s", e.Time.Sub(start).Round(time.Millisecond), t.paint(colourOf(e.Type), fmt.Sprintf("%-30s", e.Type)),
			e.Source, e.Note)
		if progress && t.tty && t.width > 1 {
			// Progress is never coloured, so runes are what the terminal shows.
			if r := []rune(line); len(r) >= t.width {
				line = string(r[:t.width-1])
			}
		}
		fmt.Fprintln(t.out, line)
	}
}

func newRollback(g *globals) *cobra.Command {
	var generation int64
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "rollback NAME [--generation N]",
		Short: "Serve an earlier generation's adapter again, loaded live into the running replicas (no restart)",
		Long: `Serve an earlier generation's adapter again. The running replicas load it through the model
server's runtime LoRA API and switch to it once it answers; the adapter serving now keeps answering
until then. Without --generation, the newest generation before the one serving now. With
--kubeconfig/--context it annotates the Workspace resource (kaitoflow.io/rollback), and the
controller records a RollbackRequested or RollbackRefused Event on it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.selectAdapter(cmd.Context(), cluster, args[0], generation, workspaceSource.Rollback, "rollback requested",
				"kaitoflow get workspaces %s -o wide shows when the replicas serve the new one")
		},
	}
	cmd.Flags().Int64Var(&generation, "generation", 0, "the generation whose adapter to serve (default: the one before the generation serving now)")
	cluster.register(cmd.Flags())
	return cmd
}

// selectAdapter asks for a generation's adapter to be served (a rollback, a promotion) and says
// what was asked; how names the source's request, then names the command that shows the outcome.
func (g *globals) selectAdapter(ctx context.Context, cluster clusterFlags, name string, generation int64,
	ask func(workspaceSource, context.Context, string, int64) (*status.Workspace, error), what, then string) error {
	src, err := g.workspaces(cluster)
	if err != nil {
		return err
	}
	w, err := ask(src, ctx, name, generation)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.out, "workspace.kaito.sh/%s %s (serving generation %d now; "+then+")\n", w.Name, what, cmp.Or(w.Live, w.Serving()), w.Name)
	return nil
}

func newPromote(g *globals) *cobra.Command {
	var generation int64
	var checkpoint int
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "promote NAME --generation N [--checkpoint STEP]",
		Short: "Serve a generation's adapter that the promotion policy held (or any earlier one, or a checkpoint), live, through the rollback path",
		Long: `Serve generation N's adapter: one the workspace's promotion policy (kaitoflow.io/promotion) held,
or an earlier one; with --checkpoint, the checkpoint its run saved at that step (published as an
adapter image of its own when the run finished). It is loaded live into the running replicas, as a
rollback is, and answers once loaded; ` + "`kaitoflow adapters NAME`" + ` lists the generations and their
checkpoints, their scores and states. With --kubeconfig/--context it annotates the Workspace resource
(kaitoflow.io/rollback).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if generation < 1 {
				return errors.New("--generation is required")
			}
			if checkpoint < 0 {
				return fmt.Errorf("--checkpoint %d: want a step", checkpoint)
			}
			what := fmt.Sprintf("promotion of generation %d requested", generation)
			if checkpoint > 0 {
				what = fmt.Sprintf("generation %d's checkpoint at step %d requested", generation, checkpoint)
			}
			promote := func(src workspaceSource, ctx context.Context, name string, gen int64) (*status.Workspace, error) {
				return src.Promote(ctx, name, gen, checkpoint)
			}
			return g.selectAdapter(cmd.Context(), cluster, args[0], generation, promote, what, "`kaitoflow adapters %s` shows when it serves")
		},
	}
	cmd.Flags().Int64Var(&generation, "generation", 0, "the generation whose adapter to serve (required)")
	cmd.Flags().IntVar(&checkpoint, "checkpoint", 0, "serve the generation's checkpoint at this step, not its final adapter (adapters lists them)")
	cluster.register(cmd.Flags())
	return cmd
}

func newAdapters(g *globals) *cobra.Command {
	var cluster clusterFlags
	var output string
	cmd := &cobra.Command{
		Use:   "adapters NAME",
		Short: "Every generation's adapter: state (serving, canary, held, superseded, failed), digest, dataset, scores, live numbers, when",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := g.getWorkspace(cmd.Context(), cluster, args[0])
			if err != nil {
				return err
			}
			switch output {
			case "":
				return printAdapters(g.out, w)
			case "json", "yaml":
				return printObjects(g.out, []any{adapterList(w)}, output, true)
			}
			return fmt.Errorf("-o %q: want json or yaml", output)
		},
	}
	cluster.register(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json or yaml (each generation's record with its state), else a table")
	return cmd
}

// adapterState is one generation's adapter record with its state, as -o json|yaml print it.
type adapterState struct {
	kaito.AdapterRecord
	State string `json:"state"`
}

// adapterList is a workspace's adapter history, newest first, each with its state.
func adapterList(w *status.Workspace) map[string]any {
	items := make([]adapterState, 0, len(w.History))
	for i := len(w.History) - 1; i >= 0; i-- {
		items = append(items, adapterState{AdapterRecord: w.History[i], State: w.AdapterState(w.History[i])})
	}
	return map[string]any{"workspace": w.Namespace + "/" + w.Name, "adapters": items}
}

// printAdapters prints a workspace's adapter history, newest first, with what decided each state.
func printAdapters(out io.Writer, w *status.Workspace) error {
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "GENERATION\tSTATE\tDIGEST\tDATASET\tEVAL_LOSS\tSERVING_LOSS\tBASE_LOSS\tROUGE_L\tSERVING_ROUGE_L\tLIVE\tTRAINING_LOSS\tPUSHED\tWHY")
	for i := len(w.History) - 1; i >= 0; i-- {
		p := w.History[i]
		score := func(k string) string {
			if v, ok := p.Scores[k]; ok {
				return strconv.FormatFloat(v, 'g', 4, 64)
			}
			return "-"
		}
		pushed := "-"
		if !p.Pushed.IsZero() {
			pushed = age(time.Since(p.Pushed)) + " ago"
		}
		state := w.AdapterState(p)
		why := cmp.Or(p.Held, p.Failed)
		if state == status.AdapterCanary {
			why = "canary: " + p.Canary
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Generation, state, short(p.Digest),
			short(strings.Join(p.Datasets, ",")), score(events.MetricEvalLoss), score(events.MetricServingEvalLoss), score(events.MetricBaseEvalLoss),
			score(events.MetricTaskRougeL), score(events.ServingPrefix+events.MetricTaskRougeL), liveSummary(p.Live), cmp.Or(status.Sparkline(p.Loss), "-"),
			pushed, why)
		// Its servable checkpoints, newest first, under it: "3:400" is what promote --checkpoint takes.
		for j := len(p.Checkpoints) - 1; j >= 0; j-- {
			c := p.Checkpoints[j]
			state, loss := "checkpoint", "-"
			if w.Live == p.Generation && w.LiveCheckpoint == c.Step {
				state = status.AdapterServing
			}
			if c.EvalLoss != nil {
				loss = strconv.FormatFloat(*c.EvalLoss, 'g', 4, 64)
			}
			digest := c.Image
			if _, d, ok := strings.Cut(c.Image, "@"); ok {
				digest = d
			}
			fmt.Fprintf(tw, "%d:%d\t%s\t%s\t-\t%s\t-\t-\t-\t-\t-\t-\t-\tpromote --generation %d --checkpoint %d\n", p.Generation, c.Step, state,
				short(digest), loss, p.Generation, c.Step)
		}
	}
	return tw.Flush()
}

// liveSummary is what users saw of a judged canary, canary/serving: error rate, mean time to first
// token, tokens per second and the share of thumbs up ("-" for an adapter that had no canary).
func liveSummary(l *kaito.CanaryLive) string {
	if l == nil {
		return "-"
	}
	c, s := l.Canary, l.Stable
	out := fmt.Sprintf("errors %.1f%%/%.1f%%, first token %s/%s, %.0f/%.0f tok/s", 100*c.ErrorRate(), 100*s.ErrorRate(),
		c.FirstToken().Round(time.Millisecond), s.FirstToken().Round(time.Millisecond), c.TokensPerSecond(), s.TokensPerSecond())
	if ca, cn := c.Approval(); cn > 0 {
		sa, _ := s.Approval()
		out += fmt.Sprintf(", up %.0f%%/%.0f%%", 100*ca, 100*sa)
	}
	return fmt.Sprintf("%s (%d/%d requests)", out, c.Requests, s.Requests)
}

// short is a digest as people compare them: the algorithm's first 12 hex digits.
func short(digest string) string {
	if _, hex, ok := strings.Cut(digest, "sha256:"); ok && len(hex) >= 12 {
		return "sha256:" + hex[:12]
	}
	return cmp.Or(digest, "-")
}

func newDelete(g *globals) *cobra.Command {
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "delete [workspace] NAME",
		Short: "Delete a workspace: its capacity and inference service are released",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[len(args)-1]
			src, err := g.workspaces(cluster)
			if err != nil {
				return err
			}
			if err := src.Delete(cmd.Context(), name); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "workspace.kaito.sh/%s deleted\n", name)
			return nil
		},
	}
	cluster.register(cmd.Flags())
	return cmd
}
