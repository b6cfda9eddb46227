package adapter

import (
	"net"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// An adapter "image" whose registry is a service that is not one (here a stand-in speaking as a
// NATS server does, its INFO line first): the pull fails, and its error names the failure without
// a byte of what the service said. Before, the banner came back in workspace.failed.
func TestPullErrorDoesNotReflectTheAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(`INFO {"server_id":"NSECRETSERVERID","version":"2.15.3","auth_required":false}` + "\r\n"))
			_ = c.Close()
		}
	}()
	ref, err := name.ParseReference(ln.Addr().String()+"/x/y:z", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Pull(ref, t.TempDir(), AdapterLimits)
	if err == nil {
		t.Fatal("pulled from a service that is no registry")
	}
	if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "INFO") {
		t.Fatalf("the error reflects the service's answer: %v", err)
	}
	if !strings.Contains(err.Error(), "does not answer as an HTTPS registry") {
		t.Errorf("the error does not say what went wrong: %v", err)
	}
}
