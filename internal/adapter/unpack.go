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

// UnpackData writes the regular files under data/ of a flattened image filesystem into dir,
// refusing paths that would escape it: Kaito's layout for adapter and dataset images.
func UnpackData(r io.Reader, dir string) (int, error) {
	tr := tar.NewReader(r)
	n := 0
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
		dst := filepath.Join(dir, filepath.FromSlash(rel))
		if !strings.HasPrefix(dst, filepath.Clean(dir)+string(filepath.Separator)) {
			return n, fmt.Errorf("image file %q escapes the data directory", h.Name)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return n, err
		}
		f, err := os.Create(dst)
		if err != nil {
			return n, err
		}
		_, err = io.Copy(f, tr)
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

// Pull unpacks the data/ directory of image ref into dir. Every blob is verified against its
// digest as it is read, so a tampered layer fails the pull.
func Pull(ref name.Reference, dir string, opts ...remote.Option) (int, error) {
	img, err := remote.Image(ref, opts...)
	if err != nil {
		return 0, fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	n, err := UnpackData(rc, dir)
	if err != nil {
		return n, fmt.Errorf("unpack %s: %w", ref, err)
	}
	if n == 0 {
		return 0, fmt.Errorf("%s has no files under data/", ref)
	}
	return n, nil
}
