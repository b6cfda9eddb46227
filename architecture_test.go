// The architecture test: the floors of the code and the arrows allowed between them, checked on
// every package's imports (go list), so an upward arrow fails here rather than in a review. A
// package's path names its floor; there is no list to keep.
//
//	internal/netguard          the address policy: imports nothing of kaitoflow
//	apis/                      Kaito's API as kaitoflow reads it: the floor above only
//	events                     the wire contract: the floors above
//	presets                    catalogs, planner, trainer contract: the floors above
//	internal/...               the library floor: the floors above and each other
//	dataplane/...              what runs inside the pods (chat-proxy, job-run, the vLLM stand-in):
//	                           the floors above and each other
//	functions/<step>/...       a step and its drivers: the floors above and its own step, never
//	                           another step
//	internal/compose/...       assembles the steps (up, fn, the API, the controller, the entrances)
//	internal/testenv/...       the test kit, for tests, benchmarks and the deploy checks
//	cmd/, deploy/, bench/,     leaves: nothing imports them
//	faults/
package kaitoflow_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/kaitoflow/kaitoflow/"

// floors, lowest first: a package may import one on a lower floor, or one on its own floor where
// that floor allows it (see allowed).
var floors = []string{"base", "apis", "events", "presets", "library", "data plane", "step", "composition"}

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

// step is the functions/<step> a package belongs to, or "".
func step(path string) string {
	if rest, ok := strings.CutPrefix(path, "functions/"); ok {
		return "functions/" + strings.Split(rest, "/")[0]
	}
	return ""
}

// floor names the floor of a package by its path, or "" for one on none.
func floor(path string) string {
	switch {
	case path == "internal/netguard":
		return "base"
	case under(path, "apis"):
		return "apis"
	case path == "events":
		return "events"
	case under(path, "presets"):
		return "presets"
	case under(path, "internal/compose"):
		return "composition"
	case under(path, "internal/testenv"):
		return "test kit"
	case under(path, "internal"):
		return "library"
	case under(path, "dataplane"):
		return "data plane"
	case step(path) != "":
		return "step"
	case under(path, "cmd"), under(path, "deploy"), under(path, "bench"), under(path, "faults"):
		return "leaf"
	}
	return ""
}

// allowed says whether from may import to, and if not, why.
func allowed(from, to string) (bool, string) {
	f, t := floor(from), floor(to)
	rank := func(floor string) int { return slices.Index(floors, floor) }
	switch {
	case f == "":
		return false, from + " is on no floor: put it under a directory architecture_test.go names"
	case t == "leaf":
		return false, "cmd/, deploy/, bench/ and faults/ are leaves"
	case t == "test kit":
		return f == "test kit" || f == "leaf", "the test kit is for tests"
	case f == "leaf", f == "test kit":
		return true, ""
	case f == "step" && t == "step":
		return step(to) == step(from), "a step imports its own step only, never another step"
	case f == t:
		return f != "base" && f != "events", f + " imports nothing on its own floor"
	}
	return rank(t) < rank(f), fmt.Sprintf("%s (%s) may not import %s (%s): an arrow goes down the floors %s",
		from, f, to, t, strings.Join(floors, " < "))
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
			t.Errorf("%s is on no floor: put it under a directory architecture_test.go names", p.ImportPath)
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
		{"apis/kaito", "events", false},
		{"internal/netguard", "apis/kaito", false},
		{"presets", "internal/runtime", false},
		{"internal/runtime", "functions/serve", false},
		{"internal/runtime", "internal/compose/assembly", false},
		{"internal/runtime", "dataplane/chatproxy", false},
		{"dataplane/chatproxy", "functions/serve", false},
		{"functions/publish", "functions/serve", false},
		{"functions/serve/knative", "internal/compose/assembly", false},
		{"internal/compose/assembly", "cmd/kaitoflow", false},
		{"internal/runtime", "internal/testenv", false},
		{"newthing", "events", false},
		{"apis/kaito", "internal/netguard", true},
		{"events", "apis/kaito", true},
		{"functions/serve/knative", "functions/serve", true},
		{"functions/serve", "dataplane/chatproxy", true},
		{"functions/tune", "dataplane/jobrun", true},
		{"dataplane/chatproxy", "dataplane/vllmsim", true},
		{"internal/compose/assembly", "functions/tune/jobs", true},
		{"internal/testenv/platform", "internal/testenv", true},
	} {
		if ok, why := allowed(tc.from, tc.to); ok != tc.ok {
			t.Errorf("%s → %s: allowed %v (%s), want %v", tc.from, tc.to, ok, why, tc.ok)
		}
	}
}

// Each deployable's binary links what it runs and not the others' parts: a function's binary
// (cmd/<function>) links its own step's Part alone, never the pipeline that names every Part, the
// controller or the embedded mode, nor the heavy libraries of parts it does not run (Knative's
// serving API outside serve, controller-runtime, the NATS server, client-go's generated clientset
// and informer factories and the API server's packages everywhere); chat-proxy's and job-run's
// link no composition at all. What a binary links is what it maps and starts with
// (bench: FunctionStart).
func TestEachBinaryLinksItsOwnPartAlone(t *testing.T) {
	parts := map[string]string{"provision": "provisionpart", "tune": "tunepart", "publish": "publishpart", "serve": "servepart"}
	for _, bin := range []string{"provision", "tune", "publish", "serve", "status", "signals", "deadletter", "chat-proxy", "job-run"} {
		out, err := exec.Command("go", "list", "-deps", "./cmd/"+bin).Output()
		if err != nil {
			t.Fatalf("go list -deps ./cmd/%s: %v", bin, err)
		}
		deps := strings.Fields(string(out))
		forbidden := []string{module + "internal/compose/pipeline", module + "internal/compose/controller", module + "internal/compose/embedded",
			"sigs.k8s.io/controller-runtime", "github.com/nats-io/nats-server"}
		for step, part := range parts {
			if step != bin {
				forbidden = append(forbidden, module+"internal/compose/assembly/"+part)
			}
		}
		if bin != "serve" {
			forbidden = append(forbidden, "knative.dev/serving")
		}
		if bin == "chat-proxy" || bin == "job-run" {
			forbidden = append(forbidden, module+"internal/compose/")
		}
		// The generated clientset's scheme registers every API group at start, its informer
		// factories link every group's informers, and the API server's authenticator brings the
		// API server's own packages: a pod's binary reads through internal/kubeclient (typed
		// clients on a scheme of the groups it uses) and the dynamic client.
		forbidden = append(forbidden, "k8s.io/apiserver", "k8s.io/client-go/kubernetes", "k8s.io/client-go/informers",
			"k8s.io/client-go/dynamic/dynamicinformer")
		for _, d := range deps {
			for _, f := range forbidden {
				if d == f || strings.HasPrefix(d, strings.TrimSuffix(f, "/")+"/") {
					t.Errorf("cmd/%s links %s", bin, d)
				}
			}
		}
		if p, ok := parts[bin]; ok && !slices.Contains(deps, module+"internal/compose/assembly/"+p) {
			t.Errorf("cmd/%s does not link its own part, %s", bin, p)
		}
	}
}
