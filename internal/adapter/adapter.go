// Package adapter lays a LoRA adapter out as an OCI image the way Kaito's inference pulls it. The
// tuning Job's wrapper builds and uploads the layer; publish composes the image around it.
package adapter

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kaitoflow/kaitoflow/events"
)

// Dir is where Kaito's adapter puller expects the adapter files inside the image.
const Dir = "data"

// Layer is the adapter's one tar+gzip layer: data/<file> for each file. The tar is streamed from
// dir, never held in memory, and is byte-for-byte reproducible (fixed times, owners and order), so
// the same adapter always has the same digest wherever it is built.
func Layer(dir string, files []events.AdapterFile) (v1.Layer, error) {
	opener := func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(writeTar(pw, dir, files)) }()
		return pr, nil
	}
	layer, err := tarball.LayerFromOpener(opener, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("adapter layer: %w", err)
	}
	return layer, nil
}

// BuildImage lays the adapter out as Kaito's inference pulls it: OCI media types, one tar+gzip
// layer with data/<file> for each file, an image config whose rootfs.diff_ids names the
// uncompressed tar, and the annotations on the manifest.
func BuildImage(dir string, files []events.AdapterFile, created time.Time, annotations map[string]string) (v1.Image, error) {
	layer, err := Layer(dir, files)
	if err != nil {
		return nil, err
	}
	return Image(layer, created, annotations)
}

// Image wraps an adapter layer (built here, or already in the registry) in Kaito's image layout.
func Image(layer v1.Layer, created time.Time, annotations map[string]string) (v1.Image, error) {
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
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: Dir + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
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
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: Dir + "/" + f.Path, Mode: 0o644, Size: st.Size(), ModTime: epoch, Format: tar.FormatPAX}
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

// Remote is a layer already in repository repo, known by its digest, diff id and size: composing
// an image around it moves kilobytes (the registry answers "exists" to the blob), and its bytes
// are fetched only if a registry lacks it.
func Remote(repo name.Repository, b events.Blob, opts ...remote.Option) (v1.Layer, error) {
	d, err := v1.NewHash(b.Digest)
	if err != nil {
		return nil, fmt.Errorf("layer digest: %w", err)
	}
	diff, err := v1.NewHash(b.DiffID)
	if err != nil {
		return nil, fmt.Errorf("layer diff id: %w", err)
	}
	return &knownLayer{repo: repo, blob: b, digest: d, diffID: diff, opts: opts}, nil
}

type knownLayer struct {
	repo   name.Repository
	blob   events.Blob
	digest v1.Hash
	diffID v1.Hash
	opts   []remote.Option
}

func (l *knownLayer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *knownLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *knownLayer) Size() (int64, error)     { return l.blob.Size, nil }
func (l *knownLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.blob.MediaType), nil
}
func (l *knownLayer) Compressed() (io.ReadCloser, error)   { return l.fetch().Compressed() }
func (l *knownLayer) Uncompressed() (io.ReadCloser, error) { return l.fetch().Uncompressed() }

func (l *knownLayer) fetch() v1.Layer {
	rl, err := remote.Layer(l.repo.Digest(l.digest.String()), l.opts...)
	if err != nil {
		return errLayer{err}
	}
	return rl
}

type errLayer struct{ err error }

func (e errLayer) Digest() (v1.Hash, error)             { return v1.Hash{}, e.err }
func (e errLayer) DiffID() (v1.Hash, error)             { return v1.Hash{}, e.err }
func (e errLayer) Size() (int64, error)                 { return 0, e.err }
func (e errLayer) MediaType() (types.MediaType, error)  { return "", e.err }
func (e errLayer) Compressed() (io.ReadCloser, error)   { return nil, e.err }
func (e errLayer) Uncompressed() (io.ReadCloser, error) { return nil, e.err }

// Describe returns the blob description of a layer built here.
func Describe(l v1.Layer) (events.Blob, error) {
	d, err := l.Digest()
	if err != nil {
		return events.Blob{}, err
	}
	diff, err := l.DiffID()
	if err != nil {
		return events.Blob{}, err
	}
	size, err := l.Size()
	if err != nil {
		return events.Blob{}, err
	}
	mt, err := l.MediaType()
	if err != nil {
		return events.Blob{}, err
	}
	return events.Blob{Digest: d.String(), DiffID: diff.String(), Size: size, MediaType: string(mt)}, nil
}

// Rewrite points image at registry instead of the host it names: the embedded mode's stand-in for
// ACR. Repository names are lowercased, since Kaito's quickstart placeholders (IMAGE_NAME_HERE) are
// not valid repository names. The result is a plain-HTTP reference (a local registry).
func Rewrite(registry, image string) (name.Reference, error) {
	rest := image
	if i := strings.IndexByte(image, '/'); i >= 0 && strings.ContainsAny(image[:i], ".:") {
		rest = image[i+1:]
	}
	repo, tag, digest := rest, "", ""
	if i := strings.IndexByte(repo, '@'); i >= 0 {
		repo, digest = repo[:i], repo[i:]
	}
	if i := strings.LastIndexByte(repo, ':'); i >= 0 {
		repo, tag = repo[:i], repo[i:]
	}
	return name.ParseReference(registry+"/"+strings.ToLower(repo)+tag+digest, name.Insecure)
}
