package dataset

import (
	"bytes"
	"encoding/binary"
	"runtime/debug"
	"runtime/metrics"
	"testing"

	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"
)

// FuzzParquetFooter holds the footer check to its promise: a footer it admits decodes with
// parquet-go within the allocation budget, measured per input. The memory limit (a soft one) makes
// the garbage collector work hard long before a slipped-through claim could exhaust the machine,
// so the over-budget allocation is reported instead of crashing the fuzzer; the bomb is in the corpus.
func FuzzParquetFooter(f *testing.F) {
	debug.SetMemoryLimit(2 * maxFooterAlloc)
	f.Add(footerBomb[4 : len(footerBomb)-8])
	real := DollyParquet(f, 3)
	n := binary.LittleEndian.Uint32(real[len(real)-8:])
	f.Add(real[len(real)-8-int(n) : len(real)-8])
	f.Fuzz(func(t *testing.T, footer []byte) {
		if checkFooter(footer) != nil {
			return
		}
		allocated := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
		metrics.Read(allocated)
		before := allocated[0].Value.Uint64()
		var md format.FileMetaData
		_ = thrift.Unmarshal(new(thrift.CompactProtocol), footer, &md)
		metrics.Read(allocated)
		if got := allocated[0].Value.Uint64() - before; got > maxFooterAlloc {
			t.Fatalf("an admitted %d-byte footer allocated %d bytes decoding", len(footer), got)
		}
	})
}

func TestCheckFooterAdmitsRealFooters(t *testing.T) {
	for _, rows := range []int{1, 200} {
		file := DollyParquet(t, rows)
		n := binary.LittleEndian.Uint32(file[len(file)-8:])
		if err := checkFooter(file[len(file)-8-int(n) : len(file)-8]); err != nil {
			t.Errorf("%d rows: %v", rows, err)
		}
		if !bytes.HasPrefix(file, []byte("PAR1")) {
			t.Fatal("not a parquet file")
		}
	}
}
