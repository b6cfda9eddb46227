package knative

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// A replica runs third-party model code beside chat-proxy, so what it answers serve is bounded:
// a 64 MiB answer is refused, not decoded into serve's memory.
func TestAReplicasAnswerIsBounded(t *testing.T) {
	huge := `{"replica":"` + strings.Repeat("a", 64<<20) + `"}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(huge)) }))
	defer srv.Close()
	p := PodReplicas{Address: func(corev1.Pod) string { return srv.URL }}
	st, err := p.read(context.Background(), srv.Client(), corev1.Pod{}, "")
	if err == nil || len(st.Replica) > 0 {
		t.Fatalf("a %d-byte answer was decoded (%d bytes kept), err %v", len(huge), len(st.Replica), err)
	}
}
