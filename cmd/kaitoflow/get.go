package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/util/jsonpath"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// getOptions are get's flags for workspaces.
type getOptions struct {
	output, selector string
	all, watch       bool
}

func newGet(g *globals) *cobra.Command {
	var o getOptions
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "get workspaces|configmaps [NAME]",
		Short: "List workspaces with kubectl's columns, or show one; list the submitted ConfigMaps",
		Example: "  kaitoflow get workspaces\n  kaitoflow get workspace workspace-tuning-phi-3 -o yaml\n  kaitoflow get workspaces -l team=nlp -w\n" +
			"  kaitoflow get workspaces -o custom-columns=NAME:.metadata.name,STATE:.status.state\n  kaitoflow get configmaps",
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "workspaces", "workspace", "ws", "wk", "wks":
			case "configmaps", "configmap", "cm":
				if o.watch || o.selector != "" {
					return fmt.Errorf("-w and -l are for workspaces")
				}
				return g.getConfigMaps(cmd.Context(), g.client(), args[1:], o.output, o.all)
			default:
				return fmt.Errorf("unknown resource %q: kaitoflow has workspaces and configmaps", args[0])
			}
			src, err := g.workspaces(cluster)
			if err != nil {
				return err
			}
			return g.getWorkspaces(cmd.Context(), src, args[1:], o)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&o.output, "output", "o", "",
		"output format: yaml or json (Kaito Workspace objects, a List of them without NAME), name, jsonpath=TEMPLATE, "+
			"custom-columns=HEADER:JSONPATH[,...], wide")
	fl.BoolVarP(&o.all, "all-namespaces", "A", false, "list workspaces in every namespace")
	fl.StringVarP(&o.selector, "selector", "l", "", "only workspaces whose labels match this selector (team=nlp, tier!=dev, env in (a,b))")
	// A list used to be looked at again every --watch-interval; it is streamed now. Scripts that
	// pass it keep working.
	fl.Duration("watch-interval", 2*time.Second, "")
	_ = fl.MarkDeprecated("watch-interval", "a list is streamed as it changes; the flag does nothing")
	fl.BoolVarP(&o.watch, "watch", "w", false, "after printing, print each workspace again when it changes (Ctrl-C stops)")
	cluster.register(fl)
	return cmd
}

// getWorkspaces prints the workspaces names (all of them when none) selects, then with -w each
// one again when its printed form changes.
func (g *globals) getWorkspaces(ctx context.Context, src workspaceSource, names []string, o getOptions) error {
	sel, err := labels.Parse(o.selector)
	if err != nil {
		return fmt.Errorf("-l %q: %w", o.selector, err)
	}
	p, err := newWorkspacePrinter(o.output, o.all)
	if err != nil {
		return err
	}
	list, err := listWorkspaces(ctx, src, names, o.all, sel)
	if err != nil {
		return err
	}
	if len(list) == 0 && len(names) == 0 {
		// As kubectl: on stderr, so a script reading stdout sees nothing.
		where := "in " + cmp.Or(g.namespace, "default") + " namespace"
		if o.all {
			where = "in any namespace"
		}
		fmt.Fprintf(g.err, "No resources found %s.\n", where)
	} else if err := p.print(g.out, list, len(names) == 1, true); err != nil {
		return err
	}
	if !o.watch {
		return nil
	}
	seen := map[string]string{}
	for _, w := range list {
		seen[w.Namespace+"/"+w.Name] = p.key(w)
	}
	// A table's header once, with the first row printed.
	header := len(list) == 0
	changed := func(w status.Workspace) error {
		if r := w.Resource(); !sel.Matches(labels.Set(r.Labels)) {
			return nil
		}
		k := w.Namespace + "/" + w.Name
		if seen[k] == p.key(w) {
			return nil
		}
		seen[k] = p.key(w)
		err := p.print(g.out, []status.Workspace{w}, true, header)
		header = false
		return err
	}
	if len(names) == 1 {
		// One workspace is streamed, as kubectl get -w NAME follows one object.
		var perr error
		err := src.Watch(ctx, names[0], func(w status.Workspace) bool {
			perr = changed(w)
			return perr == nil
		})
		return cmp.Or(perr, ignoreCancel(ctx, err))
	}
	// A list is followed as a whole: its current workspaces (printed above, so unchanged ones are
	// not printed again), then each change.
	var perr error
	err = src.WatchList(ctx, o.all, func(w status.Workspace) bool {
		perr = changed(w)
		return perr == nil
	})
	return cmp.Or(perr, ignoreCancel(ctx, err))
}

// ignoreCancel is err, unless ctx ended (Ctrl-C ends a watch as it should).
func ignoreCancel(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// listWorkspaces is the workspaces names says, or every one of the namespace (every namespace
// with all), those sel matches.
func listWorkspaces(ctx context.Context, src workspaceSource, names []string, all bool, sel labels.Selector) ([]status.Workspace, error) {
	var list []status.Workspace
	if len(names) == 1 {
		w, err := src.Get(ctx, names[0])
		if err != nil {
			return nil, err
		}
		list = []status.Workspace{*w}
	} else {
		l, err := src.List(ctx, all)
		if err != nil {
			return nil, err
		}
		list = l
	}
	return slices.DeleteFunc(list, func(w status.Workspace) bool {
		r := w.Resource()
		return !sel.Matches(labels.Set(r.Labels))
	}), nil
}

// workspacePrinter prints workspaces in one -o format.
type workspacePrinter struct {
	format string
	allNS  bool
	// columns are custom-columns' headers and compiled paths.
	headers []string
	columns []*jsonpath.JSONPath
}

func newWorkspacePrinter(format string, allNS bool) (*workspacePrinter, error) {
	p := &workspacePrinter{format: format, allNS: allNS}
	switch {
	case format == "", format == "wide", format == "json", format == "yaml", format == "name", strings.HasPrefix(format, "jsonpath="):
	case strings.HasPrefix(format, "custom-columns="):
		spec := strings.TrimPrefix(format, "custom-columns=")
		if spec == "" {
			return nil, fmt.Errorf("-o custom-columns: want HEADER:JSONPATH[,HEADER:JSONPATH...], e.g. NAME:.metadata.name,STATE:.status.state")
		}
		for _, col := range strings.Split(spec, ",") {
			header, path, ok := strings.Cut(col, ":")
			if !ok || header == "" || path == "" {
				return nil, fmt.Errorf("-o custom-columns: %q: want HEADER:JSONPATH", col)
			}
			// kubectl's relaxed form: .status.state means {.status.state}.
			if !strings.HasPrefix(path, "{") {
				path = "{" + path + "}"
			}
			jp := jsonpath.New(header).AllowMissingKeys(true)
			if err := jp.Parse(path); err != nil {
				return nil, fmt.Errorf("-o custom-columns: %s: %w", header, err)
			}
			p.headers, p.columns = append(p.headers, header), append(p.columns, jp)
		}
	default:
		return nil, fmt.Errorf("-o %q: want yaml, json, name, jsonpath=TEMPLATE, custom-columns=SPEC or wide", format)
	}
	return p, nil
}

// table reports whether the format is a table: the default columns, wide, or custom ones.
func (p *workspacePrinter) table() bool {
	return p.format == "" || p.format == "wide" || p.columns != nil
}

// print prints list: objects, or a table's rows (with its header when header is set).
func (p *workspacePrinter) print(out io.Writer, list []status.Workspace, single, header bool) error {
	if !p.table() {
		objects := make([]kaito.Workspace, len(list))
		for i := range list {
			objects[i] = list[i].Resource()
		}
		return printResources(out, objects, p.format, single)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 3, ' ', 0)
	if header {
		fmt.Fprintln(tw, strings.Join(p.header(), "\t"))
	}
	now := time.Now()
	for _, w := range list {
		row, err := p.row(w, now)
		if err != nil {
			return err
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

// key is what -w compares: the printed form, less what moves with the clock (AGE).
func (p *workspacePrinter) key(w status.Workspace) string {
	if !p.table() {
		var b strings.Builder
		_ = p.print(&b, []status.Workspace{w}, true, false)
		return b.String()
	}
	row, _ := p.row(w, w.Created)
	return strings.Join(row, "\t")
}

func (p *workspacePrinter) header() []string {
	if p.columns != nil {
		return p.headers
	}
	// Kaito v1beta1's columns, as kubectl prints them for the CRD.
	cols := []string{"NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "JOBSTARTED", "WORKSPACESUCCEEDED", "TARGETNODECOUNT", "STATE", "AGE"}
	if p.allNS {
		cols = append([]string{"NAMESPACE"}, cols...)
	}
	if p.format == "wide" {
		cols = append(cols, "PHASE", "SERVING", "REPLICAS", "ADAPTERS", "IMAGE", "ENDPOINT")
	}
	return cols
}

// row is one workspace's cells, AGE as of now.
func (p *workspacePrinter) row(w status.Workspace, now time.Time) ([]string, error) {
	if p.columns != nil {
		return customRow(w.Resource(), p.columns)
	}
	row := []string{w.Name, w.InstanceType,
		w.ConditionStatus(status.CondResourceReady), w.ConditionStatus(status.CondInferenceReady),
		w.ConditionStatus(status.CondJobStarted), w.ConditionStatus(status.CondWorkspaceSucceeded),
		strconv.Itoa(w.TargetNodeCount()), w.State(), age(now.Sub(w.Created))}
	if p.allNS {
		row = append([]string{w.Namespace}, row...)
	}
	if p.format == "wide" {
		serving, image := "", w.Image
		if w.Endpoint != "" {
			serving = strconv.FormatInt(w.Serving(), 10)
			if pushed, ok := w.Pushed(w.Serving()); ok {
				image = pushed.Image
			}
		}
		row = append(row, string(w.Phase), cmp.Or(serving, "<none>"), strconv.Itoa(w.Replicas), cmp.Or(strings.Join(w.Adapters, ","), "<none>"),
			image, w.Endpoint)
	}
	return row, nil
}

// customRow evaluates each column's path on the object, as kubectl's custom-columns does:
// <none> where a path finds nothing, values joined by commas where it finds several.
func customRow(obj kaito.Workspace, columns []*jsonpath.JSONPath) ([]string, error) {
	data, err := jsonData(obj)
	if err != nil {
		return nil, err
	}
	row := make([]string, len(columns))
	for i, jp := range columns {
		results, err := jp.FindResults(data)
		if err != nil {
			return nil, fmt.Errorf("-o custom-columns: %w", err)
		}
		var vals []string
		for _, r := range results {
			for _, v := range r {
				vals = append(vals, fmt.Sprint(v.Interface()))
			}
		}
		row[i] = cmp.Or(strings.Join(vals, ","), "<none>")
	}
	return row, nil
}
