package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
)

// Two pipelines on one data dir would share its JetStream store and registry: the second is
// refused with the first's pid, and starts once the first has stopped.
func TestOnePipelinePerDataDir(t *testing.T) {
	ctx := context.Background()
	cfg := Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)}
	first, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Start(ctx, cfg)
	if want := fmt.Sprintf("in use by another kaitoflow up (pid %d)", os.Getpid()); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("second pipeline on the data dir: %v, want %q", err, want)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("after the first stopped: %v", err)
	}
	_ = again.Close()
}

// A NATS port that is taken is said at once, not after a 15 s wait for a server that never
// became ready.
func TestBusyNATSPortIsNamed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = Start(context.Background(), Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSListen: ln.Addr().String(),
		Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "NATS listen address "+ln.Addr().String()) || !strings.Contains(err.Error(), "--nats-listen") {
		t.Fatalf("busy NATS port: %v", err)
	}
}
