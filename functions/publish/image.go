package publish

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kaitoflow/kaitoflow/events"
)

// AdapterDir is where Kaito's adapter puller expects the adapter files inside the image.
const AdapterDir = "data"

// BuildAdapterImage lays the adapter out as Kaito's inference pulls it: OCI media types, one
// tar+gzip layer with data/<file> for each file, an image config whose rootfs.diff_ids names the
// uncompressed tar, and the annotations on the manifest. The tar is streamed from dir, never held
// in memory, and is byte-for-byte reproducible (fixed times, owners and order), so the same adapter
// always has the same digest.
func BuildAdapterImage(dir string, files []events.AdapterFile, created time.Time, annotations map[string]string) (v1.Image, error) {
	opener := func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(writeTar(pw, dir, files)) }()
		return pr, nil
	}
	layer, err := tarball.LayerFromOpener(opener, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("adapter layer: %w", err)
	}
	base, err := mutate.ConfigFile(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON),
		&v1.ConfigFile{OS: "linux", Architecture: "amd64", Created: v1.Time{Time: created.UTC().Truncate(time.Second)}})
	if err != nil {
		return nil, fmt.Errorf("adapter config: %w", err)
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: created.UTC().Truncate(time.Second)}, CreatedBy: "kaitoflow publish", Comment: "LoRA adapter"},
	})
	if err != nil {
		return nil, fmt.Errorf("append adapter layer: %w", err)
	}
	annotated, ok := mutate.Annotations(img, annotations).(v1.Image)
	if !ok {
		return nil, fmt.Errorf("annotate adapter image: unexpected type")
	}
	return annotated, nil
}

func writeTar(w io.Writer, dir string, files []events.AdapterFile) error {
	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: AdapterDir + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return err
	}
	for _, f := range files {
		if filepath.Base(f.Path) != f.Path {
			return fmt.Errorf("adapter file %q: want a plain file name", f.Path)
		}
		fh, err := os.Open(filepath.Join(dir, f.Path))
		if err != nil {
			return err
		}
		st, err := fh.Stat()
		if err != nil {
			fh.Close()
			return err
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: AdapterDir + "/" + f.Path, Mode: 0o644, Size: st.Size(), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			fh.Close()
			return err
		}
		_, err = io.Copy(tw, fh)
		fh.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}
