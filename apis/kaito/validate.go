package kaito

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

// MaxWorkspaceBytes bounds a workspace's encoded size. Each of its events carries it, beside a
// training config (a ConfigMap's data, at most 256 KiB) and the plan, within JetStream's 1 MiB
// message: a larger one was admitted and then failed later, with MaxDeliveriesExceeded.
const MaxWorkspaceBytes = 256 << 10

// Validate checks a workspace completely and returns every problem, each with its field path, so a
// user fixes a manifest in one round. It does no I/O: names that need resolving are checked again
// when they are fetched.
func (w *Workspace) Validate(p netguard.AddressPolicy) field.ErrorList {
	var errs field.ErrorList
	if w.APIVersion != "" && !slices.Contains(APIVersions(), w.APIVersion) {
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), w.APIVersion, APIVersions()))
	}
	if w.Kind != "" && w.Kind != Kind {
		errs = append(errs, field.NotSupported(field.NewPath("kind"), w.Kind, []string{Kind}))
	}
	errs = append(errs, w.validateMeta()...)
	errs = append(errs, w.validateAnnotations()...)
	errs = append(errs, w.validateEvalData(p)...)
	errs = append(errs, w.Resource.validate(field.NewPath("resource"))...)

	switch {
	case w.Tuning == nil && w.Inference == nil:
		errs = append(errs, field.Required(field.NewPath("tuning"), "exactly one of tuning or inference is required"))
	case w.Tuning != nil && w.Inference != nil:
		errs = append(errs, field.Forbidden(field.NewPath("inference"), "tuning and inference cannot both be set; use two workspaces"))
	}
	if w.Tuning != nil {
		errs = append(errs, w.Tuning.validate(field.NewPath("tuning"), p)...)
		if o := w.Tuning.Output; o != nil && o.Image != "" {
			if err := p.CheckOutput(cmp.Or(w.Namespace, DefaultNamespace), o.Image); err != nil {
				errs = append(errs, field.Forbidden(field.NewPath("tuning", "output", "image"), err.Error()))
			}
		}
		// Kaito's rule: a tuning run trains on one node.
		if w.Resource.Count != nil && *w.Resource.Count > 1 {
			errs = append(errs, field.Invalid(field.NewPath("resource", "count"), *w.Resource.Count,
				"tuning does not support multiple nodes: set it to 1 (a node with several GPUs trains on all of them)"))
		}
	}
	if w.Inference != nil {
		errs = append(errs, w.Inference.validate(field.NewPath("inference"), p)...)
	}
	return errs
}

// validateMeta checks the name and namespace, Kubernetes' own rules for labels and annotations
// (annotations total at most 256 KiB), so a workspace kaitoflow admits is one the API server would
// store, and then the whole workspace's encoded size, which every event of its pipeline carries.
func (w *Workspace) validateMeta() field.ErrorList {
	var errs field.ErrorList
	meta := field.NewPath("metadata")
	if w.Name == "" {
		errs = append(errs, field.Required(meta.Child("name"), ""))
	} else {
		for _, msg := range validation.IsDNS1123Subdomain(w.Name) {
			errs = append(errs, field.Invalid(meta.Child("name"), w.Name, msg))
		}
		// Derived names (Jobs, Services, node pools) append suffixes; keep room for them.
		if len(w.Name) > 63 {
			errs = append(errs, field.TooLong(meta.Child("name"), w.Name, 63))
		}
	}
	if w.Namespace != "" {
		for _, msg := range validation.IsDNS1123Label(w.Namespace) {
			errs = append(errs, field.Invalid(meta.Child("namespace"), w.Namespace, msg))
		}
	}
	errs = append(errs, apivalidation.ValidateAnnotations(w.Annotations, meta.Child("annotations"))...)
	errs = append(errs, metav1validation.ValidateLabels(w.Labels, meta.Child("labels"))...)
	if b, err := json.Marshal(w); err == nil && len(b) > MaxWorkspaceBytes {
		// The whole, encoded: no one field is at fault.
		errs = append(errs, field.TooLong(field.NewPath("workspace"), "", MaxWorkspaceBytes))
	}
	return errs
}

// validateEvalData checks AnnotationEvalData: a tuning workspace's, a few URLs the address
// policy admits.
func (w *Workspace) validateEvalData(p netguard.AddressPolicy) field.ErrorList {
	v, ok := w.Annotations[AnnotationEvalData]
	if !ok {
		return nil
	}
	path := field.NewPath("metadata", "annotations").Key(AnnotationEvalData)
	urls := w.EvalDataURLs()
	switch {
	case w.Tuning == nil:
		return field.ErrorList{field.Forbidden(path, "an eval set scores a tuned adapter's answers: the workspace has no tuning")}
	case len(urls) == 0:
		return field.ErrorList{field.Invalid(path, v, "want one or more comma-separated URLs")}
	case len(urls) > MaxEvalDataURLs:
		return field.ErrorList{field.TooMany(path, len(urls), MaxEvalDataURLs)}
	}
	var errs field.ErrorList
	for _, u := range urls {
		if err := p.CheckURL(u); err != nil {
			errs = append(errs, field.Invalid(path, u, err.Error()))
		}
	}
	return errs
}

// validateAnnotations checks the values of kaitoflow's own annotations.
func (w *Workspace) validateAnnotations() field.ErrorList {
	var errs field.ErrorList
	anns := field.NewPath("metadata", "annotations")
	if c, ok := w.Annotations[AnnotationWeightsCache]; ok {
		for _, msg := range validation.IsDNS1123Subdomain(c) {
			errs = append(errs, field.Invalid(anns.Key(AnnotationWeightsCache), c, "not a PersistentVolumeClaim name: "+msg))
		}
	}
	if sec, ok := w.Annotations[AnnotationAdapterPullSecret]; ok {
		for _, msg := range validation.IsDNS1123Subdomain(sec) {
			errs = append(errs, field.Invalid(anns.Key(AnnotationAdapterPullSecret), sec, "not a Secret name: "+msg))
		}
	}
	if pool, ok := w.Annotations[AnnotationServingPool]; ok {
		// The pool is a Knative Service's name; its revisions add "-00001" within 63 characters.
		for _, msg := range validation.IsDNS1035Label(pool) {
			errs = append(errs, field.Invalid(anns.Key(AnnotationServingPool), pool, "not a service name: "+msg))
		}
		if len(pool) > 40 {
			errs = append(errs, field.TooLong(anns.Key(AnnotationServingPool), pool, 40))
		}
		if sel := w.Resource.LabelSelector; sel == nil || len(sel.MatchLabels) == 0 {
			errs = append(errs, field.Required(field.NewPath("resource", "labelSelector", "matchLabels"),
				"a workspace in a serving pool needs matchLabels: the pool's pods run on the nodes its members' selector names"))
		}
	}
	if v, ok := w.Annotations[AnnotationPromotion]; ok {
		path := anns.Key(AnnotationPromotion)
		if p, err := ParsePromotion(v); err != nil {
			errs = append(errs, field.Invalid(path, v, err.Error()))
		} else if pool, _ := w.ServingPool(); p.Policy == PromoteCanary && pool != "" {
			errs = append(errs, field.Forbidden(path,
				"a canary splits one service's requests between two adapters, and a serving pool's service is shared: use if-better or manual"))
		} else if w.Tuning == nil {
			errs = append(errs, field.Forbidden(path, "a promotion policy decides between tuned generations: the workspace has no tuning"))
		} else if o := w.Tuning.Output; o != nil && o.Volume != nil {
			errs = append(errs, field.Forbidden(path,
				"a promotion policy keeps generations' adapters apart, and an output volume holds one: push to tuning.output.image"))
		}
	}
	if n, ok := w.Annotations[AnnotationServingPoolSize]; ok {
		if size, err := strconv.Atoi(n); err != nil || size < 1 || size > 64 {
			errs = append(errs, field.Invalid(anns.Key(AnnotationServingPoolSize), n, "want a number of adapters from 1 to 64"))
		}
	}
	return errs
}

func (r ResourceSpec) validate(path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if r.Count != nil && *r.Count < 1 {
		errs = append(errs, field.Invalid(path.Child("count"), *r.Count, "must be at least 1"))
	}
	if r.InstanceType != "" && !strings.HasPrefix(r.InstanceType, "Standard_") {
		errs = append(errs, field.Invalid(path.Child("instanceType"), r.InstanceType, "must be an Azure VM size such as Standard_NC24ads_A100_v4"))
	}
	if r.LabelSelector == nil {
		errs = append(errs, field.Required(path.Child("labelSelector"), "nodes are matched and labelled by it"))
	} else if _, err := metav1.LabelSelectorAsSelector(r.LabelSelector); err != nil {
		errs = append(errs, field.Invalid(path.Child("labelSelector"), r.LabelSelector, err.Error()))
	}
	for i, n := range r.PreferredNodes {
		for _, msg := range validation.IsDNS1123Subdomain(n) {
			errs = append(errs, field.Invalid(path.Child("preferredNodes").Index(i), n, msg))
		}
	}
	if r.Partition != nil {
		errs = append(errs, field.Forbidden(path.Child("partition"),
			"GPU partitioning (MIG profiles, accelerator shares) is not supported: kaitoflow provisions and schedules whole GPUs"))
	}
	return errs
}

func (t *TuningSpec) validate(path *field.Path, p netguard.AddressPolicy) field.ErrorList {
	var errs field.ErrorList
	if t.Preset == nil || t.Preset.Name == "" {
		errs = append(errs, field.Required(path.Child("preset", "name"), "the model to tune"))
	} else {
		errs = append(errs, t.Preset.validate(path.Child("preset"), p)...)
	}
	switch t.Method {
	case MethodLoRA, MethodQLoRA:
	case "":
		errs = append(errs, field.Required(path.Child("method"), "lora or qlora"))
	default:
		errs = append(errs, field.NotSupported(path.Child("method"), t.Method, []string{MethodLoRA, MethodQLoRA}))
	}
	if t.Config != "" {
		for _, msg := range validation.IsDNS1123Subdomain(t.Config) {
			errs = append(errs, field.Invalid(path.Child("config"), t.Config, msg))
		}
	}
	if t.Input == nil {
		errs = append(errs, field.Required(path.Child("input"), "urls, image or volumeSource"))
	} else {
		errs = append(errs, t.Input.validate(path.Child("input"), p)...)
	}
	if t.Output == nil {
		errs = append(errs, field.Required(path.Child("output"), "image or volumeSource"))
	} else {
		errs = append(errs, t.Output.validate(path.Child("output"), p)...)
	}
	return errs
}

func (ps *PresetSpec) validate(path *field.Path, p netguard.AddressPolicy) field.ErrorList {
	var errs field.ErrorList
	switch ps.AccessMode {
	case "", "public":
	case "private":
		if ps.Image == "" {
			errs = append(errs, field.Required(path.Child("presetOptions", "image"), "a private preset needs its image"))
		}
	default:
		errs = append(errs, field.NotSupported(path.Child("accessMode"), ps.AccessMode, []string{"public", "private"}))
	}
	if ps.Image != "" {
		errs = append(errs, validateImageRef(path.Child("presetOptions", "image"), ps.Image, p)...)
	}
	if ps.ModelAccessSecret != "" {
		for _, msg := range validation.IsDNS1123Subdomain(ps.ModelAccessSecret) {
			errs = append(errs, field.Invalid(path.Child("presetOptions", "modelAccessSecret"), ps.ModelAccessSecret, "not a Secret name: "+msg))
		}
	}
	return errs
}

func (d *DataSource) validate(path *field.Path, p netguard.AddressPolicy) field.ErrorList {
	var errs field.ErrorList
	set := 0
	if len(d.URLs) > 0 {
		set++
	}
	if d.Image != "" {
		set++
	}
	if d.Volume != nil {
		set++
	}
	if set != 1 {
		errs = append(errs, field.Invalid(path, fmt.Sprintf("%d sources", set), "exactly one of urls, image or volumeSource is required"))
	}
	if d.Name != "" {
		for _, msg := range validation.IsDNS1123Subdomain(d.Name) {
			errs = append(errs, field.Invalid(path.Child("name"), d.Name, msg))
		}
	}
	for i, u := range d.URLs {
		if err := p.CheckURL(u); err != nil {
			errs = append(errs, field.Invalid(path.Child("urls").Index(i), u, err.Error()))
		}
	}
	if d.Image != "" {
		errs = append(errs, validateImageRef(path.Child("image"), d.Image, p)...)
	}
	errs = append(errs, validateVolumeSource(path.Child("volumeSource"), d.Volume)...)
	// Secret names are not checked for shape here: Kaito's own quickstart uses placeholders such as
	// ACR_REGISTRY_SECRET_HERE, and whether the secret exists is the step's question.
	return errs
}

func (d *DataDestination) validate(path *field.Path, p netguard.AddressPolicy) field.ErrorList {
	var errs field.ErrorList
	switch {
	case d.Image == "" && d.Volume == nil:
		errs = append(errs, field.Required(path, "exactly one of image or volumeSource is required"))
	case d.Image != "" && d.Volume != nil:
		errs = append(errs, field.Invalid(path, "2 destinations", "exactly one of image or volumeSource is required"))
	}
	if d.Image != "" {
		errs = append(errs, validateImageRef(path.Child("image"), d.Image, p)...)
		if d.ImagePushSecret == "" {
			errs = append(errs, field.Required(path.Child("imagePushSecret"), "pushing output.image needs a registry secret"))
		}
	}
	errs = append(errs, validateVolumeSource(path.Child("volumeSource"), d.Volume)...)
	return errs
}

func (in *InferenceSpec) validate(path *field.Path, p netguard.AddressPolicy) field.ErrorList {
	var errs field.ErrorList
	switch {
	case in.Preset == nil && in.Template == nil:
		errs = append(errs, field.Required(path.Child("preset"), "exactly one of preset or template is required"))
	case in.Preset != nil && in.Template != nil:
		errs = append(errs, field.Forbidden(path.Child("template"), "preset and template cannot both be set"))
	}
	if in.Preset != nil {
		if in.Preset.Name == "" {
			errs = append(errs, field.Required(path.Child("preset", "name"), "the model to serve"))
		}
		errs = append(errs, in.Preset.validate(path.Child("preset"), p)...)
	}
	if in.Template != nil {
		if len(in.Template.Spec.Containers) == 0 {
			errs = append(errs, field.Required(path.Child("template", "spec", "containers"), "a template needs a container"))
		}
		errs = append(errs, validatePodTemplate(path.Child("template"), in.Template)...)
	}
	if len(in.Adapters) > 0 && in.Preset == nil {
		errs = append(errs, field.Forbidden(path.Child("adapters"), "adapters need a preset base model"))
	}
	for i, a := range in.Adapters {
		ap := path.Child("adapters").Index(i)
		if a.Source == nil {
			errs = append(errs, field.Required(ap.Child("source"), ""))
			continue
		}
		if a.Source.Name == "" {
			errs = append(errs, field.Required(ap.Child("source", "name"), "adapters are addressed by name"))
		}
		errs = append(errs, a.Source.validate(ap.Child("source"), p)...)
		if a.Strength != nil {
			var f float64
			if _, err := fmt.Sscanf(*a.Strength, "%g", &f); err != nil || f < 0 || f > 1 {
				errs = append(errs, field.Invalid(ap.Child("strength"), *a.Strength, "must be a number between 0 and 1"))
			}
		}
	}
	if in.Config != "" {
		for _, msg := range validation.IsDNS1123Subdomain(in.Config) {
			errs = append(errs, field.Invalid(path.Child("config"), in.Config, msg))
		}
	}
	return errs
}

// validateImageRef checks the shape of an image reference (registry/repository[:tag][@digest])
// without a registry client (the publish step parses it fully), and its registry's host against
// the address policy as a URL's: an image "at" 127.0.0.1:4222 made the pipeline's own pulls talk
// to an internal service and report what it answered.
func validateImageRef(path *field.Path, ref string, p netguard.AddressPolicy) field.ErrorList {
	errs := validateImageShape(path, ref)
	if len(errs) > 0 {
		return errs
	}
	if first, _, ok := strings.Cut(ref, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		host := first
		if h, _, err := net.SplitHostPort(first); err == nil {
			host = h
		}
		if err := p.CheckHost(strings.Trim(host, "[]")); err != nil {
			errs = append(errs, field.Invalid(path, ref, "registry "+first+": "+err.Error()))
		}
	}
	return errs
}

func validateImageShape(path *field.Path, ref string) field.ErrorList {
	if strings.ContainsAny(ref, " \t\n") || strings.Contains(ref, "://") {
		return field.ErrorList{field.Invalid(path, ref, "must be an image reference such as myregistry.azurecr.io/adapter:0.0.1")}
	}
	repo := ref
	if i := strings.Index(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	if repo == "" || strings.HasPrefix(repo, "/") || strings.HasSuffix(repo, "/") || strings.Contains(repo, "//") {
		return field.ErrorList{field.Invalid(path, ref, "must be an image reference such as myregistry.azurecr.io/adapter:0.0.1")}
	}
	return nil
}
