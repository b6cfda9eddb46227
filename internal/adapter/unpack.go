package adapter

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Limits bound what an unpack writes: an image is a compressed tar its publisher chose, and a few
// megabytes of gzip can expand to fill a replica's disk.
type Limits int

const (
	// AdapterLimits bound an adapter image to 1,000 files and 8 GiB: the weights of a LoRA
	// adapter for a 70B model at rank 64 are about 1 GiB.
	AdapterLimits Limits = iota
	// DataLimits bound a dataset image or a checkpoint (adapter plus optimizer state) to 10,000
	// files and 32 GiB.
	DataLimits
)

// bytes is the most the data/ files may hold together; files how many there may be.
func (l Limits) bytes() int64 {
	if l == AdapterLimits {
		return 8 << 30
	}
	return 32 << 30
}

func (l Limits) files() int {
	if l == AdapterLimits {
		return 1000
	}
	return 10000
}

// UnpackData writes the regular files under data/ of a flattened image filesystem into dir,
// refusing paths that would escape it and anything beyond lim: Kaito's layout for adapter and
// dataset images.
func UnpackData(r io.Reader, dir string, lim Limits) (int, error) {
	tr := tar.NewReader(r)
	n := 0
	written := int64(0)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, err
		}
		clean := path.Clean("/" + h.Name)
		rel, ok := strings.CutPrefix(clean, "/data/")
		if !ok || h.Typeflag != tar.TypeReg {
			continue
		}
		if n >= lim.files() {
			return n, fmt.Errorf("more than %d files under data/", lim.files())
		}
		if h.Size < 0 || written+h.Size > lim.bytes() {
			return n, fmt.Errorf("the files under data/ hold more than %d MiB", lim.bytes()>>20)
		}
		dst := filepath.Join(dir, filepath.FromSlash(rel))
		if !strings.HasPrefix(dst, filepath.Clean(dir)+string(filepath.Separator)) {
			return n, fmt.Errorf("image file %q escapes the data directory", h.Name)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return n, err
		}
		f, err := os.Create(dst)
		if err != nil {
			return n, err
		}
		// The header's size is what tar reads; LimitReader holds the copy to it all the same.
		copied, err := io.Copy(f, io.LimitReader(tr, h.Size))
		written += copied
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Pull unpacks the data/ directory of image ref into dir, within lim. Every blob is verified
// against its digest as it is read, so a tampered layer fails the pull.
func Pull(ref name.Reference, dir string, lim Limits, opts ...remote.Option) (int, error) {
	img, err := remote.Image(ref, opts...)
	if err != nil {
		return 0, fmt.Errorf("pull %s: %w", ref, registryError(err))
	}
	// Owner only: an adapter is a tenant's weights, and the directory may sit on a shared disk.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	n, err := UnpackData(rc, dir, lim)
	if err != nil {
		return n, fmt.Errorf("unpack %s: %w", ref, registryError(err))
	}
	if n == 0 {
		return 0, fmt.Errorf("%s has no files under data/", ref)
	}
	return n, nil
}
