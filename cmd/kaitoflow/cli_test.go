package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
)

func cli(t *testing.T, server string, args ...string) (string, string, error) {
	t.Helper()
	return cliIn(t, "", server, args...)
}

// cliIn runs the CLI with stdin.
func cliIn(t *testing.T, stdin, server string, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRoot(&out, &errb)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"--server", server}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func TestCLI(t *testing.T) {
	ctx := context.Background()
	p, err := embedded.Start(ctx, embedded.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Functions: assembly.Config{Sim: assembly.Sim{Delay: 50 * time.Millisecond}}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	seed := "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"

	// A file with one bad document submits nothing and names the fields.
	doc, _ := os.ReadFile(seed)
	bad := strings.Replace(string(doc), "method: qlora", "method: dora", 1)
	two := filepath.Join(t.TempDir(), "two.yaml")
	if err := os.WriteFile(two, []byte(strings.Replace(string(doc), "workspace-tuning-phi-3", "first", 1)+"---\n"+bad), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := cli(t, p.URL, "submit", "-f", two)
	var ex exitError
	if !errors.As(err, &ex) || ex.code != 1 || !strings.Contains(stderr, "tuning.method") || !strings.Contains(stderr, "document 2") {
		t.Fatalf("bad submit: err %v stderr %q", err, stderr)
	}
	if out, _, _ := cli(t, p.URL, "get", "workspaces"); strings.Contains(out, "first") {
		t.Fatalf("a file with an invalid document started a workspace:\n%s", out)
	}

	out, stderr, err := cli(t, p.URL, "submit", "-f", seed)
	if err != nil || !strings.Contains(out, "workspace.kaito.sh/workspace-tuning-phi-3 submitted") {
		t.Fatalf("submit: %v %q %q", err, out, stderr)
	}
	out, _, err = cli(t, p.URL, "watch", "workspace-tuning-phi-3")
	if err != nil {
		t.Fatalf("watch: %v\n%s", err, out)
	}
	for _, want := range []string{"kaitoflow.workspace.requested", "kaitoflow.node.ready", "kaitoflow.tuning.started", "kaitoflow.tuning.completed", "kaitoflow.image.pushed", "kaitoflow.inference.ready", "Ready in"} {
		if !strings.Contains(out, want) {
			t.Errorf("watch output lacks %q:\n%s", want, out)
		}
	}
	// logs: the trainer's output of the run, as a pod's log keeps it (the sim trainer says so).
	if out, _, err := cli(t, p.URL, "logs", "workspace-tuning-phi-3"); err != nil || !strings.Contains(out, "sim trainer: wrote a simulated adapter") {
		t.Errorf("logs: %v %q", err, out)
	}
	if out, _, err := cli(t, p.URL, "logs", "workspace-tuning-phi-3", "-f"); err != nil || !strings.Contains(out, "sim trainer: wrote a simulated adapter") {
		t.Errorf("logs -f of a run that ended: %v %q", err, out)
	}
	if _, stderr, err := cli(t, p.URL, "logs", "workspace-tuning-phi-3", "--attempt", "7"); err == nil || !strings.Contains(stderr+err.Error(), "attempt 7") {
		t.Errorf("logs --attempt 7 (no such attempt): %v %q", err, stderr)
	}
	out, _, err = cli(t, p.URL, "get", "workspaces")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME INSTANCE RESOURCEREADY INFERENCEREADY JOBSTARTED WORKSPACESUCCEEDED TARGETNODECOUNT STATE AGE" {
		t.Fatalf("get:\n%s", out)
	}
	f := strings.Fields(lines[1])
	if f[0] != "workspace-tuning-phi-3" || f[1] != "Standard_NC6s_v3" || f[2] != "True" || f[3] != "True" || f[4] != "True" || f[5] != "True" || f[6] != "1" || f[7] != "Ready" {
		t.Errorf("row %q", lines[1])
	}
	// chat: streamed through chat-proxy from the simulated runtime, which says it is simulated;
	// Kaito's /chat; and a conversation from stdin.
	out, _, err = cli(t, p.URL, "chat", "workspace-tuning-phi-3", "what is kaito?")
	if err != nil || !strings.HasPrefix(out, "[sim]") || !strings.Contains(out, "You said: what is kaito?") {
		t.Errorf("chat: %v %s", err, out)
	}
	// --url: the endpoint and a curl pod for each API, with the adapter as the model.
	out, _, err = cli(t, p.URL, "chat", "workspace-tuning-phi-3", "--url")
	if err != nil || !strings.Contains(out, "/v1/chat/completions -H 'Content-Type: application/json' -d '{\"messages\"") ||
		!strings.Contains(out, "/chat -H") || !strings.Contains(out, `"model":"workspace-tuning-phi-3"`) || !strings.HasPrefix(out, "http") {
		t.Errorf("chat --url: %v\n%s", err, out)
	}
	out, _, err = cli(t, p.URL, "chat", "workspace-tuning-phi-3", "hello", "--no-stream", "--max-tokens", "3")
	if err != nil || strings.TrimSpace(out) != "[sim] no model" {
		t.Errorf("chat --no-stream --max-tokens 3: %v %q", err, out)
	}
	out, _, err = cliIn(t, "first question\nsecond question\n", p.URL, "chat", "workspace-tuning-phi-3")
	if err != nil || !strings.Contains(out, "You said: first question\n") || !strings.Contains(out, "You said: second question\n") {
		t.Errorf("interactive chat: %v %q", err, out)
	}
	out, _, err = cli(t, p.URL, "get", "workspace", "workspace-tuning-phi-3", "-o", "yaml")
	if err != nil || !strings.Contains(out, "phase: Ready") || !strings.Contains(out, "instanceType: Standard_NC6s_v3") {
		t.Errorf("get -o yaml: %v\n%s", err, out)
	}
	rec, err := p.Store.Get(ctx, "default", "workspace-tuning-phi-3")
	if err != nil {
		t.Fatal(err)
	}
	// -o yaml is a Kaito Workspace object: it decodes as one (strictly), and submitted back it
	// changes nothing; -o name and -o jsonpath answer as kubectl's do; a list is a List.
	if ws, err := kaito.DecodeWorkspace([]byte(out)); err != nil || ws.APIVersion != kaito.APIVersionV1Beta1 || ws.Kind != kaito.Kind ||
		ws.Name != "workspace-tuning-phi-3" || ws.Generation != 1 || ws.Status.Phase != "Ready" || ws.Status.Endpoint != rec.Endpoint {
		t.Errorf("get -o yaml is not the Workspace object: %v %+v", err, ws)
	}
	if back, _, err := cliIn(t, out, p.URL, "submit", "-f", "-"); err != nil || !strings.Contains(back, "workspace-tuning-phi-3 unchanged") {
		t.Errorf("get -o yaml | submit -f -: %v %q", err, back)
	}
	if out, _, err := cli(t, p.URL, "get", "workspaces", "-o", "name"); err != nil || out != "workspace.kaito.sh/workspace-tuning-phi-3\n" {
		t.Errorf("get -o name: %v %q", err, out)
	}
	if out, _, err := cli(t, p.URL, "get", "workspace", "workspace-tuning-phi-3", "-o", "jsonpath={.status.endpoint}"); err != nil ||
		strings.TrimSpace(out) != rec.Endpoint {
		t.Errorf("get -o jsonpath: %v %q, want %q", err, out, rec.Endpoint)
	}
	out, _, err = cli(t, p.URL, "get", "workspaces", "-o", "json")
	var list struct {
		Kind  string
		Items []kaito.Workspace
	}
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || list.Kind != "List" || len(list.Items) != 1 || list.Items[0].Kind != kaito.Kind {
		t.Errorf("get workspaces -o json: %v\n%s", err, out)
	}
	// -o custom-columns as kubectl's: a header per column, <none> where a path finds nothing.
	state, _, _ := cli(t, p.URL, "get", "workspace", "workspace-tuning-phi-3", "-o", "jsonpath={.status.state}")
	out, _, err = cli(t, p.URL, "get", "workspaces", "-o", "custom-columns=NAME:.metadata.name,STATE:.status.state,PRESET:.tuning.preset.name,NOPE:.spec.nope")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); err != nil || len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME STATE PRESET NOPE" ||
		strings.Join(strings.Fields(lines[1]), " ") != "workspace-tuning-phi-3 "+strings.TrimSpace(state)+" phi-3-mini-128k-instruct <none>" {
		t.Errorf("get -o custom-columns: %v\n%s", err, out)
	}
	if _, _, err := cli(t, p.URL, "get", "workspaces", "-o", "custom-columns=NAME"); err == nil {
		t.Error("get -o custom-columns=NAME (no path) was taken")
	}
	// -l: the manifest's labels (the seed has none).
	if out, stderr, err := cli(t, p.URL, "get", "workspaces", "-l", "team=nlp"); err != nil || out != "" || !strings.Contains(stderr, "No resources found") {
		t.Errorf("get -l team=nlp: %v %q %q", err, out, stderr)
	}
	if out, _, err := cli(t, p.URL, "get", "workspaces", "-l", "!team", "-o", "name"); err != nil || out != "workspace.kaito.sh/workspace-tuning-phi-3\n" {
		t.Errorf("get -l !team: %v %q", err, out)
	}
	if _, _, err := cli(t, p.URL, "get", "workspaces", "-l", "team in (a,"); err == nil {
		t.Error("an invalid selector was taken")
	}
	// adapters: the one generation, serving, by its digest (and under it the checkpoints its run
	// kept, as "1:STEP checkpoint" rows); promote refuses the one serving.
	out, _, err = cli(t, p.URL, "adapters", "workspace-tuning-phi-3")
	lines = slices.DeleteFunc(strings.Split(strings.TrimSpace(out), "\n"), func(l string) bool { return strings.HasPrefix(l, "1:") })
	if err != nil || len(lines) != 2 ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[0]), " "), "GENERATION STATE DIGEST DATASET EVAL_LOSS SERVING_LOSS BASE_LOSS ROUGE_L") ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "1 serving "+rec.ImageDigest[:19]) {
		t.Errorf("adapters: %v\n%s", err, out)
	} else if f := strings.Fields(lines[1]); len(f) < 8 || !inUnitInterval(f[7]) {
		t.Errorf("adapters: ROUGE_L %q, want the task score of the run's answers in [0, 1]\n%s", f, out)
	}
	// describe: the fields, Kaito's conditions, the steps, the adapters and the events.
	if out, _, err := cli(t, p.URL, "describe", "workspace-tuning-phi-3"); err != nil ||
		!regexp.MustCompile(`(?m)^Name:\s+workspace-tuning-phi-3$`).MatchString(out) || !regexp.MustCompile(`(?m)^Phase:\s+Ready$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^  WorkspaceReady\s+True\s`).MatchString(out) || !strings.Contains(out, "Adapters:\n  GENERATION") ||
		!strings.Contains(out, "kaitoflow.inference.ready") {
		t.Errorf("describe: %v\n%s", err, out)
	}
	// The shell completes workspace names from the API, resource types, and -o's values.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"__complete", "describe", ""}, "workspace-tuning-phi-3\n"},
		{[]string{"__complete", "get", "workspaces", ""}, "workspace-tuning-phi-3\n"},
		{[]string{"__complete", "get", ""}, "workspaces\nconfigmaps\n"},
		{[]string{"__complete", "get", "workspaces", "-o", ""}, "yaml\njson\nname\nwide\njsonpath=\ncustom-columns=\n"},
		{[]string{"__complete", "rollback", "workspace-tuning-phi-3", "--generation", ""}, "1\tserving\n"},
		{[]string{"__complete", "version", "-o", ""}, "json\nyaml\n"},
	} {
		if out, _, err := cli(t, p.URL, tc.args...); err != nil || !strings.HasPrefix(out, tc.want) {
			t.Errorf("%v: %v %q, want it to begin %q", tc.args, err, out, tc.want)
		}
	}
	// wait, as kubectl's: a condition already met returns at once; one never met times out, exit 1.
	if out, _, err := cli(t, p.URL, "wait", "workspace-tuning-phi-3", "--for=condition=WorkspaceReady", "--timeout=20s"); err != nil ||
		out != "workspace.kaito.sh/workspace-tuning-phi-3 condition met\n" {
		t.Errorf("wait for WorkspaceReady: %v %q", err, out)
	}
	if _, _, err := cli(t, p.URL, "wait", "workspace-tuning-phi-3", "--for=condition=WorkspaceReady=False", "--timeout=500ms"); err == nil ||
		!strings.Contains(err.Error(), "timed out after 500ms") {
		t.Errorf("wait for a condition never met: %v", err)
	}
	if _, _, err := cli(t, p.URL, "wait", "workspace-tuning-phi-3", "--for=ready"); err == nil || !strings.Contains(err.Error(), "want condition=") {
		t.Errorf("wait --for=ready: %v", err)
	}
	out, _, err = cli(t, p.URL, "adapters", "workspace-tuning-phi-3", "-o", "json")
	var history struct {
		Adapters []struct {
			Generation int64
			State      string
			Digest     string
		}
	}
	if err != nil || json.Unmarshal([]byte(out), &history) != nil || len(history.Adapters) != 1 ||
		history.Adapters[0].Generation != 1 || history.Adapters[0].State != "serving" || history.Adapters[0].Digest != rec.ImageDigest {
		t.Errorf("adapters -o json: %v\n%s", err, out)
	}
	if _, _, err := cli(t, p.URL, "promote", "workspace-tuning-phi-3"); err == nil || !strings.Contains(err.Error(), "--generation is required") {
		t.Errorf("promote without --generation: %v", err)
	}
	if _, _, err := cli(t, p.URL, "promote", "workspace-tuning-phi-3", "--generation", "1"); err == nil || !strings.Contains(err.Error(), "generation 1 is the one serving") {
		t.Errorf("promote the generation serving: %v", err)
	}
	// serve's init container: pull the adapter image and unpack it, digests verified.
	dir := t.TempDir()
	if out, _, err := cli(t, p.URL, "pull-adapter", rec.Image, dir, "--insecure-registry"); err != nil || !strings.Contains(out, "2 file(s)") {
		t.Fatalf("pull-adapter: %v %s", err, out)
	}
	for _, f := range []string{"adapter_config.json", "adapter_model.safetensors"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("pull-adapter: %v", err)
		}
	}
	if _, _, err := cli(t, p.URL, "delete", "workspace-tuning-phi-3"); err != nil {
		t.Fatal(err)
	}
	// Deletion is an event too: the record goes once the projector has seen it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := cli(t, p.URL, "get", "workspace", "workspace-tuning-phi-3")
		if err != nil && strings.Contains(err.Error(), "not found") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("get after delete: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestVersion(t *testing.T) {
	out, _, err := cli(t, "http://unused", "version")
	// A test binary has no main module version of its own; what matters is that the command
	// reports the build info the toolchain recorded, with the Go version.
	if err != nil || !strings.HasPrefix(out, "kaitoflow ") || !strings.Contains(out, " go1.") {
		t.Fatalf("version: %v %q", err, out)
	}
	if v := describeBuild("v1.2.3"); !strings.HasPrefix(v, "v1.2.3 ") || !strings.Contains(v, " go1.") {
		t.Errorf("a release build: %q", v)
	}
	out, _, err = cli(t, "http://unused", "version", "-o", "json")
	var b build
	if err != nil || json.Unmarshal([]byte(out), &b) != nil || b.Version == "" || !strings.HasPrefix(b.Go, "go1.") {
		t.Errorf("version -o json: %v %q", err, out)
	}
	if _, _, err := cli(t, "http://unused", "version", "-o", "wide"); err == nil {
		t.Error("version -o wide was taken")
	}
}

// The release build stamps its version as .ko.yaml does (-X main.releaseVersion): a renamed
// variable would leave every release saying (devel).
func TestReleaseVersionIsStamped(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	ko, err := os.ReadFile("../../.ko.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const flag = "-X main.releaseVersion="
	if !strings.Contains(string(ko), flag) {
		t.Fatalf(".ko.yaml does not stamp the version with %s", flag)
	}
	bin := filepath.Join(t.TempDir(), "kaitoflow")
	if out, err := exec.Command("go", "build", "-ldflags", flag+"v9.9.9", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "kaitoflow v9.9.9 ") {
		t.Fatalf("version of a release build: %v %q", err, out)
	}
}

// A script tells a failure from a server it could not reach by the exit code.
func TestExitCodes(t *testing.T) {
	_, _, unreachable := cli(t, "http://127.0.0.1:1", "get", "workspaces")
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"the API is not there", unreachable, exitUnreachable},
		{"a workspace failed, already said", exitError{code: exitFailed}, exitFailed},
		{"any other error", errors.New("--for \"x\": want condition=COND[=STATUS] or delete"), exitFailed},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("%s (%v): exit %d, want %d", tc.name, tc.err, got, tc.want)
		}
	}
}

// inUnitInterval reports whether s is a number in [0, 1].
func inUnitInterval(s string) bool {
	v, err := strconv.ParseFloat(s, 64)
	return err == nil && v >= 0 && v <= 1
}
