package testenv

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSServer starts a real nats-server with JetStream on loopback and a temporary directory; it
// stops when the test ends.
func NATSServer(t testing.TB) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start within 10s")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

// JetStream starts a NATSServer and returns a JetStream context on a connection to it; both end
// with the test.
func JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	return JetStreamOn(t, NATSServer(t).ClientURL())
}

// JetStreamOn returns a JetStream context on a connection to url that ends with the test.
func JetStreamOn(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// FreeAddr returns a loopback address no one listens on now, for a process a test starts.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
