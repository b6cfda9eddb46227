package publish

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/dataplane/jobrun"
	"github.com/kaitoflow/kaitoflow/events"
)

// AnnotationServableCheckpoint on a checkpoint's servable image names the generation and step it
// was saved at ("3/400"). It also makes the image a manifest of its own: deleting the checkpoint
// by digest (job-run's pruning) never takes the servable one with it.
const AnnotationServableCheckpoint = "kaitoflow.io/servable-checkpoint"

// maxManifest bounds a checkpoint manifest read back (a few KiB: one layer, some annotations).
const maxManifest = 1 << 20

// ServableTag is the tag a workspace generation's checkpoint at step is published under, beside the
// adapter's tag: "<tag>-<hash of namespace/name>-g<generation>-s<step>" ("adapter" for the tag
// when the output names a digest). Workspaces that push to one repository and tag keep theirs apart.
func ServableTag(target name.Reference, ref events.Ref, step int) string {
	return servablePrefix(target, ref) + strconv.Itoa(step)
}

// servablePrefix is what every servable checkpoint tag of ref's generation starts with.
func servablePrefix(target name.Reference, ref events.Ref) string {
	tag := "adapter"
	if t, ok := target.(name.Tag); ok {
		tag = t.TagStr()
	}
	// "<hash>-g<generation>-": the checkpoints' own, without their "ckpt-".
	s := "-" + strings.TrimPrefix(jobrun.GenerationCheckpoints(ref.Namespace, ref.Name, ref.Generation), "ckpt-") + "s"
	return tag[:min(len(tag), 110-len(s))] + s
}

// servableCheckpoints makes the run's checkpoints (those job-run kept in the output repository)
// servable adapters: each is written again under ServableTag with AnnotationServableCheckpoint (only
// the manifest moves: the layers are the checkpoint's), then the checkpoint itself is deleted. It
// returns every servable checkpoint of the generation, oldest first — a redelivery, whose
// checkpoints are gone already, reports the same ones.
func servableCheckpoints(ctx context.Context, target name.Reference, ref events.Ref, opts []remote.Option) ([]kaito.AdapterCheckpoint, error) {
	repo := target.Context()
	opts = append(slices.Clip(opts), remote.WithContext(ctx))
	tags, err := remote.List(repo, opts...)
	if err != nil {
		return nil, fmt.Errorf("list checkpoints in %s: %w", repo, err)
	}
	prefix := jobrun.GenerationCheckpoints(ref.Namespace, ref.Name, ref.Generation)
	for _, t := range tags {
		if !strings.HasPrefix(t, prefix) {
			continue
		}
		if err := makeServable(repo.Tag(t), target, ref, opts); err != nil {
			return nil, err
		}
	}
	if tags, err = remote.List(repo, opts...); err != nil {
		return nil, fmt.Errorf("list checkpoints in %s: %w", repo, err)
	}
	var out []kaito.AdapterCheckpoint
	for _, t := range tags {
		if !strings.HasPrefix(t, servablePrefix(target, ref)) {
			continue // another workspace's, or not a checkpoint: not read
		}
		desc, err := remote.Get(repo.Tag(t), opts...)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", repo.Tag(t), err)
		}
		c, ok := servable(desc, ref)
		if !ok || t != ServableTag(target, ref, c.Step) {
			continue
		}
		c.Image = repo.Digest(desc.Digest.String()).String()
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b kaito.AdapterCheckpoint) int { return a.Step - b.Step })
	return out, nil
}

// makeServable writes the checkpoint at tag as a servable image and deletes the checkpoint.
func makeServable(tag name.Tag, target name.Reference, ref events.Ref, opts []remote.Option) error {
	img, err := remote.Image(tag, opts...)
	if notFound(err) {
		return nil // gone since it was listed: a delivery of the same outcome handled it
	}
	if err != nil {
		return fmt.Errorf("read checkpoint %s: %w", tag, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return fmt.Errorf("read checkpoint %s: %w", tag, err)
	}
	step, err := strconv.Atoi(m.Annotations[jobrun.AnnotationCheckpointStep])
	if err != nil {
		return events.Permanentf(events.ReasonBadEvent, "checkpoint %s: annotation %s %q is not a step", tag, jobrun.AnnotationCheckpointStep,
			m.Annotations[jobrun.AnnotationCheckpointStep])
	}
	out, ok := mutate.Annotations(img, map[string]string{AnnotationServableCheckpoint: fmt.Sprintf("%d/%d", ref.Generation, step)}).(v1.Image)
	if !ok {
		return fmt.Errorf("checkpoint %s: not an image", tag)
	}
	servableRef := tag.Context().Tag(ServableTag(target, ref, step))
	if err := remote.Write(servableRef, out, opts...); err != nil {
		return fmt.Errorf("publish checkpoint %s as %s: %w", tag, servableRef, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	// By digest, as job-run prunes: the servable image is another manifest and stays.
	if err := remote.Delete(tag.Context().Digest(digest.String()), opts...); err != nil && !notFound(err) {
		return fmt.Errorf("delete checkpoint %s: %w", tag, err)
	}
	// A registry may keep the tag of a deleted manifest (the distribution spec lets it).
	if err := remote.Delete(tag, opts...); err != nil && !notFound(err) {
		return fmt.Errorf("delete checkpoint tag %s: %w", tag, err)
	}
	return nil
}

// servable reads a servable checkpoint's step and eval loss from its manifest, if it is one of
// ref's generation.
func servable(desc *remote.Descriptor, ref events.Ref) (kaito.AdapterCheckpoint, bool) {
	if len(desc.Manifest) > maxManifest {
		return kaito.AdapterCheckpoint{}, false
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return kaito.AdapterCheckpoint{}, false
	}
	gen, step, ok := strings.Cut(m.Annotations[AnnotationServableCheckpoint], "/")
	g, gerr := strconv.ParseInt(gen, 10, 64)
	s, serr := strconv.Atoi(step)
	if !ok || gerr != nil || serr != nil || g != ref.Generation {
		return kaito.AdapterCheckpoint{}, false
	}
	c := kaito.AdapterCheckpoint{Step: s}
	if v, err := strconv.ParseFloat(m.Annotations[jobrun.AnnotationCheckpointEvalLoss], 64); err == nil {
		c.EvalLoss = &v
	}
	return c, true
}

// notFound reports a registry's answer that there is no such manifest.
func notFound(err error) bool {
	var terr *transport.Error
	return errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound
}
