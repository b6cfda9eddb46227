//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// openPTY opens a pseudo-terminal: what is written to tty shows on master, as on a screen.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("pseudo-terminal: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pseudo-terminal number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(); _ = m.Close() })
	return m, s
}

// `up --submit` in a terminal shows the timeline and the hints, not the log: the log goes to a
// file under the data dir (the same run logs dozens of INFO lines), its closing hint names this
// API's address, and the timeline is coloured.
func TestUpInATerminalShowsTheTimelineAlone(t *testing.T) {
	master, tty := openPTY(t)
	var shown testenv.SyncBuffer // what the pseudo-terminal shows
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := master.Read(b)
			_, _ = shown.Write(b[:n])
			if err != nil {
				return
			}
		}
	}()
	// A colour terminal: the timeline is coloured (NO_COLOR empty counts as unset).
	t.Setenv("TERM", "xterm-256color")
	t.Setenv("NO_COLOR", "")
	dataDir := t.TempDir()
	root := newRoot(tty, tty)
	root.SetArgs([]string{"up", "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--data-dir", dataDir, "--delay", "50ms",
		"--submit", "../../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(shown.String(), "keeps running at") {
		if time.Now().After(deadline) {
			t.Fatalf("no closing hint within 90s; the screen:\n%s", shown.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("up: %v", err)
	}
	screen := shown.String()
	for _, want := range []string{"logs to " + filepath.Join(dataDir, upLogFile), "workspace default/workspace-tuning-phi-3 generation 1",
		"kaitoflow.inference.ready", "Ready in", "--server http://127.0.0.1:"} {
		if !strings.Contains(screen, want) {
			t.Errorf("the screen lacks %q:\n%s", want, screen)
		}
	}
	if !strings.Contains(screen, sgrGreen+events.InferenceReady) {
		t.Errorf("inference.ready is not green on a colour terminal:\n%q", screen)
	}
	if strings.Contains(screen, "level=INFO") {
		t.Errorf("log lines reached the screen:\n%s", screen)
	}
	log, err := os.ReadFile(filepath.Join(dataDir, upLogFile))
	if err != nil || !strings.Contains(string(log), "level=INFO") {
		t.Errorf("the log file holds no log: %v\n%s", err, log)
	}
}
