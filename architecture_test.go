// The architecture test: the floors of the code and the arrows allowed between them, checked on
// every package's imports (go list), so an upward arrow fails here rather than in a review.
//
//	events                     the wire contract: imports nothing of kaitoflow
//	presets                    catalogs, planner, trainer contract: events only
//	library floor              internal/ packages the functions stand on: events, presets, each other
//	functions/<step>/...       a step and its drivers: the floors below, and its own step only
//	composition floor          internal/ packages that assemble steps (up, fn, the API, the controller)
//	cmd/, deploy/, bench/,     leaves: nothing imports them
//	faults/
package kaitoflow_test

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/kaitoflow/kaitoflow/"

// library are the packages below the functions; composition those above them. A new internal
// package must be placed in one of them (the test fails until it is).
var (
	library = []string{
		"internal/adapter", "internal/callerauth", "internal/dataset", "internal/golden", "internal/jobrun",
		"internal/kubeerr", "internal/kubewatch", "internal/kvjson", "internal/logctx", "internal/natsauth",
		"internal/natsconn", "internal/netguard", "internal/registryauth", "internal/runtime",
		"internal/signature", "internal/status", "internal/telemetry", "internal/vllmproc",
	}
	composition = []string{
		"internal/api", "internal/assembly", "internal/controller", "internal/embedded", "internal/ingress",
		"internal/sources",
	}
	// testKit is imported by tests, benchmarks and the deploy checks only.
	testKit = "internal/testenv"
)

type pkg struct {
	ImportPath string
	Imports    []string
}

func packages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			return pkgs
		} else if err != nil {
			t.Fatal(err)
		}
		p.ImportPath = strings.TrimPrefix(p.ImportPath, module)
		var own []string
		for _, imp := range p.Imports {
			if rel, ok := strings.CutPrefix(imp, module); ok {
				own = append(own, rel)
			}
		}
		p.Imports = own
		pkgs = append(pkgs, p)
	}
}

// under reports whether path is dir or inside it.
func under(path, dir string) bool { return path == dir || strings.HasPrefix(path, dir+"/") }

func inAny(path string, dirs []string) bool {
	return slices.ContainsFunc(dirs, func(d string) bool { return under(path, d) })
}

// step is the functions/<step> a package belongs to, or "".
func step(path string) string {
	if rest, ok := strings.CutPrefix(path, "functions/"); ok {
		return "functions/" + strings.Split(rest, "/")[0]
	}
	return ""
}

// floor names the floor of a package, or "" for one on none.
func floor(path string) string {
	switch {
	case path == "events":
		return "events"
	case under(path, "presets"):
		return "presets"
	case inAny(path, library):
		return "library"
	case step(path) != "":
		return "step"
	case inAny(path, composition):
		return "composition"
	case under(path, testKit):
		return "test kit"
	case under(path, "cmd"), under(path, "deploy"), under(path, "bench"), under(path, "faults"):
		return "leaf"
	}
	return ""
}

// allowed says whether from may import to, and if not, why.
func allowed(from, to string) (bool, string) {
	below := func(p string) bool { f := floor(p); return f == "events" || f == "presets" || f == "library" }
	switch f := floor(from); {
	case f == "":
		return false, from + " is on no floor: add it to architecture_test.go's library or composition"
	case floor(to) == "leaf":
		return false, "cmd/, deploy/, bench/ and faults/ are leaves"
	case floor(to) == "test kit" && f != "test kit":
		return false, "the test kit is for tests"
	case f == "events":
		return false, "events is the wire contract and imports nothing of kaitoflow"
	case f == "presets":
		return floor(to) == "events" || floor(to) == "presets", "presets stands on events only"
	case f == "library":
		return below(to), "a library package imports only events, presets and the library floor"
	case f == "step":
		return below(to) || step(to) == step(from), "a step imports the floors below it and its own step, never another step or the composition"
	}
	return true, ""
}

func TestTheFloorsHold(t *testing.T) {
	pkgs := packages(t)
	if len(pkgs) < 30 {
		t.Fatalf("go list found %d packages", len(pkgs))
	}
	for _, p := range pkgs {
		if p.ImportPath == strings.TrimSuffix(module, "/") {
			continue // this test's own package
		}
		if floor(p.ImportPath) == "" {
			t.Errorf("%s is on no floor: add it to architecture_test.go's library or composition", p.ImportPath)
		}
		for _, imp := range p.Imports {
			if ok, why := allowed(p.ImportPath, imp); !ok {
				t.Errorf("%s imports %s: %s", p.ImportPath, imp, why)
			}
		}
	}
}

// The rules themselves refuse what they should: an upward or sideways arrow of each kind.
func TestTheRulesRefuseUpwardArrows(t *testing.T) {
	for _, tc := range []struct {
		from, to string
		ok       bool
	}{
		{"events", "presets", false},
		{"presets", "internal/runtime", false},
		{"internal/runtime", "functions/serve", false},
		{"internal/runtime", "internal/assembly", false},
		{"functions/publish", "functions/serve", false},
		{"functions/serve/knative", "internal/assembly", false},
		{"internal/assembly", "cmd/kaitoflow", false},
		{"internal/runtime", "internal/testenv", false},
		{"internal/newthing", "events", false},
		{"functions/serve/knative", "functions/serve", true},
		{"functions/tune", "internal/jobrun", true},
		{"internal/assembly", "functions/tune/jobs", true},
		{"internal/testenv/platform", "internal/testenv", true},
	} {
		if ok, why := allowed(tc.from, tc.to); ok != tc.ok {
			t.Errorf("%s → %s: allowed %v (%s), want %v", tc.from, tc.to, ok, why, tc.ok)
		}
	}
}
