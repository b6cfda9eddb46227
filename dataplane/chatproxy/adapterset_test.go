package chatproxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/dataplane/vllmsim"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// route is one public model name served by an adapter image.
type route struct{ public, image string }

// setOf is the adapter set a serving step writes for routes, at version, the first route the
// default. How the step names adapters is its own rule, tested with it; here an adapter is named
// after its image, so two sets that name one image ask for one loaded adapter.
func setOf(version int64, routes ...route) AdapterSet {
	set := AdapterSet{Version: version, Routes: map[string]string{}, Generations: map[string]int64{}}
	for _, r := range routes {
		name := loraName(r.public, r.image)
		if !slices.ContainsFunc(set.Adapters, func(a AdapterSpec) bool { return a.Name == name }) {
			set.Adapters = append(set.Adapters, AdapterSpec{Name: name, Image: r.image})
		}
		set.Routes[r.public], set.Generations[r.public] = name, version
		if set.Default == "" {
			set.Default = r.public
		}
	}
	return set
}

func loraName(public, image string) string {
	sum := sha256.Sum256([]byte(image))
	return public + "-" + hex.EncodeToString(sum[:4])
}

func newManager(t *testing.T, rt *vllmsim.Server) *AdapterManager {
	t.Helper()
	srv := httptest.NewServer(rt.Handler())
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return &AdapterManager{Runtime: u, Dir: t.TempDir(), Pull: RegistryPuller(nil), Replica: "r0", Log: slog.New(slog.DiscardHandler)}
}

func TestAdapterManagerMovesRoutesOnlyToAnsweringAdapters(t *testing.T) {
	ctx := context.Background()
	host := testenv.Registry(t)
	v1, v2 := testenv.PushAdapter(t, host, "ws", "v1"), testenv.PushAdapter(t, host, "ws", "v2")
	rt := &vllmsim.Server{Base: "phi-3"}
	m := newManager(t, rt)
	set := func(version int64, image string) AdapterSet {
		return setOf(version, route{"ws", image})
	}
	tests := []struct {
		name     string
		set      AdapterSet
		wantErr  string
		route    string // where "ws" routes afterwards
		loaded   []string
		version  int64
		failures bool
	}{
		{"first adapter", set(1, v1), "", loraName("ws", v1), []string{loraName("ws", v1)}, 1, false},
		{"a redelivered older set changes nothing", set(1, v2), "", loraName("ws", v1), []string{loraName("ws", v1)}, 1, false},
		{"an image that is not there keeps the old route", set(2, host+"/ws:missing"), "pull", loraName("ws", v1), []string{loraName("ws", v1)}, 1, true},
		{"the next generation replaces it and the old one is unloaded", set(3, v2), "", loraName("ws", v2), []string{loraName("ws", v2)}, 3, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			// A failing set is reported once it has failed failThreshold times (a registry blip
			// is retried, not reported); each attempt fails the same way.
			for range failThreshold {
				if err = m.Apply(ctx, tc.set); err == nil {
					break
				}
			}
			if (err != nil) != (tc.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Apply: %v, want error %q", err, tc.wantErr)
			}
			if got := m.Route("ws"); got != tc.route {
				t.Errorf("route ws → %s, want %s", got, tc.route)
			}
			st := m.Status(ctx)
			if fmt.Sprint(rt.LoRAs()) != fmt.Sprint(tc.loaded) || fmt.Sprint(st.Loaded) != fmt.Sprint(tc.loaded) || st.Version != tc.version || (st.Error != "") != tc.failures {
				t.Errorf("runtime holds %v, status %+v", rt.LoRAs(), st)
			}
		})
	}
}

func TestAdapterManagerAfterProxyRestart(t *testing.T) {
	// chat-proxy restarted beside a model server that kept its adapters: vLLM says "already
	// loaded", which is what was asked.
	ctx := context.Background()
	host := testenv.Registry(t)
	img := testenv.PushAdapter(t, host, "ws", "v1")
	rt := &vllmsim.Server{Base: "phi-3"}
	set := setOf(1, route{"ws", img})
	if err := newManager(t, rt).Apply(ctx, set); err != nil {
		t.Fatal(err)
	}
	again := newManager(t, rt)
	if err := again.Apply(ctx, set); err != nil || again.Route("ws") != loraName("ws", img) {
		t.Fatalf("second manager: %v, route %s", err, again.Route("ws"))
	}
}

func TestSimRuntimeLoRAAPI(t *testing.T) {
	rt := &vllmsim.Server{Base: "phi-3", LoadDelay: 50 * time.Millisecond}
	srv := httptest.NewServer(rt.Handler())
	defer srv.Close()
	dir := t.TempDir()
	post := func(path, body string) (int, string) {
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if resp, _ := http.Get(srv.URL + "/health"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("health while loading: %d", resp.StatusCode)
	}
	time.Sleep(60 * time.Millisecond)
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(`{}`), 0o644); err != nil {
		t.Fatal(err)
	}
	load := `{"lora_name":"a","lora_path":"` + dir + `"}`
	steps := []struct {
		path, body string
		code       int
		says       string
	}{
		{"/v1/load_lora_adapter", `{"lora_name":"a"}`, 400, "Field required"},
		{"/v1/load_lora_adapter", `{"lora_name":"b","lora_path":"` + t.TempDir() + `"}`, 404, "No adapter found"},
		{"/v1/load_lora_adapter", load, 200, "added successfully"},
		{"/v1/load_lora_adapter", load, 400, "already been loaded"},
		{"/v1/completions", `{"model":"a","prompt":"hi"}`, 200, "with adapter a"},
		{"/v1/unload_lora_adapter", `{"lora_name":"a"}`, 200, "removed successfully"},
		{"/v1/unload_lora_adapter", `{"lora_name":"a"}`, 404, "cannot be found"},
		{"/v1/completions", `{"model":"a","prompt":"hi"}`, 404, "does not exist"},
	}
	for _, s := range steps {
		code, body := post(s.path, s.body)
		if code != s.code || !strings.Contains(body, s.says) {
			t.Errorf("POST %s %s: %d %s, want %d %q", s.path, s.body, code, body, s.code, s.says)
		}
	}
}

func TestDecodeAdapterSet(t *testing.T) {
	tests := []struct {
		name, doc, wantErr string
	}{
		{"ok", `{"version":2,"adapters":[{"name":"a-1","image":"r/a@sha256:1"}],"routes":{"a":"a-1"},"default":"a"}`, ""},
		{"unknown field", `{"version":2,"adapterz":[]}`, "unknown field"},
		{"no name", `{"adapters":[{"image":"x"}]}`, "adapters[0].name"},
		{"image and path", `{"adapters":[{"name":"a","image":"x","path":"/p"}]}`, "exactly one of image and path"},
		{"default without route", `{"default":"a"}`, `default "a"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeAdapterSet([]byte(tc.doc))
			if (err != nil) != (tc.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("got %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzDecodeAdapterSet(f *testing.F) {
	f.Add([]byte(`{"version":2,"adapters":[{"name":"a-1","image":"r/a@sha256:1"}],"routes":{"a":"a-1"},"default":"a"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeAdapterSet(b)
		if err != nil {
			return
		}
		out, _ := json.Marshal(s)
		again, err := DecodeAdapterSet(out)
		if err != nil || !again.Equal(s) || again.Version != s.Version {
			t.Fatalf("round trip of %s: %v", out, err)
		}
	})
}

// A model server that restarts loses the adapters loaded at runtime: the replica notices, reports
// not ready, and loads the whole set again.
func TestAdapterManagerReloadsAfterModelServerRestart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host := testenv.Registry(t)
	img := testenv.PushAdapter(t, host, "ws", "v1")
	rt := &vllmsim.Server{Base: "phi-3"}
	m := newManager(t, rt)
	set := setOf(1, route{"ws", img})
	go m.Run(ctx, func(context.Context) (AdapterSet, error) { return set, nil }, 10*time.Millisecond)
	name := loraName("ws", img)
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: runtime holds %v, manager applied %d", what, rt.LoRAs(), m.Applied())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("first load", func() bool { return m.Applied() == 1 && fmt.Sprint(rt.LoRAs()) == "["+name+"]" })
	// The restart, as the runtime sees it: the adapter is gone from the process.
	srv := httptest.NewServer(rt.Handler())
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/v1/unload_lora_adapter", "application/json", strings.NewReader(`{"lora_name":"`+name+`"}`))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("unload: %v %v", err, resp)
	}
	resp.Body.Close()
	waitFor("reload", func() bool { return m.Applied() == 1 && fmt.Sprint(rt.LoRAs()) == "["+name+"]" })
}

// An adapter the routes left stays loaded for UnloadAfter, so a rollback to it within that time
// is a route change, with no load.
func TestAdapterManagerKeepsTheLeftAdapterForAWhile(t *testing.T) {
	ctx := context.Background()
	host := testenv.Registry(t)
	v1, v2 := testenv.PushAdapter(t, host, "ws", "v1"), testenv.PushAdapter(t, host, "ws", "v2")
	rt := &vllmsim.Server{Base: "phi-3"}
	m := newManager(t, rt)
	m.UnloadAfter = time.Hour
	set := func(version int64, image string) AdapterSet {
		return setOf(version, route{"ws", image})
	}
	for _, s := range []AdapterSet{set(1, v1), set(2, v2)} {
		if err := m.Apply(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if got := rt.LoRAs(); len(got) != 2 || m.Route("ws") != loraName("ws", v2) {
		t.Fatalf("after the move: runtime holds %v, ws routes to %s", got, m.Route("ws"))
	}
	// Back to v1: nothing to pull or load.
	m.Pull = func(context.Context, AdapterSpec, string) error { return errors.New("pulled again") }
	if err := m.Apply(ctx, set(3, v1)); err != nil || m.Route("ws") != loraName("ws", v1) {
		t.Fatalf("rollback: %v, ws routes to %s", err, m.Route("ws"))
	}
	m.UnloadAfter = 0
	m.sweep(ctx)
	if got := rt.LoRAs(); fmt.Sprint(got) != "["+loraName("ws", v1)+"]" {
		t.Errorf("after the grace: runtime holds %v", got)
	}
}

// A set that keeps failing is retried ever more slowly (it once re-pulled every second for as long
// as the replica lived, hundreds of requests after its workspace had failed).
func TestRetryBacksOff(t *testing.T) {
	for _, tc := range []struct {
		failures int
		want     time.Duration
	}{
		{0, 2 * time.Second}, {1, 4 * time.Second}, {3, 16 * time.Second}, {7, 256 * time.Second}, {8, maxRetryWait}, {1000, maxRetryWait},
	} {
		if got := retryAfter(2*time.Second, tc.failures); got != tc.want {
			t.Errorf("after %d failures: %s, want %s", tc.failures, got, tc.want)
		}
	}
	if got := retryAfter(10*time.Minute, 3); got != 10*time.Minute {
		t.Errorf("an interval above the cap: %s", got)
	}
}

// A registry that accepts the connection and never answers (a tarpit) fails the pull within
// PullTimeout; the replica keeps its route and takes the next set (a rollback, a fix) at once.
// Before, the pull had no deadline and held the reconciliation, so no later set ever applied.
func TestAStalledRegistryCannotWedgeTheReplica(t *testing.T) {
	ctx := context.Background()
	tarpit := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer tarpit.Close()
	host := testenv.Registry(t)
	v1, v2 := testenv.PushAdapter(t, host, "ws", "v1"), testenv.PushAdapter(t, host, "other", "v2")
	rt := &vllmsim.Server{Base: "phi-3"}
	m := newManager(t, rt)
	m.PullTimeout = 300 * time.Millisecond
	if err := m.Apply(ctx, setOf(1, route{"ws", v1})); err != nil {
		t.Fatal(err)
	}
	// A pool's set: one adapter behind the tarpit, one pullable; they are pulled side by side.
	stalled := strings.TrimPrefix(tarpit.URL, "http://") + "/ws:v2"
	start := time.Now()
	err := m.Apply(ctx, setOf(2, route{"ws", stalled}, route{"other", v2}))
	if err == nil || !strings.Contains(err.Error(), "no complete pull within 300ms") {
		t.Fatalf("Apply with a stalled registry: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the stalled pull held the replica %s", took)
	}
	if got := m.Route("ws"); got != loraName("ws", v1) {
		t.Errorf("route ws → %s, want the old adapter", got)
	}
	if err := m.Apply(ctx, setOf(3, route{"ws", v1}, route{"other", v2})); err != nil {
		t.Fatalf("the next set after a stall: %v", err)
	}
	if got := m.Route("other"); got != loraName("other", v2) {
		t.Errorf("route other → %s", got)
	}
}
