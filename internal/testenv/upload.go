package testenv

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/signature"
)

// Blob stands in for a storage account's blob: an HTTP server (on loopback) answering one
// dataset file, which a test replaces to upload a new version.
type Blob struct {
	*httptest.Server
	mu      sync.Mutex
	content string
}

// NewBlob serves a dataset until the test ends.
func NewBlob(t testing.TB) *Blob {
	b := &Blob{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, _ = io.WriteString(w, b.content)
	}))
	t.Cleanup(b.Close)
	return b
}

// Rows are n distinct jsonl rows of the text shape.
func Rows(n int) string {
	var s strings.Builder
	for i := range n {
		fmt.Fprintf(&s, "{\"text\": \"row %d\"}\n", i)
	}
	return s.String()
}

// Upload replaces the blob's content and notifies the upload webhook at hook (its /upload,
// signed with key) of the new version, as a storage system does; it fails t unless the webhook
// answers 200.
func (b *Blob) Upload(t testing.TB, hook string, key []byte, path, content string) {
	t.Helper()
	b.mu.Lock()
	b.content = content
	b.mu.Unlock()
	sum := sha256.Sum256([]byte(content))
	body := fmt.Sprintf(`{"url": %q, "sha256": %q}`, b.URL+path, hex.EncodeToString(sum[:]))
	req, err := http.NewRequest(http.MethodPost, hook+"/upload", bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(signature.Header, signature.Sign(key, time.Now(), []byte(body)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if msg, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK {
		t.Fatalf("upload %s: %d %s", path, resp.StatusCode, msg)
	}
}
