package deploy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// The Grafana dashboard (deploy/grafana/kaitoflow.json) draws only metrics kaitoflow exports: each
// name in its queries is one the runtime's or the status function's collectors describe (a
// histogram's _bucket, _sum and _count are its own), so a renamed metric fails here, not as an
// empty panel.
func TestGrafanaDashboardDrawsExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("grafana/kaitoflow.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		defer close(ch)
		runtime.NewMetrics(nil).Describe(ch)
		status.NewGPUCollector(nil).Describe(ch)
	}()
	var exported []string
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			exported = append(exported, m[1])
		}
	}
	name := regexp.MustCompile(`kaitoflow_[a-z_]+`)
	queries := 0
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			queries++
			for _, n := range name.FindAllString(target.Expr, -1) {
				base := n
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					base = strings.TrimSuffix(base, suffix)
				}
				if !slices.Contains(exported, n) && !slices.Contains(exported, base) {
					t.Errorf("panel %q draws %s, which kaitoflow does not export (exported: %v)", p.Title, n, exported)
				}
			}
		}
	}
	if queries < 6 {
		t.Errorf("the dashboard has %d queries", queries)
	}
}
