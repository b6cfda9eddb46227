package fnhost

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly/servepart"
	"github.com/kaitoflow/kaitoflow/internal/compose/pipeline"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// fn with the sim deployer guards the sim's endpoints with the token as up does: an unload from
// anyone once broke the next chat. /healthz stays open for the platform's probes.
func TestFnSimEndpointsRequireTheToken(t *testing.T) {
	sim := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	_, mux := endpoints(serve.Name, &assembly.Assembly{SimInference: sim}, "fn-token")
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, tc := range []struct {
		path, auth string
		want       int
	}{
		{assembly.SimInferencePath + "/default/any/v1/unload_lora_adapter", "", http.StatusUnauthorized},
		{assembly.SimInferencePath + "/default/any/v1/unload_lora_adapter", "Bearer wrong", http.StatusUnauthorized},
		{assembly.SimInferencePath + "/default/any/v1/unload_lora_adapter", "Bearer fn-token", http.StatusOK},
		{"/healthz", "", http.StatusOK},
	} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+tc.path, nil)
		if tc.path == "/healthz" {
			req.Method = http.MethodGet
		}
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s with %q: %d, want %d", tc.path, tc.auth, resp.StatusCode, tc.want)
		}
	}
}

// A function's own binary takes every flag from KAITOFLOW_<FLAG> as the CLI does (a ConfigMap's
// envFrom configures it), and refuses what cannot work before it starts anything.
func TestCommandReadsItsFlagsFromTheEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name, env, value, want string
	}{
		{"a transport that is none", "KAITOFLOW_TRANSPORT", "carrier-pigeon", `--transport "carrier-pigeon"`},
		{"a log level that is none", "KAITOFLOW_LOG_LEVEL", "loud", "--log-level"},
		{"a preflight mode that is none", "KAITOFLOW_PREFLIGHT", "sometimes", `preflight "sometimes"`},
		{"a delivery setting that does not parse", "KAITOFLOW_ACK_WAIT", "soon", "KAITOFLOW_ACK_WAIT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(tc.env, tc.value)
			cmd := Command(assembly.SignalsPart())
			cmd.SetArgs(nil)
			cmd.SetOut(io.Discard)
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s=%s: %v, want an error naming %s", tc.env, tc.value, err, tc.want)
			}
		})
	}
}

// serve with the sim deployer over HTTP takes CloudEvents at / and serves the simulated replicas'
// endpoints beside them: both on one mux, which once refused the pair at start.
func TestServeWithTheSimDeployerStartsOverHTTP(t *testing.T) {
	addr := testenv.FreeAddr(t)
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	defer sink.Close()
	t.Setenv("KAITOFLOW_TOKEN", "fn-token")
	cmd := Command(servepart.Part())
	cmd.SetArgs([]string{"--transport", "http", "--listen", addr, "--sink", sink.URL, "--data-dir", t.TempDir(), "--log-level", "error"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	testenv.Eventually(t, 20*time.Second, "serve to answer /healthz", func() bool {
		select {
		case err := <-done:
			t.Fatalf("serve stopped: %v", err)
		default:
		}
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{http.MethodPost, assembly.SimInferencePath + "/default/any/v1/unload_lora_adapter", "", http.StatusUnauthorized},
		{http.MethodGet, assembly.SimInferencePath + "/default/any/v1/models", "", http.StatusUnauthorized},
		// Not a CloudEvent: the receiver refuses it, rather than the sim taking it.
		{http.MethodPost, "/", "", http.StatusBadRequest},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+addr+tc.path, strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
}

// A token comes from one place, and a token file holds one: an empty file would leave the sim's
// endpoints open to anyone.
func TestToken(t *testing.T) {
	dir := t.TempDir()
	file := func(content string) string {
		f := filepath.Join(dir, fmt.Sprintf("token-%d", len(content)))
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, tc := range []struct {
		name, token, file, want, err string
	}{
		{name: "the flag or environment's", token: "a", want: "a"},
		{name: "none", want: ""},
		{name: "the file's first line", file: file("b\n"), want: "b"},
		{name: "an empty file", file: file(""), err: "is empty"},
		{name: "both", token: "a", file: file("b\n"), err: "give one"},
		{name: "a file that is not there", file: filepath.Join(dir, "missing"), err: "--token-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Token(tc.token, tc.file)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("%q %v, want %q", got, err, tc.want)
			}
		})
	}
}

// Over HTTP with a sink, only the functions that keep or read records in JetStream connect to
// NATS; the others run with no NATS at all.
func TestOnlyTheFunctionsWithRecordsNeedNATS(t *testing.T) {
	want := map[string]bool{"provision": true, "tune": true, "status": true}
	for _, p := range pipeline.Parts() {
		if got := needsNATS(p, &Flags{transport: "http", sink: "http://broker"}); got != want[p.Name] {
			t.Errorf("%s over HTTP with a sink: needs NATS %v, want %v", p.Name, got, want[p.Name])
		}
		if !needsNATS(p, &Flags{transport: "jetstream"}) || !needsNATS(p, &Flags{transport: "http"}) {
			t.Errorf("%s: no NATS with the JetStream transport or without a sink", p.Name)
		}
	}
}
