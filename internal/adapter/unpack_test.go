package adapter

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tarOf writes a tar with one entry per (name, size); a size above the content it gets is written
// as a header alone, as a crafted archive would claim it.
func tarOf(t *testing.T, entries map[string]int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, size := range entries {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if size <= 1<<20 {
			if _, err := tw.Write(bytes.Repeat([]byte("a"), int(size))); err != nil {
				t.Fatal(err)
			}
		}
	}
	// No Flush: it refuses an entry whose content was not all written, which is the point here.
	return buf.Bytes()
}

func TestUnpackDataLimits(t *testing.T) {
	many := map[string]int64{}
	for i := range 1001 {
		many[fmt.Sprintf("data/f%04d", i)] = 1
	}
	for _, tc := range []struct {
		name    string
		archive map[string]int64
		lim     Limits
		wantErr string
	}{
		{"an adapter", map[string]int64{"data/adapter_config.json": 100, "data/adapter_model.safetensors": 4096, "etc/passwd": 5}, AdapterLimits, ""},
		{"a file claiming 9 GiB", map[string]int64{"data/adapter_model.safetensors": 9 << 30}, AdapterLimits, "more than 8192 MiB"},
		{"1,001 files", many, AdapterLimits, "more than 1000 files"},
		{"1,001 files of data", many, DataLimits, ""},
		{"an escape", map[string]int64{"data/../../x": 1}, AdapterLimits, ""}, // cleaned to /x: not under data/, skipped
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := UnpackData(bytes.NewReader(tarOf(t, tc.archive)), dir, tc.lim)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("got %v, want %q", err, tc.wantErr)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "x")); err == nil {
				t.Fatal("a file escaped the directory")
			}
		})
	}
}
