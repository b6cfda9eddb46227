package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
	"github.com/kaitoflow/kaitoflow/internal/vllmproc"
)

// randomAdapter writes a LoRA adapter with random (not zero) B matrices for the tiny model: what a
// trained one is to vLLM's loading, without the training.
const randomAdapter = `
import sys, torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
torch.manual_seed(0)
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
p = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, task_type="CAUSAL_LM",
                                 target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]))
p.save_pretrained(sys.argv[2])
`

// BenchmarkVLLMAdapterChange measures, on real vLLM (its CPU build) with the tiny model, how long a
// new adapter takes to answer when it is loaded into the running server (what kaitoflow does:
// POST /v1/load_lora_adapter) against restarting the server with it (--lora-modules, what a
// new revision of the Deployment would do), in the same run; and chat-proxy's added latency in
// front of the same server: one-token completions through kaitoflow's proxy against the same
// requests sent straight to vLLM. Needs KAITOFLOW_VLLM_PYTHON and KAITOFLOW_ML_PYTHON; minutes on
// two cores (two vLLM starts).
//
//	go test ./bench -run '^$' -bench VLLM -benchtime 1x
func BenchmarkVLLMAdapterChange(b *testing.B) {
	vllmPython, py := testenv.VLLMPythons(b)
	tiny := testenv.TinyModel(b, py)
	adapterDir := filepath.Join(b.TempDir(), "adapter")
	cmd := exec.Command(py, "-c", randomAdapter, tiny.Model, adapterDir)
	cmd.Env = append(os.Environ(), "HF_HUB_OFFLINE=1", "OMP_NUM_THREADS=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("make the adapter: %v\n%s", err, out)
	}
	_, port, _ := net.SplitHostPort(testenv.FreeAddr(b))
	args := []string{tiny.Model, "--served-model-name", "base", "--dtype", "float32", "--max-model-len", "128",
		"--gpu-memory-utilization", "0.05", "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
		"--host", "127.0.0.1", "--port", port}
	env := []string{"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True", "HF_HUB_OFFLINE=1"}
	start := func(extra ...string) *vllmproc.Process {
		b.Helper()
		p, err := vllmproc.Start(vllmPython, append(slices.Clone(args), extra...), env, filepath.Join(b.TempDir(), "vllm.log"))
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	answers := func(base, model string) bool {
		body := fmt.Sprintf(`{"model": %q, "prompt": "What is one plus one ?", "max_tokens": 1}`, model)
		resp, err := http.Post(base+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	for range b.N {
		// Live: the server runs; the adapter is loaded into it.
		p := start()
		if err := p.Ready(ctx); err != nil {
			p.Stop()
			b.Fatal(err)
		}
		began := time.Now()
		resp, err := http.Post(p.URL+"/v1/load_lora_adapter", "application/json",
			strings.NewReader(fmt.Sprintf(`{"lora_name": "a1", "lora_path": %q}`, adapterDir)))
		if err != nil || resp.StatusCode != http.StatusOK {
			p.Stop()
			b.Fatalf("load: %v %v", resp, err)
		}
		resp.Body.Close()
		for !answers(p.URL, "a1") {
			time.Sleep(10 * time.Millisecond)
		}
		live := time.Since(began)

		// chat-proxy's added latency, on the same server.
		upstream, _ := url.Parse(p.URL)
		proxy := httptest.NewServer((&chatproxy.Proxy{Upstream: upstream, Model: "base"}).Handler())
		const n = 40
		direct, proxied := make([]time.Duration, 0, n), make([]time.Duration, 0, n)
		for i := range 2 * n {
			target := p.URL
			if i%2 == 1 {
				target = proxy.URL
			}
			t0 := time.Now()
			if !answers(target, "base") {
				proxy.Close()
				p.Stop()
				b.Fatalf("a completion through %s failed", target)
			}
			if i%2 == 1 {
				proxied = append(proxied, time.Since(t0))
			} else {
				direct = append(direct, time.Since(t0))
			}
		}
		proxy.Close()
		p.Stop()

		// Restart: a new server that starts with the adapter.
		began = time.Now()
		p = start("--lora-modules", "a1="+adapterDir)
		if err := p.Ready(ctx); err != nil {
			p.Stop()
			b.Fatal(err)
		}
		for !answers(p.URL, "a1") {
			time.Sleep(10 * time.Millisecond)
		}
		restart := time.Since(began)
		p.Stop()

		slices.Sort(direct)
		slices.Sort(proxied)
		dp50, pp50 := direct[n/2], proxied[n/2]
		dp99, pp99 := direct[n*99/100], proxied[n*99/100]
		b.ReportMetric(live.Seconds(), "live-s")
		b.ReportMetric(restart.Seconds(), "restart-s")
		b.ReportMetric(float64(pp50-dp50)/float64(time.Millisecond), "proxy-added-p50-ms")
		fmt.Printf("adapter change → answering (vLLM CPU, tiny model): live load %.2fs, restart with the adapter %.1fs: %.0f× faster\n",
			live.Seconds(), restart.Seconds(), restart.Seconds()/live.Seconds())
		fmt.Printf("one-token completions (%d each): vLLM direct p50 %.1f ms / p99 %.1f ms, through chat-proxy p50 %.1f ms / p99 %.1f ms: %+.2f ms at p50\n",
			n, ms(dp50), ms(dp99), ms(pp50), ms(pp99), ms(pp50-dp50))
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
