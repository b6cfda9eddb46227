package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/compose/pipeline"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// BenchmarkFunctionStart measures what a scale-from-zero costs kaitoflow's own process: from exec
// of a function's own binary (cmd/<function> --transport http, as its image runs it) to its first
// 200 on /healthz, and its resident memory then, against a minimal Go HTTP server
// (testdata/floor) and the same function run by the CLI (`kaitoflow fn <function>`), in the same
// run, alternating, and prints the medians and the ratios. chat-proxy, which every inference
// replica runs, is measured the same way (to its first 200 on /health, from a stand-in model
// server) as its own binary (cmd/chat-proxy) and as `kaitoflow chat-proxy`. The binaries are
// built first as ko builds them (-s -w, no cgo); nothing but loopback is used.
func BenchmarkFunctionStart(b *testing.B) {
	dir := b.TempDir()
	// Every function, each with its drivers' defaults (the sims): publish needs client-go and the
	// Azure SDK (imagePushSecrets, ACR sign-in), provision and tune also JetStream and the planner,
	// signals only the runtime.
	fns := pipeline.Names()
	kf, floor, cp := filepath.Join(dir, "kaitoflow"), filepath.Join(dir, "floor"), filepath.Join(dir, "chat-proxy")
	builds := [][]string{{"-o", kf, "../cmd/kaitoflow"}, {"-o", floor, "./testdata/floor"}, {"-o", cp, "../cmd/chat-proxy"}}
	for _, fn := range fns {
		builds = append(builds, []string{"-o", filepath.Join(dir, "fn-"+fn), "../cmd/" + fn})
	}
	for _, c := range builds {
		cmd := exec.Command("go", append([]string{"build", "-ldflags=-s -w"}, c...)...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("go build %v: %v\n%s", c, err, out)
		}
	}
	const runs = 15
	type sample struct {
		start time.Duration
		rssKB int
	}
	// The model server chat-proxy's /health asks: a stand-in that is always healthy.
	model := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer model.Close()
	proxyArgs := func(addr string) []string { return []string{"--listen", addr, "--upstream", model.URL} }
	measure := func(args func(addr string) []string, bin, health string) sample {
		addr := testenv.FreeAddr(b)
		cmd := exec.Command(bin, args(addr)...)
		cmd.Env = append(os.Environ(), "KAITOFLOW_LOG_LEVEL=error")
		var stderr testenv.SyncBuffer
		cmd.Stderr = &stderr
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+health, nil)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if ctx.Err() != nil {
				b.Fatalf("%s %v never answered %s:\n%s", bin, cmd.Args[1:], health, stderr.String())
			}
			time.Sleep(time.Millisecond)
		}
		return sample{start: time.Since(t0), rssKB: rss(b, cmd.Process.Pid)}
	}
	// provision, tune and status keep their records in JetStream: a real nats-server on loopback.
	nats := testenv.NATSServer(b).ClientURL()
	fnArgs := func(addr string) []string {
		return []string{"--transport", "http", "--listen", addr, "--sink", "http://127.0.0.1:1", "--nats", nats, "--data-dir", dir}
	}
	kfArgs := func(fn string) func(string) []string {
		return func(addr string) []string { return append([]string{"fn", fn}, fnArgs(addr)...) }
	}
	results := map[string][]sample{}
	for b.Loop() {
		for range runs {
			results["floor"] = append(results["floor"], measure(func(addr string) []string { return []string{addr} }, floor, "/healthz"))
			for _, fn := range fns {
				results["kaitoflow fn "+fn] = append(results["kaitoflow fn "+fn], measure(kfArgs(fn), kf, "/healthz"))
				results[fn] = append(results[fn], measure(fnArgs, filepath.Join(dir, "fn-"+fn), "/healthz"))
			}
			results["chat-proxy"] = append(results["chat-proxy"], measure(proxyArgs, cp, "/health"))
			results["kaitoflow chat-proxy"] = append(results["kaitoflow chat-proxy"],
				measure(func(addr string) []string { return append([]string{"chat-proxy"}, proxyArgs(addr)...) }, kf, "/health"))
		}
	}
	med := func(s []sample) (time.Duration, int) {
		ts := make([]time.Duration, len(s))
		rs := make([]int, len(s))
		for i, x := range s {
			ts[i], rs[i] = x.start, x.rssKB
		}
		slices.Sort(ts)
		slices.Sort(rs)
		return ts[len(ts)/2], rs[len(rs)/2]
	}
	ft, fr := med(results["floor"])
	fmt.Printf("\nfunction start, exec to first 200 on /healthz, median of %d alternating runs\n", len(results["floor"]))
	fmt.Printf("  %-30s %8s  %8s   %s\n", "process", "start", "RSS", "vs floor")
	fmt.Printf("  %-30s %8s  %5.1f MiB\n", "minimal Go HTTP server", ft.Round(100*time.Microsecond), float64(fr)/1024)
	row := func(name, key string) {
		t, r := med(results[key])
		fmt.Printf("  %-30s %8s  %5.1f MiB   %.1f× start, %.1f× RSS\n", name, t.Round(100*time.Microsecond), float64(r)/1024,
			float64(t)/float64(ft), float64(r)/float64(fr))
	}
	for _, fn := range fns {
		row("kaitoflow fn "+fn, "kaitoflow fn "+fn)
		row(fn+" (its own binary)", fn)
	}
	row("kaitoflow chat-proxy", "kaitoflow chat-proxy")
	row("chat-proxy (its own binary)", "chat-proxy")
	fmt.Printf("  binaries (-s -w):")
	for _, c := range builds {
		if st, err := os.Stat(c[1]); err == nil {
			fmt.Printf(" %s %.1f MB;", filepath.Base(c[1]), float64(st.Size())/1e6)
		}
	}
	fmt.Println()
}

// rss is a process's resident set in KiB, from /proc.
func rss(b *testing.B, pid int) int {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
