// Package publish turns kaitoflow.tuning.completed into kaitoflow.image.pushed: it makes the
// adapter an OCI image at tuning.output.image and pushes it.
package publish

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// Name is the function's name.
const Name = "publish"

// Source is the CloudEvents source of the events the step emits (runtime.Function.Source).
const Source = "kaitoflow/" + Name

// Types are the events the function consumes: its routes'.
var Types = (&Function{}).routes().Types()

// Annotation keys kaitoflow adds to the adapter manifest besides the OCI standard ones.
const (
	AnnotationBaseModel = "kaitoflow.io/base-model"
	AnnotationMethod    = "kaitoflow.io/method"
	AnnotationDataset   = "kaitoflow.io/dataset"
	AnnotationWorkspace = "kaitoflow.io/workspace"
	AnnotationMetrics   = "kaitoflow.io/metrics"
	// AnnotationDatasetDigest lists the sha256 of each dataset file the run read.
	AnnotationDatasetDigest = "kaitoflow.io/dataset-digest"
	// AnnotationComparedWith is the adapter the run scored beside its own (serving_eval_loss in
	// the metrics), by digest.
	AnnotationComparedWith = "kaitoflow.io/compared-with"
)

// ProvenanceType is the artifact type of the training record attached to each adapter image.
const ProvenanceType = "application/vnd.kaitoflow.training-record.v1+json"

// TrainingRecord is how an adapter was made: what was asked for, what was planned, what went in
// and what came out. It is attached to the image as an OCI 1.1 referrer, so any registry client
// (oras discover, crane) and `kaitoflow get workspace -o yaml` can find it.
type TrainingRecord struct {
	Workspace      events.Ref           `json:"workspace"`
	Spec           kaito.Workspace      `json:"spec"`
	Job            string               `json:"job"`
	Nodes          []string             `json:"nodes,omitempty"`
	Dataset        []string             `json:"dataset,omitempty"`
	DatasetDigests []string             `json:"datasetDigests,omitempty"`
	Files          []events.AdapterFile `json:"files"`
	Layer          *events.Blob         `json:"layer,omitempty"`
	Metrics        map[string]float64   `json:"metrics,omitempty"`
	// Compared is the adapter the run scored beside its own on the same held-out rows.
	Compared  *events.ComparedAdapter `json:"compared,omitempty"`
	Completed string                  `json:"completed"`
}

// Pusher writes an image to a registry.
type Pusher interface {
	Push(ctx context.Context, ref name.Reference, img v1.Image, opts ...remote.Option) error
}

// Keychain returns the credentials to push a workspace's adapter with (its imagePushSecret,
// Entra ID for ACR). Secrets never leave it: not into logs, events or errors.
type Keychain func(ctx context.Context, ws *kaito.Workspace) (authn.Keychain, error)

// Resolver maps tuning.output.image to the reference actually pushed.
type Resolver func(image string) (name.Reference, error)

// Function is the publish handler.
type Function struct {
	// router dispatches each event to its route (routes), built once by New.
	router  *runtime.Routes
	pusher  Pusher
	resolve Resolver
	log     *slog.Logger
	// remoteOptions reach the output registry to read a layer it lacks (auth, transport).
	remoteOptions []remote.Option
	keychain      Keychain
	pushTimeout   time.Duration
}

// DefaultPushTimeout bounds one publish: reading the uploaded layer, pushing the image and its
// provenance.
const DefaultPushTimeout = 30 * time.Minute

// WithPushTimeout bounds one publish (default DefaultPushTimeout): the runtime's heartbeats keep
// a step alive as long as it runs, so without a bound a registry that accepts and never
// finishes (a tarpit) would hold it forever.
func (f *Function) WithPushTimeout(d time.Duration) *Function {
	f.pushTimeout = d
	return f
}

// WithKeychain sets where push credentials come from; without one, pushes are anonymous.
func (f *Function) WithKeychain(k Keychain) *Function {
	f.keychain = k
	return f
}

// New returns the publish function. A nil resolver parses the image reference as written.
func New(p Pusher, resolve Resolver, log *slog.Logger) *Function {
	if resolve == nil {
		resolve = func(image string) (name.Reference, error) { return name.ParseReference(image) }
	}
	if log == nil {
		log = slog.Default()
	}
	f := &Function{pusher: p, resolve: resolve, log: log.With("function", Name)}
	f.router = f.routes()
	if rp, ok := p.(RemotePusher); ok {
		f.remoteOptions = rp.Options
	}
	return f
}

// routes are the events the function takes, each with its handler.
func (f *Function) routes() *runtime.Routes {
	r := &runtime.Routes{}
	runtime.On(r, events.TuningCompleted, f.tuningCompleted)
	return r
}

// Handle implements runtime.Handler.
func (f *Function) Handle(ctx context.Context, ev cloudevents.Event) ([]cloudevents.Event, error) {
	return f.router.Handle(ctx, ev)
}

func (f *Function) tuningCompleted(ctx context.Context, ref events.Ref, ev cloudevents.Event, d events.TuningCompletedData) ([]cloudevents.Event, error) {
	t := d.Workspace.Tuning
	if t != nil && t.Output != nil && t.Output.Volume != nil {
		// Output to a volume: the Job wrote the adapter there; there is nothing to push, and the
		// next step is told where it is instead.
		f.log.InfoContext(ctx, "adapter stored on the output volume; nothing to push", "files", len(d.Files))
		return runtime.Emit(events.New(Source, events.AdapterStored, events.AdapterStored, ref, events.AdapterStoredData{
			Workspace: d.Workspace, Nodes: d.Nodes, Volume: t.Output.Volume, Files: d.Files, Metrics: d.Metrics, Datasets: d.Datasets, Plan: d.Plan,
		}, &ev))
	}
	if t == nil || t.Output == nil || t.Output.Image == "" {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.output: an image or a volumeSource is required")
	}
	target, err := f.resolve(t.Output.Image)
	if err != nil {
		return nil, events.Permanentf(events.ReasonInvalidWorkspace, "tuning.output.image %q: %v", t.Output.Image, err)
	}
	opts := append([]remote.Option{}, f.remoteOptions...)
	if f.keychain != nil {
		kc, err := f.keychain(ctx, &d.Workspace)
		if err != nil {
			return nil, err
		}
		opts = append(opts, remote.WithAuthFromKeychain(kc))
	}
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(f.pushTimeout, DefaultPushTimeout))
	defer cancel()
	img, err := adapterImage(target, d, ev, ref, opts)
	if err != nil {
		return nil, fmt.Errorf("build adapter image: %w", err)
	}
	if err := f.pusher.Push(ctx, target, img, opts...); err != nil {
		return nil, classify(fmt.Errorf("push %s: %w", target, err))
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	size, err := imageSize(img)
	if err != nil {
		return nil, err
	}
	mt, _ := img.MediaType()
	tag := ""
	if tg, ok := target.(name.Tag); ok {
		tag = tg.TagStr()
	}
	f.log.InfoContext(ctx, "pushed adapter image", "image", target.String(), "digest", digest.String())
	provenance, err := f.pushProvenance(ctx, target, img, ref, d, ev, opts)
	if err != nil {
		return nil, classify(fmt.Errorf("push provenance of %s: %w", target, err))
	}
	checkpoints, err := servableCheckpoints(ctx, target, ref, opts)
	if err != nil {
		return nil, classify(fmt.Errorf("publish the run's checkpoints: %w", err))
	}
	return runtime.Emit(events.New(Source, events.ImagePushed, events.ImagePushed, ref, events.ImagePushedData{
		Workspace: d.Workspace, Nodes: d.Nodes, Image: target.String(),
		Reference: target.Context().Digest(digest.String()).String(), Digest: digest.String(),
		Tag: tag, Size: size, MediaType: string(mt), Provenance: provenance, Plan: d.Plan,
		Metrics: d.Metrics, Datasets: d.Datasets, Compared: d.Compared, Checkpoints: checkpoints,
	}, &ev))
}

// adapterImage is the adapter's image. Compose, don't copy: when the Job has uploaded the layer
// to the output repository, the image is written around it and only the config and manifest move.
func adapterImage(target name.Reference, d events.TuningCompletedData, ev cloudevents.Event, ref events.Ref, opts []remote.Option) (v1.Image, error) {
	anns := imageAnnotations(d, ev, ref)
	if d.Layer == nil {
		return adapter.BuildImage(d.Location, d.Files, imageCreated(d, ev), anns)
	}
	layer, err := adapter.Remote(target.Context(), *d.Layer, opts...)
	if err != nil {
		return nil, err
	}
	return adapter.Image(layer, imageCreated(d, ev), anns)
}

// imageAnnotations say what the adapter is: its base model, method and workspace, what it was
// trained on and how it scored.
func imageAnnotations(d events.TuningCompletedData, ev cloudevents.Event, ref events.Ref) map[string]string {
	t := d.Workspace.Tuning
	anns := map[string]string{
		"org.opencontainers.image.created": imageCreated(d, ev).Format("2006-01-02T15:04:05Z"),
		"org.opencontainers.image.source":  "https://github.com/kaitoflow/kaitoflow",
		"org.opencontainers.image.title":   "LoRA adapter for " + d.Workspace.PresetName(),
		AnnotationBaseModel:                d.Workspace.PresetName(),
		AnnotationMethod:                   t.Method,
		AnnotationWorkspace:                ref.String(),
	}
	if t.Input != nil && len(t.Input.URLs) > 0 {
		anns[AnnotationDataset] = strings.Join(t.Input.URLs, ",")
	}
	if t.Input != nil && t.Input.Image != "" {
		anns[AnnotationDataset] = t.Input.Image
	}
	if d.Layer != nil {
		anns["org.opencontainers.image.revision"] = d.Layer.Digest
	}
	if len(d.Datasets) > 0 {
		anns[AnnotationDatasetDigest] = strings.Join(d.Datasets, ",")
	}
	if len(d.Metrics) > 0 {
		if b, err := json.Marshal(d.Metrics); err == nil {
			anns[AnnotationMetrics] = string(b)
		}
	}
	if d.Compared != nil {
		anns[AnnotationComparedWith] = d.Compared.Reference
	}
	return anns
}

// pushProvenance attaches the training record to img as a referrer (its manifest's subject is the
// adapter). go-containerregistry falls back to the referrers tag scheme on registries without the
// referrers API.
func (f *Function) pushProvenance(ctx context.Context, target name.Reference, img v1.Image, ref events.Ref, d events.TuningCompletedData,
	ev cloudevents.Event, opts []remote.Option) (string, error) {
	rec := TrainingRecord{Workspace: ref, Spec: d.Workspace, Job: d.Job, Nodes: d.Nodes, Files: d.Files, Layer: d.Layer, DatasetDigests: d.Datasets,
		Metrics: d.Metrics, Compared: d.Compared, Completed: imageCreated(d, ev).Format("2006-01-02T15:04:05Z")}
	if in := d.Workspace.Tuning.Input; in != nil {
		rec.Dataset = append(append(rec.Dataset, in.URLs...), in.Image)
		if in.Image == "" {
			rec.Dataset = rec.Dataset[:len(rec.Dataset)-1]
		}
	}
	body, err := json.Marshal(rec)
	if err != nil {
		return "", err
	}
	desc, err := partial.Descriptor(img)
	if err != nil {
		return "", err
	}
	artifact, err := mutate.Append(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.MediaType(ProvenanceType)),
		mutate.Addendum{Layer: static.NewLayer(body, types.MediaType("application/json")), MediaType: "application/json"})
	if err != nil {
		return "", err
	}
	withSubject, ok := mutate.Subject(mutate.Annotations(artifact, map[string]string{
		"org.opencontainers.image.created": rec.Completed, AnnotationWorkspace: ref.String(),
	}), *desc).(v1.Image)
	if !ok {
		return "", fmt.Errorf("provenance artifact: unexpected type")
	}
	d2, err := withSubject.Digest()
	if err != nil {
		return "", err
	}
	at := target.Context().Digest(d2.String())
	return at.String(), f.pusher.Push(ctx, at, withSubject, opts...)
}

func imageSize(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return 0, err
	}
	n := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n, nil
}

// Failure reasons for refusals by the output registry.
const (
	// ReasonRegistryUnauthorized: the registry refused the credentials (imagePushSecret, the
	// identity's AcrPush role).
	ReasonRegistryUnauthorized = "RegistryUnauthorized"
	// ReasonRegistryNotFound: the registry or repository does not exist.
	ReasonRegistryNotFound = "RegistryNotFound"
	// ReasonRegistryRefused: the registry refused the push itself (a bad request, a manifest it
	// does not accept).
	ReasonRegistryRefused = "RegistryRefused"
)

// classify makes the registry's refusals permanent, each with its reason (retrying will not
// grant access or create a repository), and leaves throttling, server errors and timeouts
// retryable.
func classify(err error) error {
	var te *transport.Error
	if !errors.As(err, &te) {
		return err
	}
	switch te.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return events.Permanent(ReasonRegistryUnauthorized, err)
	case http.StatusNotFound:
		return events.Permanent(ReasonRegistryNotFound, err)
	case http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusRequestEntityTooLarge:
		return events.Permanent(ReasonRegistryRefused, err)
	}
	return err
}

// RemotePusher pushes with go-containerregistry's remote package.
type RemotePusher struct {
	Options []remote.Option
}

// Push implements Pusher.
func (p RemotePusher) Push(ctx context.Context, ref name.Reference, img v1.Image, opts ...remote.Option) error {
	return remote.Write(ref, img, append(append([]remote.Option{remote.WithContext(ctx)}, p.Options...), opts...)...)
}

// RewriteRegistry returns a Resolver that pushes to registry instead of the host the manifest
// names: the embedded mode's stand-in for ACR.
func RewriteRegistry(registry string) Resolver {
	return func(image string) (name.Reference, error) { return adapter.Rewrite(registry, image) }
}

// imageCreated is the image's creation time: when the run finished, which every delivery of its outcome
// says alike (a tuning.completed emitted again after a restart carries another event time, and
// the image built from it must be the same image); the event's time for a run that does not say.
func imageCreated(d events.TuningCompletedData, ev cloudevents.Event) time.Time {
	if !d.Finished.IsZero() {
		return d.Finished.UTC()
	}
	return ev.Time().UTC()
}
