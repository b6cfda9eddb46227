package knative

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/kubeclient"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"knative.dev/pkg/apis"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/internal/kubeerr"
	"github.com/kaitoflow/kaitoflow/internal/kubewatch"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
	"github.com/kaitoflow/kaitoflow/presets"
)

// Resources the deployer reads and writes.
var (
	Services  = schema.GroupVersionResource{Group: "serving.knative.dev", Version: "v1", Resource: "services"}
	Revisions = schema.GroupVersionResource{Group: "serving.knative.dev", Version: "v1", Resource: "revisions"}
)

// AnnotationAdapters on the Service lists the served adapters' names, for inference.ready.
const AnnotationAdapters = "kaitoflow.io/adapters"

const fieldManager = "kaitoflow"

// Deployer runs inference as Knative Services in the workspace's namespace.
type Deployer struct {
	Client  dynamic.Interface
	Catalog *presets.Catalog
	Options Options
	// Configs reads Kaito's inference.config ConfigMaps (vLLM settings); nil: none can be read.
	Configs presets.ConfigSource
	// Kube writes the services' adapter sets (ConfigMaps).
	Kube *kubeclient.Client
	// Replicas reads what each running replica serves; nil: inference.ready does not wait for the
	// replicas to load a new adapter set.
	Replicas ReplicaReader
	Log      *slog.Logger
}

// ReplicaReader reads what each running replica of a revision serves.
type ReplicaReader interface {
	Replicas(ctx context.Context, namespace, revision string) ([]Replica, error)
}

// Name implements serve.Deployer.
func (k *Deployer) Name() string { return "knative" }

// Runtime sizes the model server for a deployment: provision's plan for an inference-only
// workspace, otherwise a plan for the tuned adapter's rank on the SKU it was tuned on.
func (k *Deployer) Runtime(d serve.Deployment) (Runtime, error) {
	ws := d.Workspace
	if in := ws.Inference; in != nil && in.Template != nil {
		return Runtime{}, nil // the user's pod: sized by the user
	}
	preset := ws.PresetName()
	// The plan provision made has the arguments (and, for a model read from the Hub, is the only
	// place its size is known).
	if p := d.Plan; p != nil && len(p.RuntimeArgs) > 0 && p.WeightsGiB > 0 {
		return Runtime{Args: p.RuntimeArgs, GPUs: p.GPUs, StartupSeconds: startupSeconds(p.WeightsGiB), WeightsGiB: p.WeightsGiB}, nil
	}
	m, err := k.Catalog.Model(preset)
	if err != nil {
		return Runtime{}, events.Permanentf(events.ReasonInvalidWorkspace, "preset %q: %v", preset, err)
	}
	weights := float64(m.Parameters) * 2 / (1 << 30)
	if p := d.Plan; p != nil && len(p.RuntimeArgs) > 0 {
		return Runtime{Args: p.RuntimeArgs, GPUs: p.GPUs, StartupSeconds: startupSeconds(weights), WeightsGiB: weights}, nil
	}
	rank, instanceType := 8, ws.InstanceType()
	if p := d.Plan; p != nil {
		rank = max(rank, p.LoRARank)
		if p.InstanceType != "" {
			instanceType = p.InstanceType
		}
	}
	ip, err := k.Catalog.PlanInference(preset, instanceType, len(d.Adapters), rank)
	if err != nil {
		var fe *presets.FitError
		if errors.As(err, &fe) {
			return Runtime{}, events.Permanent(events.ReasonInsufficientGPUMemory, err)
		}
		return Runtime{}, events.Permanent(events.ReasonInvalidWorkspace, err)
	}
	return Runtime{Args: ip.VLLMArgs(), GPUs: ip.GPUs, StartupSeconds: startupSeconds(weights), WeightsGiB: weights}, nil
}

// startupSeconds allows five minutes plus 30 s per GiB of weights (a download at a modest 35 MB/s,
// then loading onto the GPUs) before a model server that has not answered counts as failed.
func startupSeconds(weightsGiB float64) int32 {
	return int32(300 + 30*math.Ceil(weightsGiB))
}

// loadSeconds allows two minutes plus 10 s per GiB (a claim read at ~100 MB/s, then the GPUs) for a
// model server whose weights are in the cache already: nothing left to download.
func loadSeconds(weightsGiB float64) int32 {
	return int32(120 + 10*math.Ceil(weightsGiB))
}

// Apply implements serve.Deployer: create the Service, or update it to a newer generation (which
// rolls a new revision). The same or an older generation changes nothing. With
// Options.InferencePool, the Service's InferencePool and objectives follow (publishPool).
func (k *Deployer) Apply(ctx context.Context, d serve.Deployment) error {
	if err := k.apply(ctx, d); err != nil || k.Options.InferencePool == nil {
		return err
	}
	return k.publishPool(ctx, d.Ref.Namespace, d.Service)
}

func (k *Deployer) apply(ctx context.Context, d serve.Deployment) error {
	client := k.Client.Resource(Services).Namespace(d.Ref.Namespace)
	// Look first: a redelivered or late event for a generation already applied builds nothing
	// and reads no ConfigMap.
	if d.Pool != "" {
		return k.applyPool(ctx, client, d)
	}
	// A workspace that was in a serving pool until now is served alone: it leaves the pool.
	if err := k.leavePool(ctx, d.Ref); err != nil {
		return err
	}
	cur, err := k.current(ctx, client, d)
	if err != nil {
		return err
	}
	if d.Serving != 0 {
		return k.selectSet(ctx, client, d, cur)
	}
	if cur != nil && generationOf(cur) >= d.Ref.Generation {
		if generationOf(cur) == d.Ref.Generation {
			// A redelivery: create the set if the first delivery failed before it (never
			// replace one, which a rollback may have changed since).
			version, changed, err := k.ensureSet(ctx, d, cur, true)
			if err != nil || !changed {
				return err
			}
			return k.patchMeta(ctx, client, d, map[string]any{AnnotationSetVersion: strconv.FormatInt(version, 10)}, nil)
		}
		return nil
	}
	obj, err := k.build(ctx, d)
	if err != nil {
		return err
	}
	if cur == nil {
		if cur, err = k.create(ctx, client, d, obj); err != nil || cur == nil {
			return err
		}
	}
	if cur.GetAnnotations()[AnnotationTemplate] == obj.GetAnnotations()[AnnotationTemplate] {
		return k.updateLive(ctx, client, d, cur, obj)
	}
	return k.rollOut(ctx, client, d, cur, obj)
}

// create creates the Service and, right after, its adapter set's ConfigMap (owned by the Service;
// the pods wait for it to mount). When the Service was created meanwhile (a duplicate of this
// event, handled at the same time), it returns what is there if that is an older generation, to
// be updated; nil when there is nothing left to do.
func (k *Deployer) create(ctx context.Context, client dynamic.ResourceInterface, d serve.Deployment,
	obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	created, err := client.Create(ctx, obj, metav1.CreateOptions{FieldManager: fieldManager})
	if err == nil {
		logctx.Or(k.Log).InfoContext(ctx, "Knative Service created", "service", d.Service, "namespace", d.Ref.Namespace, "generation", d.Ref.Generation)
		version, _, err := k.ensureSet(ctx, d, created, false)
		if err != nil {
			return nil, err
		}
		return nil, k.patchMeta(ctx, client, d, map[string]any{AnnotationSetVersion: strconv.FormatInt(version, 10)}, nil)
	}
	if !apierrors.IsAlreadyExists(err) {
		return nil, kubeerr.Classify(fmt.Errorf("create Knative Service %s/%s: %w", d.Ref.Namespace, d.Service, err))
	}
	cur, err := k.current(ctx, client, d)
	if err != nil || cur == nil || generationOf(cur) >= d.Ref.Generation {
		return nil, err
	}
	return cur, nil
}

// updateLive serves new adapters with the same pods: the running replicas load the new set live;
// no revision.
func (k *Deployer) updateLive(ctx context.Context, client dynamic.ResourceInterface, d serve.Deployment, cur, obj *unstructured.Unstructured) error {
	version, _, err := k.ensureSet(ctx, d, cur, false)
	if err != nil {
		return err
	}
	if err := k.patchMeta(ctx, client, d, map[string]any{AnnotationAdapters: nilIfEmpty(obj.GetAnnotations()[AnnotationAdapters]),
		AnnotationSetVersion: strconv.FormatInt(version, 10), events.AnnotationAcked: nil},
		map[string]any{events.LabelGeneration: strconv.FormatInt(d.Ref.Generation, 10)}); err != nil {
		return err
	}
	logctx.Or(k.Log).InfoContext(ctx, "adapter set updated: the running replicas load it live, no new revision", "service", d.Service,
		"namespace", d.Ref.Namespace, "from", generationOf(cur), "generation", d.Ref.Generation)
	return nil
}

// rollOut updates the Service to new pods: a new revision rolls out, reading the new set as its
// pods start.
func (k *Deployer) rollOut(ctx context.Context, client dynamic.ResourceInterface, d serve.Deployment, cur, obj *unstructured.Unstructured) error {
	// Keep what others put on the Service's metadata (Knative's creator annotations, say).
	ann := cur.GetAnnotations()
	if ann == nil {
		ann = map[string]string{}
	}
	maps.Copy(ann, obj.GetAnnotations())
	delete(ann, events.AnnotationAcked)
	// The set first: the new revision's pods read it as they start.
	version, _, err := k.ensureSet(ctx, d, cur, false)
	if err != nil {
		return err
	}
	ann[AnnotationSetVersion] = strconv.FormatInt(version, 10)
	if mark, ok := canaryMark(d).(string); ok {
		ann[AnnotationCanary] = mark
	} else {
		delete(ann, AnnotationCanary)
	}
	obj.SetAnnotations(ann)
	obj.SetResourceVersion(cur.GetResourceVersion())
	if _, err := client.Update(ctx, obj, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
		return kubeerr.Classify(fmt.Errorf("update Knative Service %s/%s to generation %d: %w", d.Ref.Namespace, d.Service, d.Ref.Generation, err))
	}
	logctx.Or(k.Log).InfoContext(ctx, "Knative Service updated: a new revision rolls out", "service", d.Service, "namespace", d.Ref.Namespace,
		"from", generationOf(cur), "generation", d.Ref.Generation)
	return nil
}

// selectSet serves an earlier generation's adapters in the running service: its adapter set
// changes, its pods do not. The Service is marked unacknowledged, so ticks look until the replicas
// serve the set.
func (k *Deployer) selectSet(ctx context.Context, client dynamic.ResourceInterface, d serve.Deployment, cur *unstructured.Unstructured) error {
	switch {
	case cur == nil:
		return events.Permanentf(events.ReasonNotSupported, "generation %d's adapter cannot be served: %s has no inference service", d.Serving, d.Ref)
	case generationOf(cur) > d.Ref.Generation:
		return nil // a newer generation was applied since the rollback was asked for
	}
	version, changed, err := k.ensureSet(ctx, d, cur, false)
	if err != nil || (!changed && generationOf(cur) >= d.Ref.Generation) {
		return err // unchanged: a redelivery, already handled
	}
	// The service now answers for the workspace's generation (a newer one may have failed
	// before it was served, or been held by the promotion policy: then the set is unchanged and
	// only the generation it answers for moves on).
	if err := k.patchMeta(ctx, client, d, map[string]any{AnnotationSetVersion: strconv.FormatInt(version, 10), events.AnnotationAcked: nil},
		map[string]any{events.LabelGeneration: strconv.FormatInt(d.Ref.Generation, 10)}); err != nil {
		return err
	}
	logctx.Or(k.Log).InfoContext(ctx, "adapter set updated: an earlier generation's adapter goes live", "service", d.Service,
		"namespace", d.Ref.Namespace, "serving", d.Serving, "generation", d.Ref.Generation)
	return nil
}

// AnnotationSetVersion on the Service is its adapter set's version, so ticks can tell which set
// an acknowledgement was for without reading every ConfigMap.
const AnnotationSetVersion = "kaitoflow.io/adapter-set"

// patchMeta merges annotations and labels (a nil value removes one) into the Service's metadata:
// no template change, so no revision.
//
// Every such patch also marks whether d runs a canary (AnnotationCanary), so ticks read the
// adapter sets of those Services alone.
func (k *Deployer) patchMeta(ctx context.Context, client dynamic.ResourceInterface, d serve.Deployment, annotations, labels map[string]any) error {
	annotations = maps.Clone(annotations)
	if annotations == nil {
		annotations = map[string]any{}
	}
	annotations[AnnotationCanary] = canaryMark(d)
	return patchMetadata(ctx, client, d.Ref.Namespace, d.Service, annotations, labels, false)
}

// AnnotationCanary on a Service says its adapter set runs a canary, and until when.
const AnnotationCanary = "kaitoflow.io/canary"

// canaryMark is AnnotationCanary's value for d: when its canary ends, or nil (removed) when it runs
// none.
func canaryMark(d serve.Deployment) any {
	if d.Canary == nil {
		return nil
	}
	return d.Canary.Ends.UTC().Format(time.RFC3339)
}

// patchMetadata merges annotations and labels into a Service's metadata; with gone, a Service
// that is not there any more is no error.
func patchMetadata(ctx context.Context, client dynamic.ResourceInterface, ns, name string, annotations, labels map[string]any, gone bool) error {
	meta := map[string]any{"annotations": annotations}
	if labels != nil {
		meta["labels"] = labels
	}
	patch, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return err
	}
	_, err = client.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	if err != nil && !(gone && apierrors.IsNotFound(err)) {
		return kubeerr.Classify(fmt.Errorf("annotate Knative Service %s/%s: %w", ns, name, err))
	}
	return nil
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// ensureSet writes d's adapter set to the Service's ConfigMap (owned by the Service, so it goes
// with it), one version above the one there, and reports whether it changed anything; an unchanged
// set keeps its version. With onlyIfMissing an existing set is left as it is.
func (k *Deployer) ensureSet(ctx context.Context, d serve.Deployment, owner *unstructured.Unstructured, onlyIfMissing bool) (version int64,
	changed bool, err error) {
	if k.Kube == nil {
		return 0, false, errors.New("knative deployer: no Kubernetes client to write the adapter set with")
	}
	ns, name := d.Ref.Namespace, AdapterSetName(d.Service)
	labels := map[string]string{events.LabelWorkspace: d.Ref.Name, events.LabelNamespace: ns}
	want := AdapterSet(d, 1)
	cur, err := k.Kube.ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		token, err := adminToken("")
		if err != nil {
			return 0, false, err
		}
		err = k.putSet(ctx, setConfigMap(ns, name, labels, want, token, owner), "")
		if apierrors.IsAlreadyExists(err) {
			// A duplicate of this event, handled at the same time, created it: compare with it.
			return k.ensureSet(ctx, d, owner, onlyIfMissing)
		}
		return want.Version, err == nil, err
	case err != nil:
		return 0, false, kubeerr.Classify(fmt.Errorf("get adapter set %s/%s: %w", ns, name, err))
	}
	have, err := chatproxy.DecodeAdapterSet([]byte(cur.Data[AdapterSetKey]))
	same := onlyIfMissing || (err == nil && have.Equal(want))
	token := cur.Data[AdminTokenKey]
	if token == "" {
		// A set written before replicas required a token gets one.
		if token, err = adminToken(""); err != nil {
			return 0, false, err
		}
		if same {
			cm := cur.DeepCopy()
			if cm.Data == nil {
				cm.Data = map[string]string{}
			}
			cm.Data[AdminTokenKey] = token
			return have.Version, false, k.putSet(ctx, cm, cur.ResourceVersion)
		}
	}
	if same {
		return have.Version, false, nil
	}
	want.Version = have.Version + 1
	if err := k.putSet(ctx, setConfigMap(ns, name, labels, want, token, owner), cur.ResourceVersion); err != nil {
		return 0, false, err
	}
	return want.Version, true, nil
}

// putSet creates an adapter set's ConfigMap (resourceVersion "") or replaces the one at
// resourceVersion: a write in between is a conflict, retried, never a lost update.
func (k *Deployer) putSet(ctx context.Context, cm *corev1.ConfigMap, resourceVersion string) error {
	cms := k.Kube.ConfigMaps(cm.Namespace)
	var err error
	if resourceVersion == "" {
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: fieldManager})
	} else {
		cm.ResourceVersion = resourceVersion
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: fieldManager})
	}
	if err != nil {
		return kubeerr.Classify(fmt.Errorf("write adapter set %s/%s: %w", cm.Namespace, cm.Name, err))
	}
	return nil
}

// adminToken is have, or a new random token where there is none: the token chat-proxy's admin
// port requires, made once per adapter set and kept across its versions.
func adminToken(have string) (string, error) {
	if have != "" {
		return have, nil
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// setConfigMap is the ConfigMap holding set and the replicas' admin token, owned by the Service
// that serves it.
func setConfigMap(ns, name string, labels map[string]string, set chatproxy.AdapterSet, token string,
	owner *unstructured.Unstructured) *corev1.ConfigMap {
	b, _ := json.MarshalIndent(set, "", "  ") // plain data: strings, numbers, maps
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels,
			// No blockOwnerDeletion: it would need update on services/finalizers where the
			// OwnerReferencesPermissionEnforcement admission plugin runs.
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "serving.knative.dev/v1", Kind: "Service", Name: owner.GetName(), UID: owner.GetUID(),
				Controller: ptr(true)}}},
		Data: map[string]string{AdapterSetKey: string(b), AdminTokenKey: token},
	}
}

// readSet is the service's adapter set, nil when it has none.
func (k *Deployer) readSet(ctx context.Context, ns, service string) (*chatproxy.AdapterSet, error) {
	set, _, err := k.readSetAndVerdict(ctx, ns, service)
	return set, err
}

// readSetAndVerdict is the service's adapter set (nil when it has none) and how the canary the set
// ended was judged (nil when it ended none), from one read of its ConfigMap.
func (k *Deployer) readSetAndVerdict(ctx context.Context, ns, service string) (*chatproxy.AdapterSet, *serve.CanaryVerdict, error) {
	cm, err := k.Kube.ConfigMaps(ns).Get(ctx, AdapterSetName(service), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("get adapter set %s/%s: %w", ns, AdapterSetName(service), err)
	}
	set, err := chatproxy.DecodeAdapterSet([]byte(cm.Data[AdapterSetKey]))
	if err != nil {
		return nil, nil, fmt.Errorf("adapter set %s/%s: %w", ns, cm.Name, err)
	}
	if cm.Data[VerdictKey] == "" {
		return &set, nil, nil
	}
	var v serve.CanaryVerdict
	if err := json.Unmarshal([]byte(cm.Data[VerdictKey]), &v); err != nil {
		return nil, nil, fmt.Errorf("adapter set %s/%s: %s: %w", ns, cm.Name, VerdictKey, err)
	}
	return &set, &v, nil
}

// current is the deployment's Service, nil when there is none; one that is not this workspace's
// is a permanent error, never touched.
func (k *Deployer) current(ctx context.Context, client dynamic.ResourceInterface, d serve.Deployment) (*unstructured.Unstructured, error) {
	cur, err := client.Get(ctx, d.Service, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("get Knative Service %s/%s: %w", d.Ref.Namespace, d.Service, err)
	case cur.GetLabels()[events.LabelWorkspace] != d.Ref.Name:
		return nil, events.Permanentf(events.ReasonForeignObject,
			"Knative Service %s/%s exists and is not this workspace's (no %s=%s label); rename the workspace or remove the Service",
			d.Ref.Namespace, d.Service, events.LabelWorkspace, d.Ref.Name)
	}
	return cur, nil
}

// build is the Service for d: the runtime sized by the plan, the workspace's inference.config
// over it.
func (k *Deployer) build(ctx context.Context, d serve.Deployment) (*unstructured.Unstructured, error) {
	rt, err := k.Runtime(d)
	if err != nil {
		return nil, err
	}
	if rt, err = k.withInferenceConfig(ctx, &d.Workspace, rt); err != nil {
		return nil, err
	}
	svc, err := BuildService(d, rt, k.Options)
	if err != nil {
		return nil, events.Permanent(events.ReasonInvalidWorkspace, err)
	}
	return toUnstructured(svc)
}

func toUnstructured(svc *servingv1.Service) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(svc)
	if err != nil {
		return nil, fmt.Errorf("convert Knative Service %s: %w", svc.Name, err)
	}
	u := &unstructured.Unstructured{Object: m}
	// The typed object's status is empty; a create must not carry it.
	delete(u.Object, "status")
	return u, nil
}

func generationOf(o metav1.Object) int64 {
	n, _ := strconv.ParseInt(o.GetLabels()[events.LabelGeneration], 10, 64)
	return n
}

// Status implements serve.Deployer. A Service is Pending until Knative has observed its current
// spec and decided; Ready with its URL; Failed with the failing revision's reason.
func (k *Deployer) Status(ctx context.Context, ref events.Ref) (*serve.Status, error) {
	name := serve.ServiceName(ref)
	u, err := k.Client.Resource(Services).Namespace(ref.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("get Knative Service %s/%s: %w", ref.Namespace, name, err)
	}
	if err != nil || u.GetLabels()[events.LabelWorkspace] != ref.Name {
		return k.poolStatus(ctx, ref)
	}
	st := &serve.Status{Ref: events.Ref{Namespace: ref.Namespace, Name: ref.Name, Generation: generationOf(u)}, Service: name, Phase: serve.Pending}
	if a := u.GetAnnotations()[AnnotationAdapters]; a != "" {
		st.Adapters = strings.Split(a, ",")
	}
	return st, k.fillStatus(ctx, u, st)
}

// fillStatus is the phase of a Service whose status st is for: Pending until Knative has observed
// its current spec and decided, Ready with its URL once every replica serves its adapter set,
// Failed with the failing revision's reason.
func (k *Deployer) fillStatus(ctx context.Context, u *unstructured.Unstructured, st *serve.Status) error {
	var svc servingv1.Service
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &svc); err != nil {
		return fmt.Errorf("decode Knative Service %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	ns := u.GetNamespace()
	switch {
	case svc.IsReady():
		st.Phase, st.Revision = serve.Ready, svc.Status.LatestReadyRevisionName
		if svc.Status.URL != nil {
			st.URL = svc.Status.URL.String()
		}
		if st.URL == "" {
			st.Phase = serve.Pending // Ready without a route yet: wait for the URL
			break
		}
		if err := k.replicasServe(ctx, ns, st); err != nil {
			return err
		}
	case svc.IsFailed():
		c := svc.Status.GetCondition(servingv1.ServiceConditionReady)
		st.Phase, st.Reason, st.Message = serve.Failed, c.Reason, c.Message
		if rev := svc.Status.LatestCreatedRevisionName; rev != "" {
			st.Revision = rev
			if reason, msg, ok := k.revisionFailure(ctx, ns, rev); ok {
				st.Reason, st.Message = reason, msg
			}
		}
		if st.Reason == "" {
			st.Reason = "RevisionFailed"
		}
	}
	return nil
}

// replicasServe checks that every running replica of the ready revision serves the current
// adapter set: until each has loaded it (a replica reads the set's ConfigMap as the kubelet
// projects it, then loads through the model server's runtime LoRA API) the service is Pending, and
// a replica that cannot load it fails the generation while the adapters it served keep answering.
// With no replica running (scaled to zero) the next one loads the set as it starts.
func (k *Deployer) replicasServe(ctx context.Context, ns string, st *serve.Status) error {
	if k.Kube == nil {
		return nil
	}
	set, verdict, err := k.readSetAndVerdict(ctx, ns, st.Service)
	if err != nil || set == nil {
		return err
	}
	st.Verdict = verdict
	st.Version = set.Version
	if set.Default != "" { // a pool's member says its own
		st.ServingGeneration, st.ServingCheckpoint = set.Generations[set.Default], set.Checkpoints[set.Default]
	}
	if k.Replicas == nil {
		return nil
	}
	reps, err := k.Replicas.Replicas(ctx, ns, st.Revision)
	if err != nil {
		return err
	}
	var behind []string
	for _, r := range reps {
		switch {
		case r.Error != "" && r.Pending >= set.Version:
			// Ready or not: a pod that cannot load its first set never becomes ready, and this is
			// the reason the workspace is told.
			st.Phase, st.Reason, st.Message = serve.Failed, serve.ReasonAdapterLoad, fmt.Sprintf("replica %s: %s", r.Replica, r.Error)
			return nil
		case !r.Ready:
			continue
		case r.Version >= set.Version:
			st.Replicas++
			st.Serving++
		case r.Unreachable != "":
			st.Replicas++
			behind = append(behind, r.Replica+" (not answering: "+r.Unreachable+")")
		default:
			st.Replicas++
			behind = append(behind, r.Replica)
		}
	}
	if len(behind) > 0 {
		st.Phase, st.Message = serve.Pending, fmt.Sprintf("%d of %d replicas serve adapter set %d; waiting for %s", st.Serving, st.Replicas,
			set.Version, strings.Join(behind, ", "))
	}
	return nil
}

// revisionFailure is the specific reason a revision failed (ImagePullBackOff, Unschedulable,
// ExitCode1, ProgressDeadlineExceeded), which the Service's own condition only summarises.
func (k *Deployer) revisionFailure(ctx context.Context, ns, name string) (reason, message string, ok bool) {
	u, err := k.Client.Resource(Revisions).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", "", false
	}
	var rev servingv1.Revision
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &rev); err != nil {
		return "", "", false
	}
	for _, t := range []apis.ConditionType{servingv1.RevisionConditionContainerHealthy, servingv1.RevisionConditionResourcesAvailable,
		servingv1.RevisionConditionReady} {
		if c := rev.Status.GetCondition(t); c.IsFalse() && c.Reason != "" {
			return c.Reason, c.Message, true
		}
	}
	return "", "", false
}

// List implements serve.Deployer: the workspaces' Services whose current generation's outcome is
// not acknowledged.
func (k *Deployer) List(ctx context.Context) ([]events.Ref, error) {
	l, err := k.Client.Resource(Services).Namespace("").List(ctx, metav1.ListOptions{LabelSelector: events.LabelWorkspace})
	if err != nil {
		return nil, fmt.Errorf("list Knative Services: %w", err)
	}
	var refs []events.Ref
	for _, u := range l.Items {
		gen := generationOf(&u)
		acked := u.GetAnnotations()[events.AnnotationAcked]
		// An acknowledgement names the adapter set it saw; the Service says which set is current.
		version, _ := strconv.ParseInt(u.GetAnnotations()[AnnotationSetVersion], 10, 64)
		if acked != ackValue(gen, 0) && acked != ackValue(gen, version) {
			refs = append(refs, events.Ref{Namespace: u.GetNamespace(), Name: u.GetLabels()[events.LabelWorkspace], Generation: gen})
		}
	}
	pools, err := k.poolMembers(ctx)
	return append(refs, pools...), err
}

// ackValue is the acknowledged annotation's value: the generation, and the adapter set version
// whose outcome was stored ("*": any, for a failure). An acknowledgement that arrives after a
// rollback changed the set names the older version, so ticks keep looking until the rollback's
// own outcome is stored.
func ackValue(gen, version int64) string {
	if version <= 0 {
		return strconv.FormatInt(gen, 10) + "/*"
	}
	return strconv.FormatInt(gen, 10) + "/" + strconv.FormatInt(version, 10)
}

// Acknowledge implements serve.Deployer: annotate the Service with the acknowledged generation
// and adapter set version. The annotation is on the Service's metadata, not its template, so it
// rolls no revision.
func (k *Deployer) Acknowledge(ctx context.Context, ref events.Ref, version int64) error {
	if pool, err := k.poolOf(ctx, ref); err != nil || pool != nil {
		if err != nil {
			return err
		}
		return k.patchPool(ctx, pool, map[string]any{ackedPrefix + ref.Name: ackValue(ref.Generation, version)}, nil)
	}
	name := serve.ServiceName(ref)
	patch := []byte(`{"metadata":{"annotations":{"` + events.AnnotationAcked + `":"` + ackValue(ref.Generation, version) + `"}}}`)
	_, err := k.Client.Resource(Services).Namespace(ref.Namespace).Patch(ctx, name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: fieldManager})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("acknowledge Knative Service %s/%s: %w", ref.Namespace, name, err)
	}
	return nil
}

// Delete implements serve.Deployer: the workspace's own Service, or its place in a serving pool.
func (k *Deployer) Delete(ctx context.Context, ref events.Ref) error {
	if err := k.deleteOwn(ctx, ref); err != nil {
		return err
	}
	return k.leavePool(ctx, ref)
}

// deleteOwn deletes the Service that serves the workspace alone, if there is one.
func (k *Deployer) deleteOwn(ctx context.Context, ref events.Ref) error {
	name := serve.ServiceName(ref)
	client := k.Client.Resource(Services).Namespace(ref.Namespace)
	u, err := client.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get Knative Service %s/%s: %w", ref.Namespace, name, err)
	}
	if u.GetLabels()[events.LabelWorkspace] != ref.Name {
		return nil // not ours
	}
	err = client.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: ptr(u.GetUID())}})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete Knative Service %s/%s: %w", ref.Namespace, name, err)
	}
	logctx.Or(k.Log).InfoContext(ctx, "Knative Service deleted", "service", name, "namespace", ref.Namespace)
	return nil
}

func ptr[T any](v T) *T { return &v }

// Watch publishes kaitoflow.service.changed when a workspace's Knative Service changes: the
// embedded mode's ApiServerSource on Knative Services. It runs until ctx ends.
func Watch(ctx context.Context, client dynamic.Interface, pub events.Publisher, log *slog.Logger) error {
	informer := kubewatch.Informer(client.Resource(Services).Namespace(metav1.NamespaceAll), &unstructured.Unstructured{}, events.LabelWorkspace)
	return kubewatch.Run(ctx, pub, log, kubewatch.Signal{Type: events.ServiceChanged, Kind: "Knative Service", Informer: informer})
}
