package runtime

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

// With a token file, every event goes to the sink with the file's token as it is now (the
// kubelet rotates projected tokens); a missing or oversized file fails the send instead of
// sending without.
func TestHTTPPublisherSendsTheCurrentToken(t *testing.T) {
	var got testenv.SyncBuffer
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = got.Write([]byte(r.Header.Get("Authorization") + "\n"))
		w.WriteHeader(http.StatusAccepted)
	}))
	defer sink.Close()
	file := filepath.Join(t.TempDir(), "token")
	p, err := NewHTTPPublisher(sink.URL)
	if err != nil {
		t.Fatal(err)
	}
	p.TokenFile = file
	ctx := context.Background()
	for _, tok := range []string{"first-token", "rotated-token"} {
		if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := p.Publish(ctx, requested(t, "ws")); err != nil {
			t.Fatal(err)
		}
	}
	if want := "Bearer first-token\nBearer rotated-token\n"; got.String() != want {
		t.Fatalf("the sink saw %q, want %q", got.String(), want)
	}
	for _, content := range []string{"", strings.Repeat("x", maxTokenSize+1)} {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := p.Publish(ctx, requested(t, "ws")); err == nil {
			t.Errorf("a %d-byte token file was sent", len(content))
		}
	}
	p.TokenFile = filepath.Join(t.TempDir(), "missing")
	if err := p.Publish(ctx, requested(t, "ws")); err == nil {
		t.Error("sent without the token file")
	}
	if n := strings.Count(got.String(), "\n"); n != 2 {
		t.Errorf("%d sends reached the sink, want 2", n)
	}
}
