package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/kaitoflow/kaitoflow/internal/dataset"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

type message struct {
	Role    string `parquet:"role"`
	Content string `parquet:"content"`
}

type chatRow struct {
	Messages []message `parquet:"messages,list"`
}

// BenchmarkPreflight checks a dolly-15k-sized parquet (15,011 conversations) the way provision
// does — its footer through HTTP range requests — and, in the same run, downloads it whole as the
// baseline; it prints bytes transferred and time for both.
func BenchmarkPreflight(b *testing.B) {
	rows := make([]chatRow, 15011)
	for i := range rows {
		rows[i] = chatRow{Messages: []message{
			{Role: "system", Content: "You are a helpful assistant."},
			{Role: "user", Content: fmt.Sprintf("Question %d: %s", i, strings.Repeat("when did it start operating? ", 6))},
			{Role: "assistant", Content: fmt.Sprintf("Answer %d: %s", i, strings.Repeat("it commenced services on 31 August 2000. ", 8))},
		}}
	}
	var buf bytes.Buffer
	if err := parquet.Write(&buf, rows); err != nil {
		b.Fatal(err)
	}
	file := buf.Bytes()
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &countingWriter{ResponseWriter: w, n: &served}
		http.ServeContent(cw, r, "dolly.parquet", time.Time{}, bytes.NewReader(file))
	}))
	defer srv.Close()
	url := srv.URL + "/data/train-00000-of-00001.parquet?download=true"
	policy := netguard.AddressPolicy{Allow: []string{"127.0.0.1"}}

	for b.Loop() {
		served.Store(0)
		start := time.Now()
		res, err := dataset.New(policy).Check(context.Background(), []string{url})
		if err != nil || res[0].Shape != dataset.Messages {
			b.Fatalf("preflight: %v %v", res, err)
		}
		preTime, preBytes := time.Since(start), served.Load()

		served.Store(0)
		start = time.Now()
		resp, err := http.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		dlTime, dlBytes := time.Since(start), served.Load()
		if n != int64(len(file)) {
			b.Fatalf("downloaded %d of %d", n, len(file))
		}
		b.ReportMetric(float64(preBytes), "preflight-bytes")
		b.ReportMetric(float64(dlBytes), "download-bytes")
		b.ReportMetric(float64(dlBytes)/float64(preBytes), "bytes-ratio")
		b.Logf("\n15,011-row parquet (%d bytes)\tbytes transferred\ttime\npreflight (footer by range requests)\t%d\t%s\ndownload whole (baseline)\t%d\t%s\nratio\t%.0fx fewer bytes\t%.1fx faster",
			len(file), preBytes, preTime.Round(10*time.Microsecond), dlBytes, dlTime.Round(10*time.Microsecond), float64(dlBytes)/float64(preBytes), float64(dlTime)/float64(preTime))
	}
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}
