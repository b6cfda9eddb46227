package dataset

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// parquet-go decodes a file's footer (Thrift compact protocol) into Go structs and sizes every
// list from the length its header claims, before reading a single element: a 21-byte file whose
// footer claims a list of 2^31 column chunks allocates hundreds of gigabytes and the process dies
// with an unrecoverable out-of-memory fatal error, on every redelivery. checkFooter walks the
// footer's encoding first, without allocating, and refuses one whose lengths the bytes cannot
// hold, so parquet-go only ever sees a footer whose allocations are bounded by its size.

const (
	// maxFooterBytes bounds the footer read. A footer grows with row groups × columns: a 10 GiB
	// dataset in 1,000 row groups of five columns has a footer near 1 MiB.
	maxFooterBytes = 16 << 20
	// maxFooterAlloc bounds what decoding the footer may allocate, estimated per list element as
	// the largest Go struct parquet-go decodes one into (a ColumnChunk with its metadata).
	maxFooterAlloc = 256 << 20
	maxFooterDepth = 32
)

var errFooter = errors.New("corrupt parquet footer")

// Thrift compact protocol type ids.
const (
	ctStop = iota
	ctTrue
	ctFalse
	ctByte
	ctI16
	ctI32
	ctI64
	ctDouble
	ctBinary
	ctList
	ctSet
	ctMap
	ctStruct
	ctUUID
)

type footerWalker struct {
	b      []byte
	off    int
	budget int64
}

// checkFooter reports whether b, a parquet footer (FileMetaData, without the trailing length and
// magic), is well-formed Thrift whose every length fits in the bytes that remain and whose lists
// together stay within the allocation budget.
func checkFooter(b []byte) error {
	w := footerWalker{b: b, budget: maxFooterAlloc}
	if err := w.value(ctStruct, 0); err != nil {
		return fmt.Errorf("%w at byte %d of %d: %w", errFooter, w.off, len(b), err)
	}
	return nil
}

func (w *footerWalker) remaining() int { return len(w.b) - w.off }

func (w *footerWalker) byte() (byte, error) {
	if w.off >= len(w.b) {
		return 0, errors.New("truncated")
	}
	c := w.b[w.off]
	w.off++
	return c, nil
}

func (w *footerWalker) varint() (uint64, error) {
	v, n := binary.Uvarint(w.b[w.off:])
	if n <= 0 {
		return 0, errors.New("bad varint")
	}
	w.off += n
	return v, nil
}

func (w *footerWalker) skip(n uint64) error {
	if n > uint64(w.remaining()) {
		return fmt.Errorf("length %d exceeds the %d bytes that remain", n, w.remaining())
	}
	w.off += int(n)
	return nil
}

// elementCost estimates what one decoded element of type t takes in memory: a struct as the
// largest parquet-go decodes one into (a ColumnChunk with its metadata), a byte string its
// header, a number its word.
func elementCost(t byte) int64 {
	switch t {
	case ctStruct, ctList, ctSet, ctMap:
		return 1 << 10
	case ctBinary, ctUUID:
		return 24
	}
	return 8
}

// elements checks a claimed element count: every element takes at least one byte, and their
// decoded size is charged to the budget.
func (w *footerWalker) elements(n uint64, t byte) error {
	if n > uint64(w.remaining()) {
		return fmt.Errorf("a list of %d elements in %d remaining bytes", n, w.remaining())
	}
	w.budget -= int64(n) * elementCost(t)
	if w.budget < 0 {
		return fmt.Errorf("lists decode to more than %d MiB", maxFooterAlloc>>20)
	}
	return nil
}

func (w *footerWalker) value(t byte, depth int) error {
	if depth > maxFooterDepth {
		return errors.New("nested too deep")
	}
	switch t {
	case ctTrue, ctFalse, ctByte:
		// A bool inside a list or map is one byte; as a struct field it lives in the header
		// and value is not called for it.
		return w.skip(1)
	case ctI16, ctI32, ctI64:
		_, err := w.varint()
		return err
	case ctDouble:
		return w.skip(8)
	case ctUUID:
		return w.skip(16)
	case ctBinary:
		n, err := w.varint()
		if err != nil {
			return err
		}
		return w.skip(n)
	case ctList, ctSet:
		return w.list(depth)
	case ctMap:
		return w.mapOf(depth)
	case ctStruct:
		return w.structOf(depth)
	}
	return fmt.Errorf("unknown type %d", t)
}

// list skips a list or set: a header with the count and the elements' type, then the elements.
func (w *footerWalker) list(depth int) error {
	h, err := w.byte()
	if err != nil {
		return err
	}
	n, et := uint64(h>>4), h&0x0f
	if n == 15 {
		if n, err = w.varint(); err != nil {
			return err
		}
	}
	if err := w.elements(n, et); err != nil {
		return err
	}
	for range n {
		if err := w.value(et, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// mapOf skips a map: the count, the key and value types, then the pairs.
func (w *footerWalker) mapOf(depth int) error {
	n, err := w.varint()
	if err != nil || n == 0 {
		return err
	}
	kv, err := w.byte()
	if err != nil {
		return err
	}
	if err := w.elements(n, max(kv>>4, kv&0x0f)); err != nil {
		return err
	}
	for range n {
		if err := w.value(kv>>4, depth+1); err != nil {
			return err
		}
		if err := w.value(kv&0x0f, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// structOf skips a struct's fields up to its stop byte; a bool field lives in its header.
func (w *footerWalker) structOf(depth int) error {
	for {
		h, err := w.byte()
		if err != nil {
			return err
		}
		ft := h & 0x0f
		if ft == ctStop {
			return nil
		}
		if h>>4 == 0 { // a long-form field id follows
			if _, err := w.varint(); err != nil {
				return err
			}
		}
		if ft == ctTrue || ft == ctFalse {
			continue
		}
		if err := w.value(ft, depth+1); err != nil {
			return err
		}
	}
}
