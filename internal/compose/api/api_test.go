package api

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestATrickledBodyIsCutOff: a client that opens a submit and never finishes its body cannot hold
// the connection: it is answered 408 within the body timeout (before the fix it waited for ever).
func TestATrickledBodyIsCutOff(t *testing.T) {
	srv := httptest.NewServer((&Server{BodyTimeout: 200 * time.Millisecond}).Handler())
	defer srv.Close()
	for _, path := range []string{"/v1/workspaces", "/v1/configmaps"} {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// Headers promise 1,000 bytes; 10 arrive.
		if _, err := conn.Write([]byte("POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/yaml\r\nContent-Length: 1000\r\n\r\nkind: Work")); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: no answer to a stalled body: %v", path, err)
		}
		var b strings.Builder
		_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(b.String(), "did not arrive within 200ms") {
			t.Errorf("%s: %d %s, want 408 saying the body did not arrive", path, resp.StatusCode, b.String())
		}
	}
}
