package dataset

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/parquet-go/parquet-go"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

type message struct {
	Role    string `parquet:"role"`
	Content string `parquet:"content"`
}

type chatRow struct {
	Messages []message `parquet:"messages,list"`
}

type otherRow struct {
	Instruction string `parquet:"instruction"`
	Output      string `parquet:"output"`
}

// Dolly parquet builds a dolly-15k-oai-style file of n rows.
func DollyParquet(tb testing.TB, n int) []byte {
	tb.Helper()
	rows := make([]chatRow, n)
	for i := range rows {
		rows[i] = chatRow{Messages: []message{
			{Role: "system", Content: "You are a helpful assistant."},
			{Role: "user", Content: strings.Repeat("When did Virgin Australia start operating? ", 8)},
			{Role: "assistant", Content: strings.Repeat("Virgin Australia commenced services on 31 August 2000. ", 10)},
		}}
	}
	var buf bytes.Buffer
	if err := parquet.Write(&buf, rows); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// footerBomb is a 21-byte parquet file whose footer (FileMetaData: version 1, then a schema list)
// claims 2^31-1 schema elements (the most parquet-go's own check lets through). parquet-go sizes
// the list from that claim before reading an element; before footer checks it allocated ~206 GB
// and the process died.
var footerBomb = []byte("PAR1" +
	"\x15\x02" + // field 1, i32: version 1
	"\x19\xfc\xff\xff\xff\xff\x07" + // field 2, list of structs, 2^31-1 elements
	"\x09\x00\x00\x00" + "PAR1")

func server(t *testing.T) *httptest.Server {
	t.Helper()
	dolly := DollyParquet(t, 200)
	var other bytes.Buffer
	if err := parquet.Write(&other, []otherRow{{Instruction: "x", Output: "y"}}); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	serve := func(p string, b []byte) {
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			http.ServeContent(w, r, p, time.Time{}, bytes.NewReader(b))
		})
	}
	serve("/dolly.parquet", dolly)
	serve("/other.parquet", other.Bytes())
	serve("/chat.jsonl", []byte(`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}`+"\n"+`{"messages":[{"role":"user","content":"2+2"},{"role":"assistant","content":"4"}]}`+"\n"))
	serve("/pc.csv", []byte("prompt,completion\n2+2?,4\n"))
	serve("/bomb.parquet", footerBomb)
	serve("/bomb-length.parquet", []byte("PAR1\x00\xff\xff\xff\x7fPAR1"))
	serve("/alpaca.jsonl", []byte(`{"instruction":"x","output":"y"}`+"\n"))
	mux.HandleFunc("/huge.parquet", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "20000000000")
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/redirect.parquet", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254/metadata/identity/oauth2/token", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestPreflight(t *testing.T) {
	srv := server(t)
	c := New(netguard.AddressPolicy{Allow: []string{"127.0.0.1"}})
	c.Backoff = 10 * time.Millisecond
	tests := []struct {
		path, wantReason, wantMsg string
		shape                     Shape
	}{
		{path: "/dolly.parquet?download=true", shape: Messages},
		{path: "/chat.jsonl", shape: Messages},
		{path: "/pc.csv", shape: PromptCompletion},
		{path: "/missing.parquet", wantReason: ReasonInvalid, wantMsg: "404"},
		{path: "/other.parquet", wantReason: ReasonInvalid, wantMsg: "no accepted columns"},
		{path: "/alpaca.jsonl", wantReason: ReasonInvalid, wantMsg: "instruction, output"},
		{path: "/huge.parquet", wantReason: ReasonInvalid, wantMsg: "20.0 GB is over the 10.7 GB limit"},
		// The 21-byte file that took the process down: refused by the footer check, named.
		{path: "/bomb.parquet", wantReason: ReasonInvalid, wantMsg: "a list of 2147483647 elements in 0 remaining bytes"},
		{path: "/bomb-length.parquet", wantReason: ReasonInvalid, wantMsg: "the footer claims 2147483647 bytes"},
		{path: "/redirect.parquet", wantReason: ReasonInvalid, wantMsg: "link-local"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			res, err := c.Check(context.Background(), []string{srv.URL + tc.path})
			if tc.wantReason == "" {
				if err != nil || res[0].Shape != tc.shape {
					t.Fatalf("got %+v %v", res, err)
				}
				return
			}
			p, ok := events.AsPermanent(err)
			if !ok || p.Reason != tc.wantReason || !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), "tuning.input.urls[0]") {
				t.Fatalf("got %v, want %s mentioning %q", err, tc.wantReason, tc.wantMsg)
			}
		})
	}
}

func TestParquetFooterIsReadNotTheFile(t *testing.T) {
	srv := server(t)
	c := New(netguard.AddressPolicy{Allow: []string{"127.0.0.1"}})
	if _, err := c.Check(context.Background(), []string{srv.URL + "/dolly.parquet"}); err != nil {
		t.Fatal(err)
	}
	size := int64(len(DollyParquet(t, 200)))
	if got := c.Transferred.Load(); got >= size {
		t.Errorf("read %d bytes of a %d-byte file", got, size)
	}
}

func TestUnreachableHostFailsBriefly(t *testing.T) {
	c := New(netguard.AddressPolicy{})
	c.Backoff = 10 * time.Millisecond
	start := time.Now()
	_, err := c.Check(context.Background(), []string{"https://datasets.invalid/dolly.parquet"})
	if p, ok := events.AsPermanent(err); !ok || p.Reason != ReasonUnreachable {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s", d)
	}
}

func TestCheckImage(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	ref, _ := name.ParseReference(host+"/datasets/dolly:1", name.Insecure)
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	c := New(netguard.AddressPolicy{Allow: []string{"127.0.0.1"}})
	if err := c.CheckImage(context.Background(), host+"/datasets/dolly:1", true); err != nil {
		t.Fatalf("existing image: %v", err)
	}
	err = c.CheckImage(context.Background(), host+"/datasets/missing:1", true)
	if p, ok := events.AsPermanent(err); !ok || p.Reason != ReasonInvalid || !strings.Contains(err.Error(), "no such image") {
		t.Fatalf("missing image: %v", err)
	}
	if err := New(netguard.AddressPolicy{}).CheckImage(context.Background(), host+"/datasets/dolly:1", true); err == nil {
		t.Fatal("a loopback registry passed the default policy")
	}
}
